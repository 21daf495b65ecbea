"""The store: one root URL (local folder or ``s3://bucket/prefix``) reached through fsspec.

Layout::

    manifest/date=YYYY-MM-DD/part-<run>.parquet
    features/<extractor_key>/shard-<id>.parquet + shard-<id>.json (done-marker, written last)
    quarantine/<extractor_key>/shard-<id>.parquet
    models/<model_id>/...   models/CURRENT
    labels/<model_id>/date=YYYY-MM-DD/shard-<id>.parquet

Every write is atomic: local files are written to a temporary name in the same folder and renamed;
on object stores a single PUT of the complete object is atomic already.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from imgclust.exceptions import CorruptArtifactError, StoreError
from imgclust.io import storage as storage

log = logging.getLogger(__name__)


class Store:
    """A store rooted at ``root`` (a path or URL). Relative paths use ``/`` and may not escape the root.

    Instances are cheap, picklable (they hold only the URL and options) and open the filesystem lazily.
    """

    def __init__(self, root: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> None:
        root_s = os.fspath(root)
        if not root_s:
            raise StoreError("store root is empty; pass a folder or s3://bucket/prefix")
        storage.check_url(root_s, "store root")  # ConfigError: credentials in the URL
        if "://" not in root_s:
            root_s = os.path.abspath(os.path.expanduser(root_s))
        self.url = root_s.rstrip("/") or "/"
        self.storage_options = dict(storage_options or {})
        self._fs: fsspec.AbstractFileSystem | None = None
        self._root: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._fs is None:
            # credentials/endpoint from the environment; no listing cache on object stores (storage.py)
            self._fs, self._root = storage.url_to_fs(self.url, self.storage_options)
        return self._fs

    @property
    def root(self) -> str:
        _ = self.fs
        assert self._root is not None  # set together with _fs
        return self._root

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    # ---- paths -------------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        """Filesystem path of ``rel`` under the root; raises StoreError if it would escape the root."""
        parts = rel.replace("\\", "/").split("/")
        if ".." in parts or rel.startswith("/") or "://" in rel:
            raise StoreError(f"path {rel!r} escapes the store root {self.url}; use a path relative to it")
        norm = posixpath.normpath("/" + "/".join(parts)).lstrip("/")
        return posixpath.join(self.root, norm) if norm not in ("", ".") else self.root

    def uri(self, rel: str) -> str:
        """Full URL of ``rel`` (with protocol for remote stores), for messages and reports."""
        p = self.path(rel)
        return p if self.is_local else self.fs.unstrip_protocol(p)

    def rel(self, path: str) -> str:
        """Inverse of :meth:`path`."""
        path = self.fs._strip_protocol(path)
        root = self.root.rstrip("/")
        if path != root and not path.startswith(root + "/"):
            raise StoreError(f"{path} is not under store root {self.url}")
        return path[len(root) + 1 :]

    # ---- queries ----------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def glob(self, pattern: str) -> list[str]:
        """Relative paths matching ``pattern`` (sorted); temporary files are never listed."""
        self.invalidate(posixpath.dirname(pattern.split("*")[0]) or "")
        hits = self.fs.glob(self.path(pattern))
        out = sorted(self.rel(h) for h in hits)
        return [p for p in out if ".tmp-" not in posixpath.basename(p)]

    def invalidate(self, rel: str = "") -> None:
        """Drop fsspec's listing cache (other processes write to the same store)."""
        self.fs.invalidate_cache(self.path(rel))

    # ---- atomic writes ----------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` atomically (temp + rename locally, one PUT on object stores)."""
        target = self.path(rel)
        if self.is_local:
            self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex}"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException:  # a failed write (disk full, interrupt) must not leave the temp behind
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise
        else:
            self.fs.pipe_file(target, data)
        self.invalidate(posixpath.dirname(rel))

    def read_bytes(self, rel: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self.path(rel)))
        except FileNotFoundError as err:
            raise StoreError(f"{self.uri(rel)} does not exist") from err

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())

    def read_json(self, rel: str) -> Any:
        raw = self.read_bytes(rel)
        try:
            return json.loads(raw)
        except ValueError as err:  # JSONDecodeError, or UnicodeDecodeError for binary garbage
            raise CorruptArtifactError(f"{self.uri(rel)} is not valid JSON ({err}); delete it to redo") from err

    def write_parquet(self, rel: str, table: pa.Table, *, row_group_size: int | None = None) -> None:
        """Serialise ``table`` in memory and write it atomically (zstd, with page CRC checksums)."""
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", row_group_size=row_group_size, write_page_checksum=True)
        self.write_bytes(rel, buf.getvalue())

    def _check_columns(self, rel: str, pf: pq.ParquetFile, columns: list[str] | None) -> None:
        missing = [c for c in columns or [] if c not in pf.schema_arrow.names]
        if missing:  # a caller asking for the wrong columns is not a corrupt file
            raise StoreError(f"{self.uri(rel)} has no column(s) {missing}; it has {pf.schema_arrow.names}")

    def _parquet_file(self, rel: str, columns: list[str] | None, what: str = "Parquet file") -> pq.ParquetFile:
        """Fetch the whole object, then parse it. The two steps fail differently: fetching raises
        StoreError for a missing file and lets any other OSError (an object store's 5xx after the
        client's retries, a reset connection) propagate, which the tasks retry; parsing raises
        CorruptArtifactError (bad footer, page checksum mismatch: pyarrow reports those as plain
        OSError too, so they can only be told apart by where they happen). Files are shard-sized."""
        data = self.read_bytes(rel)
        try:
            pf = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True)
        except (pa.ArrowException, OSError) as err:
            raise CorruptArtifactError(f"{self.uri(rel)} is not a readable {what}: {err}") from err
        self._check_columns(rel, pf, columns)
        return pf

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        """Read one Parquet file; a corrupt file (bad footer, page checksum mismatch) raises
        CorruptArtifactError naming it; a missing file or column raises StoreError; an I/O error
        while fetching it propagates as OSError (transient)."""
        pf = self._parquet_file(rel, columns)
        try:
            return pf.read(columns=columns)
        except (pa.ArrowException, OSError) as err:
            raise CorruptArtifactError(f"{self.uri(rel)} is not a readable Parquet file: {err}") from err

    def iter_parquet_batches(self, rel: str, columns: list[str] | None = None, batch_size: int = 65536
                             ) -> Iterator[pa.RecordBatch]:
        """Stream record batches of one file (decoded memory bounded by ``batch_size`` rows)."""
        pf = self._parquet_file(rel, columns)
        try:
            yield from pf.iter_batches(batch_size=batch_size, columns=columns)
        except (pa.ArrowException, OSError) as err:
            raise CorruptArtifactError(f"{self.uri(rel)} is not a readable Parquet file: {err}") from err

    def parquet_schema(self, rel: str, what: str = "Parquet file") -> pa.Schema:
        """Arrow schema, with the file's key/value metadata, of a fetched file (errors as :meth:`read_parquet`)."""
        return self._parquet_file(rel, None, what).schema_arrow

    def parquet_num_rows(self, rel: str, what: str = "Parquet file") -> int:
        """Row count from the footer of a fetched file (errors as :meth:`read_parquet`)."""
        return int(self._parquet_file(rel, None, what).metadata.num_rows)

    def remove(self, rel: str) -> None:
        p = self.path(rel)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)
        self.invalidate(posixpath.dirname(rel))
