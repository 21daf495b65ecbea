"""List image files under a local folder or any fsspec URL and hash their content.

``image_id`` is the SHA-256 of the file's bytes (hex, first 32 chars = 128 bits), so byte-identical
copies collapse to one manifest row wherever they live.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import posixpath
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from imgclust.exceptions import ConfigError, StoreError
from imgclust.io import storage as storage

log = logging.getLogger(__name__)

ID_HEX_CHARS = 32


@dataclass(frozen=True)
class SourceFile:
    """One file found under a source. ``uri`` is what readers open later (absolute path or URL)."""

    uri: str
    size_bytes: int
    mtime: dt.datetime  # UTC


def content_id(data: bytes) -> str:
    """The content hash that identifies an image: sha256 hex truncated to 128 bits."""
    return hashlib.sha256(data).hexdigest()[:ID_HEX_CHARS]


def _mtime(info: dict[str, Any]) -> dt.datetime:
    raw = info.get("mtime", info.get("LastModified", info.get("last_modified", info.get("created"))))
    if isinstance(raw, dt.datetime):
        return raw.astimezone(dt.timezone.utc) if raw.tzinfo else raw.replace(tzinfo=dt.timezone.utc)
    if isinstance(raw, (int, float)):
        return dt.datetime.fromtimestamp(float(raw), tz=dt.timezone.utc)
    return dt.datetime.fromtimestamp(0, tz=dt.timezone.utc)


def open_source(source: str, storage_options: dict[str, Any] | None = None
                ) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and root path for ``source``; a missing local folder is a ConfigError.

    Remote credentials and endpoint come from the environment (see :mod:`imgclust.io.storage`).
    """
    if "://" not in source:
        source = os.path.abspath(os.path.expanduser(source))
    fs, root = storage.url_to_fs(source, storage_options)
    if isinstance(fs, LocalFileSystem) and not os.path.isdir(root):  # also file:// URLs
        raise ConfigError(f"source folder {root} does not exist or is not a folder")
    return fs, root


def list_source(source: str, *, extensions: Iterable[str], recursive: bool = True,
                storage_options: dict[str, Any] | None = None) -> list[SourceFile]:
    """All files under ``source`` whose extension is in ``extensions``, sorted by uri.

    Local symlinked folders are followed once; a symlink loop is skipped with a warning.
    """
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    fs, root = open_source(source, storage_options)
    out: list[SourceFile] = []
    if isinstance(fs, LocalFileSystem):
        for path, st in _walk_local(root, recursive):
            if path.lower().endswith(exts):
                out.append(SourceFile(path, st.st_size, dt.datetime.fromtimestamp(st.st_mtime, tz=dt.timezone.utc)))
    else:
        try:
            found = fs.find(root, maxdepth=None if recursive else 1, detail=True)
        except FileNotFoundError as err:  # e.g. no such bucket
            raise ConfigError(f"source {source} does not exist") from err
        if not found:  # object stores have no folders: a mistyped prefix is just empty
            log.warning("no objects under %s; check the URL if files were expected there", source)
        for path, info in found.items():
            if info.get("type") == "file" and path.lower().endswith(exts):
                out.append(SourceFile(fs.unstrip_protocol(path), int(info.get("size") or 0), _mtime(info)))
    out.sort(key=lambda f: f.uri)
    log.info("listed %d image files under %s", len(out), source)
    return out


def _walk_local(root: str, recursive: bool) -> Iterator[tuple[str, os.stat_result]]:
    """Files under ``root`` (following symlinks), each real folder visited once.

    Folders reached through a symlink are walked only after every real sub-folder, so a file
    reachable both ways is listed under its real path; a folder seen before (a loop, or two links
    to one target) is skipped. Names that are not valid UTF-8 cannot be stored in the manifest and
    are skipped with a warning.
    """
    seen: set[tuple[int, int]] = set()
    stack: list[str] = [root]
    linked: list[str] = []
    while stack or linked:
        if not stack:
            stack, linked = linked[::-1], []
        folder = stack.pop()
        try:
            st = os.stat(folder)
        except OSError as err:
            log.warning("skipping unreadable folder %s: %s", folder, err)
            continue
        if (st.st_dev, st.st_ino) in seen:
            log.warning("skipping %s: folder already visited (symlink loop or second link)", folder)
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            log.warning("skipping unreadable folder %s: %s", folder, err)
            continue
        subdirs: list[str] = []
        for entry in entries:
            try:
                entry.path.encode("utf-8")
            except UnicodeEncodeError:
                log.warning("skipping %r: its name is not valid UTF-8; rename it to ingest it", entry.path)
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    if recursive:
                        (linked if entry.is_symlink() else subdirs).append(entry.path)
                elif entry.is_file(follow_symlinks=True):
                    yield entry.path, entry.stat(follow_symlinks=True)
                elif entry.is_symlink() and not os.path.exists(entry.path):
                    log.warning("skipping dangling symlink %s", entry.path)
            except OSError as err:  # permission, races
                log.warning("skipping %s: %s", entry.path, err)
        stack.extend(reversed(subdirs))


def read_uri(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """Bytes of one source file (local path or URL); one GET on object stores.

    Raises OSError (FileNotFoundError, PermissionError, ...) when the file cannot be read.
    """
    if "://" not in uri:
        with open(uri, "rb") as f:
            return f.read()
    fs, path = storage.url_to_fs(uri, storage_options)
    return bytes(fs.cat_file(path))


def hash_files(files: list[SourceFile], *, threads: int = 8,
               storage_options: dict[str, Any] | None = None) -> list[tuple[SourceFile, str | None, str]]:
    """Content ids of ``files`` read in ``threads`` threads: ``(file, image_id or None, error)``.

    A file that cannot be read gets ``None`` and the error text (it is recorded, not raised).
    """

    def one(f: SourceFile) -> tuple[SourceFile, str | None, str]:
        try:
            return f, content_id(read_uri(f.uri, storage_options)), ""
        except OSError as err:
            return f, None, f"{type(err).__name__}: {err}"

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, files))


def relative_name(uri: str) -> str:
    """Last path component of a uri (for reports)."""
    return posixpath.basename(uri.rstrip("/"))


def parent_name(uri: str) -> str:
    """Name of the folder holding ``uri`` (the ``parent_dir`` ground-truth convention)."""
    parent = posixpath.dirname(uri.replace("\\", "/").rstrip("/"))
    if not parent:
        raise StoreError(f"{uri} has no parent folder")
    return posixpath.basename(parent)
