"""The on-disk artifact format of saved estimators: file names, atomic writes, checksummed reads.

Artifact layout (one directory, local or ``s3://``)
---------------------------------------------------
``arrays.npz``
    learned arrays, loaded with ``allow_pickle=False``.
``object.pkl``
    only for UMAP / HDBSCAN objects, whose libraries offer no other save; its sha256 is checked
    before unpickling.
``estimator.json``
    written last (it is the done-marker): ``format_version``, ``class``, ``params``, ``meta``
    (learned scalars), ``arrays`` (name, dtype, shape), ``files`` (sha256 of every other file),
    ``versions``, ``created_at``.

Each file goes to ``<name>.tmp`` and is renamed with :func:`os.replace` on a local filesystem; on an
object store a single PUT of the full bytes is already atomic. Other savers (the deep estimators'
``weights.pt``) use the same manifest and helpers.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata
from typing import Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from imgclust.exceptions import CorruptArtifactError
from imgclust.io.storage import url_to_fs

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "ARRAYS_NAME",
    "OBJECT_NAME",
    "VERSION_PACKAGES",
    "resolve",
    "join",
    "sha256",
    "write_atomic",
    "read_manifest",
    "read_verified",
    "jsonable",
    "versions",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "estimator.json"
ARRAYS_NAME = "arrays.npz"
OBJECT_NAME = "object.pkl"
VERSION_PACKAGES = ("imgclust", "numpy", "scikit-learn", "faiss-cpu", "umap-learn", "hdbscan")
"""Distributions whose versions :func:`versions` records in every manifest."""


def resolve(directory: str | os.PathLike[str], fs: fsspec.AbstractFileSystem | None) -> tuple[Any, str]:
    """``(fs, path)``: the given filesystem with ``directory`` as its path (already without protocol),
    or the filesystem of a path/URL (credentials and endpoint from the environment, see imgclust.io.storage)."""
    if fs is not None:
        return fs, os.fspath(directory)
    return url_to_fs(os.fspath(directory))


def join(root: str, name: str) -> str:
    """``root/name`` with exactly one slash (works for local paths and object-store keys)."""
    return root.rstrip("/") + "/" + name


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def write_atomic(fs: Any, path: str, data: bytes) -> str:
    """Write ``data`` so readers see the old file or the whole new one; returns its sha256."""
    if isinstance(fs, LocalFileSystem):
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    else:  # object stores: one PUT of the full bytes is atomic
        fs.pipe_file(path, data)
    return sha256(data)


def read_manifest(fs: Any, root: str) -> dict[str, Any]:
    """The parsed ``estimator.json`` of ``root``, checked for the required keys and the format version.

    Raises :class:`CorruptArtifactError` when it is missing, not JSON, incomplete or of another version.
    """
    path = join(root, MANIFEST_NAME)
    try:
        raw = fs.cat_file(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise CorruptArtifactError(f"no {MANIFEST_NAME} in {root}: the directory is missing or its save did "
                                   "not finish; point at a directory written by Estimator.save or refit") from exc
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptArtifactError(f"{path} is not valid JSON ({exc}); the save was interrupted or the "
                                   "file was edited; save the estimator again") from exc
    missing = {"class", "params", "meta", "arrays", "files"} - set(doc) if isinstance(doc, dict) else {"all"}
    if missing:
        raise CorruptArtifactError(f"{path} lacks keys {sorted(missing)}; it was not written by Estimator.save")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CorruptArtifactError(f"{path} has format_version {doc.get('format_version')!r}, this "
                                   f"imgclust reads {FORMAT_VERSION}; refit and save with this version")
    return doc


def read_verified(fs: Any, root: str, name: str, files: dict[str, str]) -> bytes:
    """The bytes of ``root/name`` after checking them against the sha256 the manifest's ``files`` records.

    Raises :class:`CorruptArtifactError` when no checksum is recorded, the file is missing or it differs.
    """
    path = join(root, name)
    if name not in files:
        raise CorruptArtifactError(f"{join(root, MANIFEST_NAME)} records no checksum for {name}; save again")
    try:
        data = fs.cat_file(path)
    except FileNotFoundError as exc:
        raise CorruptArtifactError(f"{path} is missing (half-written or partly deleted save); "
                                   "save the estimator again") from exc
    if sha256(data) != files[name]:
        raise CorruptArtifactError(f"{path} was modified after it was saved (sha256 mismatch); refusing "
                                   "to load it. Restore the original file or refit and save again")
    return data


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars turned into Python ones (recursively inside dicts) for ``json.dumps``."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def versions() -> dict[str, str]:
    """``{"python": ..., <package>: <version>}`` for the installed packages of :data:`VERSION_PACKAGES`."""
    out = {"python": platform.python_version()}
    for pkg in VERSION_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out
