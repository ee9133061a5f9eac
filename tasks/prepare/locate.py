"""Find each volume's DICOM file on disk from the paths the BCS-DBT CSVs give.

Newer TCIA downloads name the series folder with an extra ``-NA-`` (``20566.000000-32081``
is ``20566.000000-NA-32081`` on disk), so the CSV's ``descriptive_path`` often does not
exist as written. :class:`VolumeResolver` tries, in order, each relative to the data root
and to every folder up to two levels below it that holds ``Breast-Cancer-Screening-DBT``:

1. ``descriptive_path`` as written (``"descriptive"``);
2. the same with the series folder's ``-NA-`` added or removed (``"na-variant"``);
3. ``classic_path`` (``"classic"``);
4. a search of the ``.dcm`` files under the patient's folder (``"search"``) for the one
   whose SeriesInstanceUID is the last-but-one component of ``classic_path``, or failing
   that the only one whose study folder contains the study id and whose series folder ends
   with the same number as the CSV's.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.core.schema import COLLECTION_FOLDER

logger = logging.getLogger(__name__)

#: How a path was found, in the order the resolver tries.
PATH_HOW: tuple[str, ...] = ("descriptive", "na-variant", "classic", "search")

_SERIES_NUMBER = re.compile(r"-(\d+)$")
_STUDY_ID = re.compile(r"DBT-S\d+", re.IGNORECASE)


def _parts(csv_path: object) -> list[str]:
    """Components of a CSV path (either slash), without empty or ``.`` parts."""
    if csv_path is None or (isinstance(csv_path, float) and np.isnan(csv_path)) or csv_path is pd.NA:
        return []
    text = str(csv_path).strip()
    parts = [p for p in re.split(r"[\\/]+", text) if p not in ("", ".")]
    return ["/", *parts] if text.startswith("/") else parts


def na_variants(series_folder: str) -> list[str]:
    """The other spelling of a series folder name across TCIA downloader versions.

    ``"20566.000000-32081"`` -> ``["20566.000000-NA-32081"]`` (``NA-`` inserted after the
    first hyphen) and ``"20566.000000-NA-32081"`` -> ``["20566.000000-32081"]``.
    """
    if "-NA-" in series_folder:
        return [series_folder.replace("-NA-", "-", 1)]
    head, sep, tail = series_folder.partition("-")
    return [f"{head}-NA-{tail}"] if sep and tail else []


def outside_message(path: str | os.PathLike[str], data_root: str | os.PathLike[str]) -> str:
    """The ``outside-data-root`` reject reason: the path, the root and the two ways out."""
    return (f"outside-data-root: {path} lies outside --data-root {data_root} (a CSV path may not climb out "
            "with '..' nor point elsewhere); it was not read. If the collection is kept elsewhere (a mount), "
            f"put a symlink to it inside the data root ({Path(data_root) / COLLECTION_FOLDER} -> /mnt/.../"
            f"{COLLECTION_FOLDER}), or name the folder the CSV's absolute paths point into with "
            "--extra-data-root DIR")


class VolumeResolver:
    """Resolves CSV paths to files on disk, caching directory listings and DICOM headers.

    Create one per task run (a shard of volumes) and call :meth:`resolve` for each volume:
    every directory is listed once, so 20k volumes cost about one ``scandir`` per folder.
    The caches never expire, so do not keep a resolver across runs while files are still
    being downloaded.

    Args:
        data_root: The download folder: the folder holding ``Breast-Cancer-Screening-DBT``,
            a folder up to two levels above it (``manifest-1617905855234/`` in between is
            fine), or ``Breast-Cancer-Screening-DBT`` itself.
        series_uid_from_classic: In the search fallback, match files by the
            SeriesInstanceUID that ``classic_path`` carries as its last-but-one component.
        extra_roots: Folders besides the data root that a CSV's absolute paths may point
            into (``--extra-data-root``, e.g. the mount holding the collection).
    """

    def __init__(self, data_root: str | os.PathLike[str], *, series_uid_from_classic: bool = True,
                 extra_roots: tuple[str | os.PathLike[str], ...] = ()) -> None:
        self.data_root = Path(data_root)
        # A CSV's path must stay inside one of these lexically (no ``..`` part, no absolute
        # path elsewhere): the CSV must not make tomoflow read a file from elsewhere. Symlinks
        # the root's own tree holds (a collection kept on a mount) are the operator's layout
        # and are followed. Each root is compared as given and after its own symlinks.
        self.roots = tuple(dict.fromkeys(
            form for r in (data_root, *extra_roots) for form in (os.path.abspath(r), os.path.realpath(r))))
        self.extra_roots = tuple(os.path.abspath(r) for r in extra_roots)
        self.series_uid_from_classic = series_uid_from_classic
        self._listings: dict[Path, dict[str, bool] | None] = {}
        self._dicoms: dict[Path, list[Path]] = {}
        self._series_uids: dict[Path, str | None] = {}
        self.bases = self._find_bases()

    # Caches ---------------------------------------------------------------

    def _listing(self, folder: Path) -> dict[str, bool] | None:
        """``{name: is_dir}`` of ``folder``, or None if it is not a readable folder."""
        if folder not in self._listings:
            try:
                with os.scandir(folder) as entries:
                    self._listings[folder] = {e.name: e.is_dir() for e in entries}
            except OSError:
                self._listings[folder] = None
        return self._listings[folder]

    def _is_file(self, path: Path) -> bool:
        listing = self._listing(path.parent)
        return listing is not None and listing.get(path.name) is False

    def _find_bases(self) -> list[Path]:
        """Folders the CSV's relative paths (``Breast-Cancer-Screening-DBT/...``) start from."""
        root = self.data_root
        if root.name == COLLECTION_FOLDER:
            return [root.parent, root]
        bases = [root]
        if (self._listing(root) or {}).get(COLLECTION_FOLDER):
            return bases
        # The collection sits deeper (e.g. under manifest-1617905855234/): look two levels down,
        # never inside a collection folder (thousands of patient folders, no collection inside).
        level = [root]
        for _ in range(2):
            below: list[Path] = []
            for folder in level:
                for name, is_dir in sorted((self._listing(folder) or {}).items()):
                    if is_dir and name != COLLECTION_FOLDER and not name.startswith("."):
                        child = folder / name
                        if (self._listing(child) or {}).get(COLLECTION_FOLDER):
                            bases.append(child)
                        else:
                            below.append(child)
            level = below
        return bases

    def _dicom_files(self, folder: Path) -> list[Path]:
        if folder not in self._dicoms:
            found: list[Path] = []
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames.sort()
                found.extend(Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(".dcm"))
            self._dicoms[folder] = found
        return self._dicoms[folder]

    def _series_uid(self, path: Path) -> str | None:
        if path not in self._series_uids:
            import pydicom

            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
                value = ds.get("SeriesInstanceUID")
                self._series_uids[path] = str(value).strip() if value else None
            except Exception as exc:  # noqa: BLE001 - any unreadable file is just not a match
                logger.debug("Cannot read the header of %s: %s", path, exc)
                self._series_uids[path] = None
        return self._series_uids[path]

    # Resolution -----------------------------------------------------------

    def _candidates(self, parts: list[str]) -> list[Path]:
        if not parts:
            return []
        if parts[0] == "/":
            return [Path(*parts)]
        return [base.joinpath(*parts) for base in self.bases]

    def resolve(
        self,
        descriptive_path: str | None,
        classic_path: str | None,
        patient_id: str,
        *,
        study_uid: str | None = None,
    ) -> tuple[Path | None, str]:
        """Find one volume's file (see the module docstring for the order tried).

        Returns:
            ``(path, how)``: the file and one of :data:`PATH_HOW`, or ``(None, reason)`` with
            ``reason`` = ``"not found: tried <paths>; <search summary>"`` for the rejects table.
        """
        descriptive = _parts(descriptive_path)
        classic = _parts(classic_path)
        tried: list[str] = []

        attempts: list[tuple[str, list[str]]] = [("descriptive", descriptive)]
        if len(descriptive) >= 2:
            for variant in na_variants(descriptive[-2]):
                attempts.append(("na-variant", [*descriptive[:-2], variant, descriptive[-1]]))
        attempts.append(("classic", classic))
        outside: list[str] = []
        for how, parts in attempts:
            for candidate in self._candidates(parts):
                if not self.inside(candidate):
                    # Never looked at: not even whether it exists.
                    outside.append(str(candidate))
                    continue
                if self._is_file(candidate):
                    return candidate, how
                tried.append(str(candidate))

        found, searched = self._search(descriptive, classic, patient_id, study_uid)
        if found is not None and self.inside(found):
            return found, "search"
        if found is not None:
            outside.append(str(found))
        if outside:
            return None, outside_message(outside[0], self.data_root)
        tried.append(searched)
        return None, "not found: tried " + "; ".join(tried)

    def inside(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` lies lexically under the data root or an extra root: no ``..`` part, and
        absolute paths only under a root. Symlinks inside a root are not resolved (they are the
        operator's layout, e.g. the collection on a mount)."""
        text = os.fspath(path)
        if ".." in re.split(r"[\\/]+", text):
            return False
        absolute = os.path.abspath(text)
        return any(absolute == root or absolute.startswith(root.rstrip(os.sep) + os.sep) for root in self.roots)

    def _search(
        self, descriptive: list[str], classic: list[str], patient_id: str, study_uid: str | None
    ) -> tuple[Path | None, str]:
        folders = [base / COLLECTION_FOLDER / str(patient_id) for base in self.bases]
        if len(descriptive) >= 4:
            folders += [base.joinpath(*descriptive[:2]) for base in self.bases]
        folders = [f for f in dict.fromkeys(folders) if self.inside(f) and self._listing(f) is not None]
        if not folders:
            return None, f"search: no folder for patient {patient_id} under {COLLECTION_FOLDER}/"
        files = [path for folder in folders for path in self._dicom_files(folder)]

        series_uid = classic[-2] if self.series_uid_from_classic and len(classic) >= 2 else None
        if series_uid:
            matches = [path for path in files if self._series_uid(path) == series_uid]
            if matches:
                if len(matches) > 1:
                    logger.warning(
                        "Patient %s: %d files carry SeriesInstanceUID %s; using the first by path",
                        patient_id, len(matches), series_uid,
                    )
                return matches[0], "search"

        if study_uid is None and len(descriptive) >= 3:
            found_id = _STUDY_ID.search(descriptive[-3])
            study_uid = found_id.group(0) if found_id else None
        number = _SERIES_NUMBER.search(descriptive[-2]) if len(descriptive) >= 2 else None
        if study_uid and number:
            matches = []
            for path in files:
                folder = next((f for f in folders if f in path.parents), None)
                relative = path.relative_to(folder).parts if folder else ()
                trailing = _SERIES_NUMBER.search(path.parent.name)
                if (len(relative) >= 2 and study_uid.lower() in relative[0].lower()
                        and trailing and trailing.group(1) == number.group(1)):
                    matches.append(path)
            if len(matches) == 1:
                return matches[0], "search"
        what = f"SeriesInstanceUID {series_uid}" if series_uid else "no series UID"
        return None, (
            f"search of {len(files)} .dcm files under {', '.join(map(str, folders))} "
            f"({what}; study {study_uid}, series number {number.group(1) if number else None})"
        )
