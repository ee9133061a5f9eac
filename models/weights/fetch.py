"""``tomoflow weights fetch|list``: put torchvision's ImageNet weights where runs look for them.

Runs never download (:mod:`models.weights.resolve`); this command is the one place that does, on
purpose, at a terminal. It downloads each study backbone's file from torchvision's URL (or
a ``--mirror`` serving the same file names, e.g. a hospital's internal server) into
torchvision's cache (``torch.hub.get_dir()/checkpoints``): the file is written under a
temporary name, its SHA-256 checked against the hash in its name (torchvision's
``<name>-<hex>.pth`` convention), and only then moved into place, so a corrupt or interrupted
download never leaves a file a run would load. Connecting and every read wait at most
``timeout`` seconds (``torch.hub.download_url_to_file`` waits for ever on a mirror that
accepts and never answers).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from models.weights.resolve import _HASH_SUFFIX, backbone_spec
from tasks.core.backbone_names import BACKBONE_NAMES, BackboneName
from tasks.core.digest import sha256_file

__all__ = ["WeightsFetchError", "cached_weights", "fetch_weights", "weights_url"]


class WeightsFetchError(ValueError):
    """A download that failed or whose content does not match its hash."""


def weights_url(name: BackboneName) -> str:
    """torchvision's download URL of a backbone's ImageNet weights."""
    return backbone_spec(name).imagenet.url


def _cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _hash_prefix(file_name: str) -> str | None:
    match = _HASH_SUFFIX.search(file_name)
    return match.group(1) if match else None


def _hash_ok(path: Path) -> bool | None:
    """Whether the file's SHA-256 starts with the hash in its name (``None``: no hash in the name)."""
    prefix = _hash_prefix(path.name)
    if prefix is None:
        return None
    return sha256_file(path).startswith(prefix)


def cached_weights(*, check: bool = True) -> list[dict[str, Any]]:
    """Each study backbone's expected file in torchvision's cache: ``name``, ``file``, ``present``, ``bytes``,
    ``hash_ok`` (``None`` unchecked or absent); then any other ``.pth`` file found there (``name`` ``None``)."""
    folder = _cache_dir()
    rows, expected = [], set()
    for name in BACKBONE_NAMES:
        path = folder / os.path.basename(urlparse(weights_url(name)).path)
        expected.add(path.name)
        present = path.is_file()
        rows.append({"name": name, "file": str(path), "present": present,
                     "bytes": path.stat().st_size if present else None,
                     "hash_ok": _hash_ok(path) if present and check else None})
    for path in sorted(folder.glob("*.pth")) if folder.is_dir() else []:
        if path.name not in expected:
            rows.append({"name": None, "file": str(path), "present": True, "bytes": path.stat().st_size,
                         "hash_ok": _hash_ok(path) if check else None})
    return rows


#: Seconds to wait for a connection and for each read of a download (``--timeout``).
DEFAULT_TIMEOUT_S = 30.0


def _download(url: str, target: Path, prefix: str | None, timeout: float) -> None:
    """``url`` into ``target`` via a temporary file beside it, SHA-256-checked against ``prefix``.

    Raises:
        RuntimeError: The content does not match ``prefix`` (nothing is left behind).
        OSError: Connection, timeout (``TimeoutError``) or disk errors (nothing is left behind).
    """
    import tempfile
    import urllib.request

    digest = hashlib.sha256()
    handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".partial", delete=False)
    import urllib.error

    try:
        try:
            with handle, urllib.request.urlopen(url, timeout=timeout) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    handle.write(chunk)
        except urllib.error.URLError as exc:  # a connect timeout comes wrapped
            if isinstance(exc.reason, TimeoutError):
                raise TimeoutError(str(exc.reason)) from None
            raise
        if prefix is not None and not digest.hexdigest().startswith(prefix):
            raise RuntimeError(f"its SHA-256 is {digest.hexdigest()[:16]}...")
        os.replace(handle.name, target)
    finally:
        Path(handle.name).unlink(missing_ok=True)


def fetch_weights(names: tuple[str, ...] | list[str] = BACKBONE_NAMES, *, mirror: str | None = None,
                  force: bool = False, timeout: float = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
    """Download the ImageNet weights of ``names`` into torchvision's cache, hash-checked.

    Args:
        names: Backbones (``vgg16``, ``vgg16_bn``, ``inception_v3``, ``resnet18``).
        mirror: A base URL serving torchvision's file names instead of download.pytorch.org.
        force: Download again even when a file with a matching hash is cached.
        timeout: Seconds to wait for the connection and for each read.

    Returns:
        One dict per backbone: ``name``, ``file``, ``url``, ``status`` (``cached`` or ``downloaded``).

    Raises:
        WeightsFetchError: The host could not be reached, or the content does not match the
            hash in the file's name (nothing is left in the cache then).
    """
    folder = _cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # TORCH_HOME (or a folder on its way) is a file, or cannot be written
        raise WeightsFetchError(
            f"cannot create torchvision's weights cache '{folder}' ({exc.strerror or type(exc).__name__}); "
            f"TORCH_HOME={os.environ.get('TORCH_HOME', '(unset)')} must be a folder this user can write"
        ) from None
    done = []
    for name in names:
        url = weights_url(name)  # type: ignore[arg-type]
        file_name = os.path.basename(urlparse(url).path)
        if mirror:
            url = f"{mirror.rstrip('/')}/{file_name}"
        target = folder / file_name
        if target.is_file() and not force and _hash_ok(target) is not False:
            done.append({"name": name, "file": str(target), "url": url, "status": "cached"})
            continue
        prefix = _hash_prefix(file_name)
        try:
            _download(url, target, prefix, timeout)
        except TimeoutError:
            raise WeightsFetchError(
                f"{name}: {url} did not answer within {timeout:g} s; nothing was written to '{folder}'. Check the "
                "mirror, or raise --timeout"
            ) from None
        except RuntimeError as exc:  # the hash check
            raise WeightsFetchError(
                f"{name}: the file downloaded from {url} does not match the SHA-256 prefix {prefix!r} in its name "
                f"({exc}); nothing was written to '{folder}'. Check the mirror, or download it again."
            ) from None
        except OSError as exc:  # URLError, refused connection, DNS, disk
            raise WeightsFetchError(
                f"{name}: could not download {url} ({exc}). On a machine without access, download it elsewhere "
                f"and copy it into '{folder}' (tomoflow weights list shows what is there), or pass --mirror URL."
            ) from None
        done.append({"name": name, "file": str(target), "url": url, "status": "downloaded"})
    return done
