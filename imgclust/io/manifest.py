"""The manifest: one row per unique image, appended as immutable date partitions.

``manifest/date=YYYY-MM-DD/part-<run>.parquet`` rows are sorted by ``image_id``. Because parts are
never rewritten, shards planned over them (:func:`plan_shards`) are deterministic: the same manifest
always yields the same shard ids, and new data only ever adds new shards.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import re
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from imgclust.config import IngestConfig
from imgclust.exceptions import ConfigError, CorruptArtifactError, StoreError
from imgclust.io.layout import MANIFEST_PARTS_GLOB, manifest_part, parse_manifest_part
from imgclust.io.sources import SourceFile, hash_files, list_source
from imgclust.io.store import Store

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("uri", pa.string()),
        ("size_bytes", pa.int64()),
        ("mtime", pa.timestamp("us", tz="UTC")),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
        ("source", pa.string()),
    ]
)
_RUN_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
UNREADABLE_PREFIX = "unreadable-"


def new_run_id(now: dt.datetime | None = None) -> str:
    """A sortable, unique run id such as ``20261124T213600Z-1a2b3c``."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class IngestSummary:
    """What one scan added. ``part`` is the new partition's store path (None when nothing was new)."""

    listed: int
    new: int
    already_known: int
    duplicates: int
    unreadable: int
    part: str | None
    date: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ShardSpec:
    """A unit of work: rows ``[start, stop)`` of one manifest part. Small enough to pass between tasks."""

    shard_id: str
    part: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_parts(store: Store, start: dt.date | None = None, end: dt.date | None = None) -> list[str]:
    """Manifest part paths with ``start <= date <= end`` (inclusive), sorted by (date, run)."""
    if start and end and start > end:
        raise ConfigError(f"start date {start} is after end date {end}")
    parts = []
    for rel in store.glob(MANIFEST_PARTS_GLOB):
        m = parse_manifest_part(rel)
        if not m:
            log.warning("ignoring unexpected manifest file %s", rel)
            continue
        day = dt.date.fromisoformat(m[0])
        if (start is None or day >= start) and (end is None or day <= end):
            parts.append(rel)
    return parts


