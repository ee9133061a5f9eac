"""Find each volume's DICOM file on disk and decide which of its frames to extract.

Two jobs live here because both turn a row of the volume table into work for the
extractor:

- :class:`VolumeResolver` / :func:`resolve_volume_path` map the CSV's paths to the file
  actually on disk. Newer TCIA downloads name the series folder with an extra ``-NA-``
  (``20566.000000-32081`` is ``20566.000000-NA-32081`` on disk), so the CSV's
  ``descriptive_path`` often does not exist as written.
- :func:`select_slices` makes one plan row per volume with a *frame rule*; a rule is a
  string because some rules need the volume's frame count, known only once the extractor
  reads the header. :func:`resolve_frames` turns a rule and that count into frame indices,
  deterministically from ``(seed, volume key)`` alone, so the result does not depend on
  the process, the order of volumes or the sharding.

Frame rules:

- ``"all"``: every frame.
- ``"middle"``: frame ``n_frames // 2``.
- ``"frames:12,30"``: exactly these 0-based frames (out of range is an error).
- ``"fraction:0.15"``: a seeded sample of ``max(1, round(0.15 * n_frames))`` frames.
- ``"pick:1"``: a seeded sample of exactly one frame (``single-slice``'s normals).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from tasks.cohorts import KEY

logger = logging.getLogger(__name__)

#: The top folder of the collection inside a TCIA download.
COLLECTION_FOLDER = "Breast-Cancer-Screening-DBT"

Strategy = Literal["all-slices", "single-slice", "lesion-slices"]
STRATEGIES: tuple[str, ...] = ("all-slices", "single-slice", "lesion-slices")

#: How a path was found, in the order the resolver tries.
PATH_HOW: tuple[str, ...] = ("descriptive", "na-variant", "classic", "search")

#: Columns of :func:`select_slices`' plan, before the volume table's other columns.
PLAN_COLUMNS: list[str] = [*KEY, "cohort", "label", "frames_rule", "n_boxes", "boxes"]

#: Fields of each box in the plan's ``boxes`` JSON.
BOX_FIELDS: tuple[str, ...] = ("slice", "x", "y", "width", "height", "box_class", "ad", "volume_slices")

_SERIES_NUMBER = re.compile(r"-(\d+)$")
_STUDY_ID = re.compile(r"DBT-S\d+", re.IGNORECASE)


# --------------------------------------------------------------------------- paths


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
    """

    def __init__(self, data_root: str | os.PathLike[str], *, series_uid_from_classic: bool = True) -> None:
        self.data_root = Path(data_root)
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
        """Find one volume's file; see :func:`resolve_volume_path`."""
        descriptive = _parts(descriptive_path)
        classic = _parts(classic_path)
        tried: list[str] = []

        attempts: list[tuple[str, list[str]]] = [("descriptive", descriptive)]
        if len(descriptive) >= 2:
            for variant in na_variants(descriptive[-2]):
                attempts.append(("na-variant", [*descriptive[:-2], variant, descriptive[-1]]))
        attempts.append(("classic", classic))
        for how, parts in attempts:
            for candidate in self._candidates(parts):
                if self._is_file(candidate):
                    return candidate, how
                tried.append(str(candidate))

        found, searched = self._search(descriptive, classic, patient_id, study_uid)
        if found is not None:
            return found, "search"
        tried.append(searched)
        return None, "not found: tried " + "; ".join(tried)

    def _search(
        self, descriptive: list[str], classic: list[str], patient_id: str, study_uid: str | None
    ) -> tuple[Path | None, str]:
        folders = [base / COLLECTION_FOLDER / str(patient_id) for base in self.bases]
        if len(descriptive) >= 4:
            folders += [base.joinpath(*descriptive[:2]) for base in self.bases]
        folders = [f for f in dict.fromkeys(folders) if self._listing(f) is not None]
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


