"""Feature and quarantine shards in the store, and streaming readers over them.

``features/<key>/shard-<id>.parquet``: ``image_id`` string, ``embedding`` fixed_size_list<float32>[D],
with the extractor identity in the file's key-value metadata (``representation_dim``: the leading columns a model
clusters, :func:`feature_layout`). ``shard-<id>.json`` is the done-marker,
written last: a shard without a marker does not exist for readers. Paths: :mod:`imgclust.io.layout`.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from imgclust.exceptions import CorruptArtifactError, StoreError
from imgclust.io.layout import feature_markers_glob, feature_path, marker_path, shard_id_of
from imgclust.io.layout import quarantine_path as quarantine_path  # re-exported: the paths' old home
from imgclust.io.store import Store

log = logging.getLogger(__name__)

QUARANTINE_SCHEMA = pa.schema(
    [("image_id", pa.string()), ("uri", pa.string()), ("error_kind", pa.string()), ("message", pa.string())]
)


def features_schema(dim: int, metadata: dict[str, str] | None = None) -> pa.Schema:
    """Arrow schema of a feature shard with embedding dimension ``dim``."""
    return pa.schema(
        [("image_id", pa.string()), ("embedding", pa.list_(pa.float32(), dim))],
        metadata={k.encode(): v.encode() for k, v in (metadata or {}).items()},
    )


def embeddings_table(ids: list[str], emb: np.ndarray, metadata: dict[str, str] | None = None) -> pa.Table:
    """Build a feature table from ids and an (N, D) float32 array (zero-copy into the list column)."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise ValueError(f"embeddings must be ({len(ids)}, D), got {emb.shape}")
    values = pa.array(emb.reshape(-1), type=pa.float32())
    col = pa.FixedSizeListArray.from_arrays(values, emb.shape[1])
    return pa.Table.from_arrays([pa.array(ids, type=pa.string()), col], schema=features_schema(emb.shape[1], metadata))


def embeddings_of(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """(N, D) float32 view of the ``embedding`` column (flatten() respects slice offsets)."""
    col = table.column("embedding")
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    dim = arr.type.list_size
    return np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


@dataclass(frozen=True)
class DoneMarker:
    """Content of a shard's done-marker."""

    shard_id: str
    fingerprint: str
    n_features: int
    n_quarantined: int
    n_input: int
    seconds: dict[str, float]
    error_kinds: dict[str, int]

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> DoneMarker:
        """Raises KeyError / TypeError when ``obj`` is not a complete, well-typed marker."""
        marker = cls(**{f: obj[f] for f in cls.__dataclass_fields__})
        counts = (marker.n_features, marker.n_quarantined, marker.n_input)
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise TypeError(f"counts must be non-negative ints, got {counts}")
        if not isinstance(marker.fingerprint, str) or not isinstance(marker.shard_id, str):
            raise TypeError("shard_id and fingerprint must be strings")
        if not isinstance(marker.seconds, dict) or not isinstance(marker.error_kinds, dict):
            raise TypeError("seconds and error_kinds must be objects")
        return marker


def read_marker(store: Store, key: str, shard_id: str) -> DoneMarker | None:
    """The shard's marker, or None when the shard is not done. A corrupt marker raises."""
    rel = marker_path(key, shard_id)
    try:
        raw = store.read_bytes(rel)
    except StoreError:
        return None
    try:
        return DoneMarker.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError) as err:  # ValueError: bad JSON or bytes that are not UTF-8
        raise CorruptArtifactError(f"done-marker {store.uri(rel)} is corrupt ({err}); delete it to redo the shard") from err


def done_shards(store: Store, key: str) -> list[str]:
    """Shard ids of ``key`` that have a done-marker (sorted)."""
    out = []
    for rel in store.glob(feature_markers_glob(key)):
        out.append(shard_id_of(rel))
    return out


def feature_layout(store: Store, key: str, shard_id: str) -> tuple[int, int]:
    """``(D, representation columns)`` of a feature shard: the first ``representation_dim`` columns of the
    ``embedding`` are what a model clusters, the rest (``deep:`` features) feed its novelty score. Shards
    without the ``representation_dim`` metadata (written before it) are all representation."""
    schema = store.parquet_schema(feature_path(key, shard_id), what="feature shard")
    dim = int(schema.field("embedding").type.list_size)
    representation = _representation_columns(schema) or dim
    if not 0 < representation <= dim:
        raise CorruptArtifactError(f"{store.uri(feature_path(key, shard_id))} says representation_dim="
                                   f"{representation} for {dim}-d embeddings; re-extract it")
    return dim, representation


def near_duplicate_space(store: Store, key: str, shard_id: str) -> bool:
    """Whether a feature shard's space is one where a high cosine similarity means "a version of the same picture"
    (the ``near_duplicate_space`` metadata its backbone records, :class:`~imgclust.extract.backbones.base.Backbone`).
    Shards written before that field: every extractor but ``deep`` (an encoder trained on the corpus)."""
    meta = store.parquet_schema(feature_path(key, shard_id), what="feature shard").metadata or {}
    raw = meta.get(b"near_duplicate_space")
    if raw is None:
        return meta.get(b"extractor") != b"deep"
    return raw == b"true"


def iter_feature_batches(store: Store, key: str, shard_ids: list[str] | None = None,
                         batch_size: int = 65536, *, representation: bool = False
                         ) -> Iterator[tuple[list[str], np.ndarray]]:
    """Stream ``(image_ids, (n, D) float32)`` over done shards; memory is bounded by ``batch_size`` rows.
    ``representation``: only the leading ``representation_dim`` columns (:func:`feature_layout`), without the
    novelty statistics some extractors store after them."""
    for sid in shard_ids if shard_ids is not None else done_shards(store, key):
        for batch in store.iter_parquet_batches(feature_path(key, sid), batch_size=batch_size):
            X = embeddings_of(batch)
            r = _representation_columns(batch.schema) if representation else None
            yield batch.column("image_id").to_pylist(), X if r is None else np.ascontiguousarray(X[:, :r])


def _representation_columns(schema: pa.Schema) -> int | None:
    """The ``representation_dim`` a feature shard's metadata records (each batch's schema carries it), or None."""
    raw = (schema.metadata or {}).get(b"representation_dim")
    return None if raw is None else int(raw)


def count_features(store: Store, key: str, shard_ids: list[str] | None = None) -> int:
    total = 0
    for sid in shard_ids if shard_ids is not None else done_shards(store, key):
        marker = read_marker(store, key, sid)
        total += marker.n_features if marker else 0
    return total