def read_manifest(store: Store, start: dt.date | None = None, end: dt.date | None = None,
                  columns: list[str] | None = None) -> pa.Table:
    """All manifest rows in the date range (one table; use per-part reads for very large stores)."""
    tables = [store.read_parquet(p, columns=columns) for p in list_parts(store, start, end)]
    if not tables:
        schema = MANIFEST_SCHEMA if columns is None else pa.schema([MANIFEST_SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables)


def _unreadable_id(uri: str) -> str:
    return UNREADABLE_PREFIX + hashlib.sha256(uri.encode()).hexdigest()[:32]


def ingest(store: Store, source: str, *, config: IngestConfig | None = None, date: dt.date | None = None,
           run_id: str | None = None, storage_options: dict[str, Any] | None = None) -> IngestSummary:
    """Scan ``source`` and append the images the manifest does not hold yet as one new partition.

    Files already known by (uri, size, mtime) are not re-read; new files are hashed and deduplicated
    against the manifest and among themselves. A file that cannot even be read gets a row with an
    ``unreadable-`` id so that extraction quarantines it with a reason instead of losing it.
    Re-running on an unchanged source adds nothing (the manifest is the watermark).
    """
    config = config or IngestConfig()
    now = dt.datetime.now(dt.timezone.utc)
    date = date or now.date()
    run_id = run_id or new_run_id(now)
    if not _RUN_RE.match(run_id):  # list_parts would ignore such a part: its rows would be lost
        raise ConfigError(f"run_id {run_id!r} may only contain letters, digits, '_', '.' and '-'")
    files = list_source(source, extensions=config.extensions, recursive=config.recursive,
                        storage_options=storage_options)
    known = read_manifest(store, columns=["image_id", "uri", "size_bytes", "mtime"])
    # Membership tests stay in Arrow (vectorised): converting a million manifest rows to Python
    # objects (timestamps above all) made every nightly ingest slow in proportion to the stored rows.
    seen_before = pc.is_in(pa.array([_file_key(f.uri, f.size_bytes, f.mtime) for f in files], pa.string()),
                           value_set=_manifest_keys(known)).to_pylist()
    todo = [f for f, seen in zip(files, seen_before, strict=True) if not seen]
    hashed = hash_files(todo, threads=config.hash_threads, storage_options=storage_options)
    rows: dict[str, SourceFile] = {}
    duplicates = unreadable = 0
    ids = [image_id if image_id is not None else _unreadable_id(f.uri) for f, image_id, _ in hashed]
    in_manifest = pc.is_in(pa.array(ids, pa.string()),
                           value_set=pa.chunked_array(known.column("image_id").chunks, pa.string())).to_pylist()
    for (f, hashed_id, error), image_id, known_id in zip(hashed, ids, in_manifest, strict=True):
        if hashed_id is None:
            log.warning("cannot read %s during ingest (%s); it will be quarantined", f.uri, error)
            unreadable += 1
        if known_id or image_id in rows:
            duplicates += 1
            continue
        rows[image_id] = f
    summary = IngestSummary(listed=len(files), new=len(rows), already_known=len(files) - len(todo),
                            duplicates=duplicates, unreadable=unreadable, part=None, date=date.isoformat())
    if not rows:
        log.info("ingest of %s added nothing (%d listed, all known)", source, len(files))
        return summary
    ids = sorted(rows)
    table = pa.table(
        {
            "image_id": ids,
            "uri": [rows[i].uri for i in ids],
            "size_bytes": [rows[i].size_bytes for i in ids],
            "mtime": [rows[i].mtime for i in ids],
            "ingested_at": [now] * len(ids),
            "source": [source] * len(ids),
        },
        schema=MANIFEST_SCHEMA,
    )
    part = manifest_part(date, run_id)
    if store.exists(part):  # parts are immutable: overwriting one would drop its rows and move shards
        raise StoreError(f"{store.uri(part)} already exists; ingest again with a new run_id")
    store.write_parquet(part, table)
    log.info("ingested %d new images from %s into %s", len(ids), source, part)
    return IngestSummary(**{**summary.as_dict(), "part": part})


def _file_key(uri: str, size: int, mtime: dt.datetime) -> str:
    """``uri|size|mtime-in-microseconds``: what identifies an unchanged file without reading it."""
    us = (mtime - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
    return f"{uri}|{size}|{us}"


def _manifest_keys(known: pa.Table) -> pa.Array:
    """:func:`_file_key` of every manifest row, computed in Arrow."""
    if known.num_rows == 0:
        return pa.array([], pa.string())
    mtime_us = pc.cast(pc.cast(known.column("mtime"), pa.timestamp("us", tz="UTC")), pa.int64())
    keys = pc.binary_join_element_wise(known.column("uri"), pc.cast(known.column("size_bytes"), pa.string()),
                                       pc.cast(mtime_us, pa.string()), "|")
    return keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys


def part_num_rows(store: Store, part: str) -> int:
    """Row count of a manifest part from its footer."""
    return store.parquet_num_rows(part, what="manifest part")


def plan_shards(store: Store, *, shard_size: int, start: dt.date | None = None, end: dt.date | None = None,
                parts: list[str] | None = None) -> list[ShardSpec]:
    """Deterministic shards over manifest parts: each part is cut into ``ceil(n / shard_size)`` slices.

    Shard ids are ``<date>_<run>_<index>`` so they never collide across parts and never change.
    """
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    specs: list[ShardSpec] = []
    for part in parts if parts is not None else list_parts(store, start, end):
        m = parse_manifest_part(part)
        if not m:
            raise ConfigError(f"{part} is not a manifest part path (manifest/date=YYYY-MM-DD/part-<run>.parquet)")
        n = part_num_rows(store, part)
        for i in range(math.ceil(n / shard_size)):
            specs.append(ShardSpec(f"{m[0]}_{m[1]}_{i:05d}", part, i * shard_size,
                                   min(n, (i + 1) * shard_size)))
    return specs


def read_shard_rows(store: Store, spec: ShardSpec) -> pa.Table:
    """The manifest rows of one shard."""
    table = store.read_parquet(spec.part, columns=["image_id", "uri"])
    if spec.stop > table.num_rows:
        raise CorruptArtifactError(
            f"shard {spec.shard_id} wants rows up to {spec.stop} but {store.uri(spec.part)} has {table.num_rows}"
        )
    return table.slice(spec.start, spec.size)


def manifest_ids(store: Store, parts: list[str]) -> pa.Array:
    """image_id of every row in ``parts`` (for invariant checks)."""
    arrays = [store.read_parquet(p, columns=["image_id"]).column("image_id") for p in parts]
    return pc.unique(pa.chunked_array([a for c in arrays for a in c.chunks], type=pa.string()))