def resolve_volume_path(
    data_root: str | os.PathLike[str],
    descriptive_path: str | None,
    classic_path: str | None,
    patient_id: str,
    *,
    series_uid_from_classic: bool = True,
    study_uid: str | None = None,
    resolver: VolumeResolver | None = None,
) -> tuple[Path | None, str]:
    """Find one volume's DICOM file on disk.

    Tried in order, each relative to ``data_root`` and to every folder up to two levels
    below it that holds ``Breast-Cancer-Screening-DBT``:

    1. ``descriptive_path`` as written (``"descriptive"``);
    2. the same with the series folder's ``-NA-`` added or removed (``"na-variant"``);
    3. ``classic_path`` (``"classic"``);
    4. a search of the ``.dcm`` files under the patient's folder (``"search"``) for the
       one whose SeriesInstanceUID is the last-but-one component of ``classic_path``, or
       failing that the only one whose study folder contains the study id and whose series
       folder ends with the same number as the CSV's.

    Args:
        data_root: See :class:`VolumeResolver`.
        descriptive_path: The CSV's ``descriptive_path``.
        classic_path: The CSV's ``classic_path``.
        patient_id: The CSV's ``PatientID``.
        series_uid_from_classic: Use ``classic_path``'s series UID in the search.
        study_uid: The CSV's short study id (``DBT-S00163``); taken from the descriptive
            path's study folder when not given.
        resolver: A resolver to reuse (and its caches); a fresh one is made when None.
            For many volumes use :func:`resolve_volume_paths` or one shared resolver.

    Returns:
        ``(path, how)``: the file and one of :data:`PATH_HOW`, or ``(None, reason)`` with
        ``reason`` = ``"not found: tried <paths>; <search summary>"`` for the rejects table.
    """
    if resolver is None:
        resolver = VolumeResolver(data_root, series_uid_from_classic=series_uid_from_classic)
    return resolver.resolve(descriptive_path, classic_path, patient_id, study_uid=study_uid)


def resolve_volume_paths(
    volumes: pd.DataFrame,
    data_root: str | os.PathLike[str],
    *,
    series_uid_from_classic: bool = True,
    resolver: VolumeResolver | None = None,
) -> pd.DataFrame:
    """Resolve every volume of a table (volume table or slice plan) with one shared cache.

    Args:
        volumes: Needs ``patient_id, study_uid, descriptive_path, classic_path``.
        data_root: See :class:`VolumeResolver`.
        series_uid_from_classic: See :func:`resolve_volume_path`.
        resolver: A resolver to reuse; a fresh one when None.

    Returns:
        A copy of ``volumes`` with ``volume_path`` (str, <NA> when not found) and
        ``path_how`` (one of :data:`PATH_HOW`, or the ``"not found: ..."`` reason).
    """
    missing = [c for c in ("patient_id", "study_uid", "descriptive_path", "classic_path") if c not in volumes.columns]
    if missing:
        raise ValueError(f"resolve_volume_paths: the table lacks columns {missing}")
    if resolver is None:
        resolver = VolumeResolver(data_root, series_uid_from_classic=series_uid_from_classic)
    paths: list[str | None] = []
    hows: list[str] = []
    for row in volumes[["patient_id", "study_uid", "descriptive_path", "classic_path"]].itertuples(index=False):
        path, how = resolver.resolve(row.descriptive_path, row.classic_path, row.patient_id, study_uid=row.study_uid)
        paths.append(None if path is None else str(path))
        hows.append(how)
    out = volumes.copy()
    out["volume_path"] = pd.Series(paths, index=volumes.index, dtype="str")
    out["path_how"] = pd.Series(hows, index=volumes.index, dtype="str")
    summary = {how: hows.count(how) for how in PATH_HOW if how in hows}
    summary["not found"] = sum(1 for p in paths if p is None)
    logger.info("Resolved %d volume paths: %s", len(hows), summary)
    return out


# --------------------------------------------------------------------------- frame rules


def volume_key(patient_id: str, study_uid: str, view: str) -> str:
    """The stable text key of a volume, ``"DBT-P00013/DBT-S00163/rmlo"``: seeds derive from it."""
    return f"{patient_id}/{study_uid}/{view}"


def stable_seed(seed: int, *parts: object) -> int:
    """A 64-bit seed from ``seed`` and ``parts`` via SHA-256: the same in every process.

    Python's ``hash()`` of a string changes with ``PYTHONHASHSEED``; this does not.
    """
    text = "\x1f".join([str(int(seed)), *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def resolve_frames(rule: str, n_frames: int, *, seed: int, key: str) -> list[int]:
    """The sorted frame indices a rule selects in a volume of ``n_frames`` frames.

    Args:
        rule: ``"all"``, ``"middle"``, ``"frames:a,b,..."``, ``"lesion:w:a,b,..."`` (frames
            within ``w`` of each box slice, clipped to the volume), ``"pick:n"`` (``n`` seeded
            frames, at most all) or ``"fraction:f"`` (0 < f <= 1).
        n_frames: The volume's frame count (from its header).
        seed: The run's seed.
        key: The volume's :func:`volume_key`; ``fraction`` samples from a generator seeded
            by ``(seed, key)``, so every volume gets its own sample, the same in any process,
            order or shard.

    Returns:
        Sorted, distinct 0-based frame indices.

    Raises:
        ValueError: Bad ``n_frames``, an unknown or malformed rule, or a frame out of range
            (the message names the volume, the frame and ``n_frames``).
    """
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise ValueError(f"volume {key}: n_frames must be a positive integer, got {n_frames!r}")
    n_frames = int(n_frames)
    name, _, argument = str(rule).partition(":")
    if name == "all" and not argument:
        return list(range(n_frames))
    if name == "middle" and not argument:
        return [n_frames // 2]
    if name == "frames":
        try:
            frames = sorted({int(f) for f in argument.split(",")})
        except ValueError:
            raise ValueError(
                f"volume {key}: rule {rule!r} must list integer frames, e.g. 'frames:12,30'"
            ) from None
        for frame in frames:
            if not 0 <= frame < n_frames:
                raise ValueError(
                    f"volume {key}: frame {frame} of rule {rule!r} is out of range for a volume of "
                    f"{n_frames} frames (valid 0..{n_frames - 1}); the boxes CSV's Slice disagrees "
                    f"with the file's NumberOfFrames: reject the volume or fix the CSV"
                )
        return frames
    if name == "lesion":
        window_text, _, centres_text = argument.partition(":")
        try:
            window = int(window_text)
            centres = sorted({int(c) for c in centres_text.split(",")})
        except ValueError:
            raise ValueError(
                f"volume {key}: rule {rule!r} must read 'lesion:<window>:<slice>,...', e.g. 'lesion:2:12,30'"
            ) from None
        frames_set: set[int] = set()
        for centre in centres:
            if not 0 <= centre < n_frames:
                raise ValueError(
                    f"volume {key}: box Slice {centre} is out of range for a volume of {n_frames} frames "
                    f"(valid 0..{n_frames - 1}); the boxes CSV disagrees with the file: reject the volume "
                    f"or fix the CSV"
                )
            frames_set.update(range(max(0, centre - window), min(n_frames - 1, centre + window) + 1))
        return sorted(frames_set)
    if name == "pick":
        try:
            count = int(argument)
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"volume {key}: rule {rule!r} needs a positive frame count, e.g. 'pick:1'")
        rng = np.random.default_rng(stable_seed(seed, "pick", key))
        return sorted(int(f) for f in rng.choice(n_frames, size=min(count, n_frames), replace=False))
    if name == "fraction":
        try:
            fraction = float(argument)
        except ValueError:
            fraction = float("nan")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"volume {key}: rule {rule!r} needs a fraction in (0, 1], e.g. 'fraction:0.15'")
        size = min(n_frames, max(1, round(fraction * n_frames)))
        rng = np.random.default_rng(stable_seed(seed, "fraction", key))
        return sorted(int(f) for f in rng.choice(n_frames, size=size, replace=False))
    raise ValueError(
        f"volume {key}: unknown frame rule {rule!r}; expected 'all', 'middle', 'frames:a,b,...', "
        f"'lesion:w:a,b,...', 'pick:n' or 'fraction:f'"
    )


def _box_records(boxes_for_volume: Any) -> list[dict[str, Any]]:
    if boxes_for_volume is None:
        return []
    if isinstance(boxes_for_volume, str):
        return list(json.loads(boxes_for_volume))
    if isinstance(boxes_for_volume, pd.DataFrame):
        return boxes_for_volume.to_dict("records")
    return [dict(b) for b in boxes_for_volume]


def frame_boxes(boxes_for_volume: Any, frame: int, lesion_window: int) -> list[dict[str, Any]]:
    """The boxes that apply to ``frame``: those whose ``slice`` is within ``lesion_window``.

    Args:
        boxes_for_volume: A plan row's ``boxes`` (JSON text), a list of box dicts, or a
            DataFrame of the volume's boxes; each box needs ``slice``.
        frame: 0-based frame index.
        lesion_window: A box applies to frames ``slice - lesion_window .. slice + lesion_window``.

    Returns:
        The applicable boxes (dicts with ``x, y, width, height`` and the other fields), in
        the order given.
    """
    if lesion_window < 0:
        raise ValueError(f"lesion_window must be >= 0, got {lesion_window}")
    return [b for b in _box_records(boxes_for_volume) if abs(int(frame) - int(b["slice"])) <= lesion_window]


# --------------------------------------------------------------------------- selection


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _boxes_by_volume(boxes: pd.DataFrame) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    missing = [c for c in (*KEY, "slice") if c not in boxes.columns]
    if missing:
        raise ValueError(f"select_slices: the boxes table lacks columns {missing}; pass BcsTables.boxes")
    fields = [f for f in BOX_FIELDS if f in boxes.columns]
    order = [*KEY, *(f for f in ("slice", "x", "y", "width", "height") if f in fields)]
    ordered = boxes.sort_values(order, kind="stable")
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in ordered[[*KEY, *fields]].itertuples(index=False, name=None):
        key = (str(row[0]), str(row[1]), str(row[2]))
        grouped.setdefault(key, []).append({f: _plain(v) for f, v in zip(fields, row[3:])})
    return grouped


def lesion_frames(boxes_for_volume: Any, lesion_window: int) -> list[int]:
    """Frames within ``lesion_window`` of any box's ``slice``, clipped to ``0..volume_slices-1``.

    Where a box has no ``volume_slices`` only the lower bound is clipped; the extractor's
    :func:`resolve_frames` then rejects frames beyond the file's frame count.
    """
    frames: set[int] = set()
    for box in _box_records(boxes_for_volume):
        centre = int(box["slice"])
        last = box.get("volume_slices")
        high = centre + lesion_window if last is None else min(centre + lesion_window, int(last) - 1)
        frames.update(range(max(0, centre - lesion_window), high + 1))
    return sorted(frames)


def _frames_rule(frames: Sequence[int]) -> str:
    return "frames:" + ",".join(str(int(f)) for f in sorted(set(frames)))


def select_slices(
    volumes: pd.DataFrame,
    boxes: pd.DataFrame,
    *,
    strategy: Strategy,
    normal_fraction: float = 0.15,
    seed: int = 0,
    lesion_window: int = 2,
) -> pd.DataFrame:
    """Plan which frames of which volumes to extract, one row per volume.

    Only included volumes (``excluded_reason`` null, ``label`` 0 or 1) are considered.

    - ``"all-slices"`` (the study's method 1): every frame of each benign/cancer volume
      (rule ``"all"``, label 1) and a seeded ``normal_fraction`` of each normal volume's
      frames (rule ``"fraction:0.15"``, label 0).
    - ``"single-slice"`` (method 2): **exactly one image per patient**, so that volume- and
      patient-level aggregation cannot reward a patient for having more images. A positive
      patient gives the boxed slice of its largest lesion (largest box area over all of the
      patient's boxed benign/cancer volumes; ties go to the first by study, view and slice):
      rule ``"frames:12"``, label 1. A normal patient (one whose included volumes are all
      normal) gives one seeded slice (rule ``"pick:1"``, a frame drawn from ``(seed,
      volume)``) of one of its normal volumes, chosen by ``(seed, patient_id)``.
    - ``"lesion-slices"``: each benign/cancer volume's frames within ``lesion_window`` of a
      box's ``slice``, clipped to ``0..VolumeSlices-1`` (``"frames:10,11,12,13,14"``,
      label 1; the rest of the volume is not used); normals as in ``"all-slices"``.

    Benign/cancer volumes without a box cannot be used by ``single-slice`` or
    ``lesion-slices``; they are left out with a warning naming them.

    Args:
        volumes: From :func:`tasks.cohorts.build_volume_table` (other columns, e.g.
            ``volume_path`` or ``split``, are carried through).
        boxes: :attr:`tasks.cohorts.BcsTables.boxes`.
        strategy: One of :data:`STRATEGIES`.
        normal_fraction: Share of each normal volume's frames, in (0, 1].
        seed: Seeds the choices here and, through the rules, in :func:`resolve_frames`.
        lesion_window: Frames either side of a box's ``slice`` (``lesion-slices``).

    Returns:
        :data:`PLAN_COLUMNS` then the volume table's other columns (without
        ``excluded_reason``): ``label`` int8, ``frames_rule`` str, ``n_boxes`` int and
        ``boxes`` (JSON list of the volume's boxes with :data:`BOX_FIELDS`, ``"[]"`` for
        normals), sorted by volume.

    Raises:
        ValueError: Unknown strategy, ``normal_fraction`` outside (0, 1], negative
            ``lesion_window``, or a table lacking columns.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if not 0.0 < float(normal_fraction) <= 1.0:
        raise ValueError(f"normal_fraction {normal_fraction!r} must be in (0, 1]")
    if isinstance(lesion_window, bool) or int(lesion_window) != lesion_window or lesion_window < 0:
        raise ValueError(f"lesion_window {lesion_window!r} must be a non-negative integer")
    missing = [c for c in (*KEY, "cohort", "label", "excluded_reason") if c not in volumes.columns]
    if missing:
        raise ValueError(f"select_slices: the volume table lacks columns {missing}; pass build_volume_table's output")

    used = volumes.loc[volumes["excluded_reason"].isna() & volumes["label"].isin((0, 1))]
    used = used.sort_values(KEY, kind="stable").reset_index(drop=True)
    by_volume = _boxes_by_volume(boxes)
    keys = list(used[KEY].astype(str).itertuples(index=False, name=None))
    label = used["label"].astype("int64").to_numpy()
    fraction_rule = f"fraction:{float(normal_fraction)!r}"

    rules: list[str | None] = []
    unboxed: list[str] = []
    for key, y in zip(keys, label):
        vol_boxes = by_volume.get(key, [])
        if y == 0:
            rules.append(None if strategy == "single-slice" else fraction_rule)
        elif strategy == "all-slices":
            rules.append("all")
        elif not vol_boxes:
            unboxed.append(volume_key(*key))
            rules.append(None)
        elif strategy == "single-slice":
            rules.append(None)  # one volume per positive patient, chosen below
        elif any(b.get("volume_slices") is None for b in vol_boxes):
            # The CSV lacks VolumeSlices: clip the window to the file's frame count at extraction.
            centres = ",".join(str(int(b["slice"])) for b in sorted(vol_boxes, key=lambda b: int(b["slice"])))
            rules.append(f"lesion:{int(lesion_window)}:{centres}")
        else:
            rules.append(_frames_rule(lesion_frames(vol_boxes, int(lesion_window))))
    if unboxed:
        logger.warning(
            "%s: %d benign/cancer volumes have no box and are left out: %s%s", strategy,
            len(unboxed), ", ".join(unboxed[:50]), f" and {len(unboxed) - 50} more" if len(unboxed) > 50 else "",
        )

    if strategy == "single-slice":
        # The largest lesion of each positive patient: one image per patient (method 2).
        largest: dict[str, tuple[float, int, int]] = {}
        for i, (key, y) in enumerate(zip(keys, label)):
            if y != 1:
                continue
            for box in by_volume.get(key, []):
                area = float(box.get("width") or 0) * float(box.get("height") or 0)
                # Rows and boxes are sorted, so a strict ">" keeps the first of equal boxes.
                if key[0] not in largest or area > largest[key[0]][0]:
                    largest[key[0]] = (area, i, int(box["slice"]))
        for _, i, frame in largest.values():
            rules[i] = _frames_rule([frame])
        positive_patients = {k[0] for k, y in zip(keys, label) if y == 1}
        normal_rows: dict[str, list[int]] = {}
        for i, (key, y) in enumerate(zip(keys, label)):
            if y == 0 and key[0] not in positive_patients:
                normal_rows.setdefault(key[0], []).append(i)
        for patient, rows in normal_rows.items():
            # rows are sorted by (study_uid, view); the pick depends only on (seed, patient).
            pick = rows[stable_seed(seed, "single-slice", patient) % len(rows)]
            rules[pick] = "pick:1"

    plan = used.copy()
    plan["frames_rule"] = pd.Series(rules, dtype="object")
    plan = plan.loc[plan["frames_rule"].notna()].reset_index(drop=True)
    plan["frames_rule"] = plan["frames_rule"].astype("str")
    plan["label"] = plan["label"].astype("int8")
    records = [by_volume.get(k, []) if y == 1 else [] for k, y in zip(
        plan[KEY].astype(str).itertuples(index=False, name=None), plan["label"])]
    plan["n_boxes"] = pd.Series([len(r) for r in records], dtype="int64")
    plan["boxes"] = pd.Series(
        [json.dumps(r, sort_keys=True, separators=(",", ":")) for r in records], dtype="str"
    )
    rest = [c for c in plan.columns if c not in PLAN_COLUMNS and c != "excluded_reason"]
    plan = plan[[*PLAN_COLUMNS, *rest]]
    logger.info(
        "%s: %d volumes planned (%d positive, %d normal)", strategy, len(plan),
        int((plan["label"] == 1).sum()), int((plan["label"] == 0).sum()),
    )
    return plan


def _as_mapping(row: Mapping[str, Any] | pd.Series) -> Mapping[str, Any]:
    return row if isinstance(row, Mapping) else row.to_dict()


def plan_row_frames(row: Mapping[str, Any] | pd.Series, n_frames: int, *, seed: int) -> list[int]:
    """:func:`resolve_frames` for one plan row (its ``frames_rule`` and volume key)."""
    row = _as_mapping(row)
    key = volume_key(row["patient_id"], row["study_uid"], row["view"])
    return resolve_frames(str(row["frames_rule"]), n_frames, seed=seed, key=key)
