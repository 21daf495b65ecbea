"""Label feature shards with a fitted model and evaluate the labels.

``labels/<model_id>/date=YYYY-MM-DD/shard-<id>.parquet`` (schema :data:`LABELS_FILE_SCHEMA`): one row per
image of the shard. Writing is idempotent: the file's name is determined by (model, date, shard), so a
retry overwrites the same object with the same content.

Columns: :data:`LABELS_SCHEMA` (every label file has them) and :data:`LABEL_FLAG_FIELDS`, nullable columns added
later: ``near_duplicate_of`` (the stored image this one nearly duplicates) and ``near_duplicate_similarity``
(their cosine similarity), filled from the nightly near-duplicate check
(:func:`imgclust.models.dedup.flag_new_near_duplicates`) when it ran for the shard, null otherwise; ``novelty_score``
(the model's calibrated novelty score, :mod:`imgclust.models.novelty`; ``is_novel`` is this score above the model's
threshold), null for models without one. Files written before these columns existed stay readable:
:func:`read_labels` and :func:`conform_labels` add them as nulls.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgclust.exceptions import ConfigError
from imgclust.io.features import done_shards, embeddings_of, feature_path, iter_feature_batches
from imgclust.io.layout import LABELS_DIR, label_shards_glob, labels_path
from imgclust.io.manifest import read_manifest
from imgclust.io.sources import parent_name
from imgclust.io.store import Store
from imgclust.metrics import internal_metrics, supervised_metrics
from imgclust.models.dedup import read_arrivals
from imgclust.models.model import ClusterModel
from imgclust.progress import Progress

log = logging.getLogger(__name__)

LABELS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("cluster_id", pa.int32()),
        ("distance", pa.float32()),
        ("confidence", pa.float32()),
        ("is_novel", pa.bool_()),
        ("model_id", pa.string()),
        ("labeled_at", pa.timestamp("us", tz="UTC")),
    ]
)
LABEL_FLAG_FIELDS: list[pa.Field] = [
    pa.field("near_duplicate_of", pa.string(), nullable=True),
    pa.field("near_duplicate_similarity", pa.float32(), nullable=True),
    pa.field("novelty_score", pa.float32(), nullable=True),
]
LABELS_FILE_SCHEMA = pa.schema([*LABELS_SCHEMA, *LABEL_FLAG_FIELDS])


def conform_labels(table: pa.Table) -> pa.Table:
    """A label table with the columns of :data:`LABELS_FILE_SCHEMA` in its order: the flag columns a file
    written before them lacks are added as nulls."""
    for f in LABEL_FLAG_FIELDS:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(LABELS_FILE_SCHEMA.names).cast(LABELS_FILE_SCHEMA)


_MODEL_CACHE: dict[tuple[str, str], ClusterModel] = {}
_MODEL_CACHE_SIZE = 4


def load_model_cached(store: Store, model_id: str) -> ClusterModel:
    """Load a model once per process (model versions are immutable, so caching is safe)."""
    key = (store.url, model_id)
    if key not in _MODEL_CACHE:
        if len(_MODEL_CACHE) >= _MODEL_CACHE_SIZE:
            _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
        _MODEL_CACHE[key] = ClusterModel.load(store, model_id)
    return _MODEL_CACHE[key]


def shard_date(shard_id: str) -> dt.date:
    """The ingestion date a shard id starts with (``<date>_<run>_<index>``, see manifest.plan_shards)."""
    try:
        return dt.date.fromisoformat(shard_id[:10])
    except ValueError as err:
        raise ConfigError(f"shard id {shard_id!r} does not start with an ISO date; pass date= explicitly") from err


def label_shard(store: Store, model_id: str, extractor_key: str, shard_id: str, *, date: dt.date | None = None,
                force: bool = True, novelty_rate: float | None = None) -> dict[str, Any]:
    """Assign every feature row of one shard and write its labels file; return counts.

    Labels go under the shard's ingestion date (``date`` defaults to :func:`shard_date`), so each
    (model, image) has exactly one label row. With ``force=False`` an existing labels file is kept
    (idempotent backfills); a retry with ``force=True`` rewrites the same path. The near-duplicate columns
    come from the shard's nightly flags (:func:`imgclust.models.dedup.read_arrivals`) when they exist;
    ``near_duplicates`` in the result counts the flagged rows. ``novelty_rate`` sets the target false-novel rate
    of ``is_novel`` (default the model's own, :meth:`ClusterModel.assign`).
    """
    date = date or shard_date(shard_id)
    rel = labels_path(model_id, date, shard_id)
    if not force and store.exists(rel):
        n = conform_labels(store.read_parquet(rel))
        return {"shard_id": shard_id, "path": rel, "n": n.num_rows,
                "novel": int(pc.sum(n.column("is_novel")).as_py() or 0),
                "near_duplicates": n.num_rows - n.column("near_duplicate_of").null_count, "skipped": True}
    t0 = time.perf_counter()
    model = load_model_cached(store, model_id)
    table = store.read_parquet(feature_path(extractor_key, shard_id))
    a = model.assign(embeddings_of(table), novelty_rate=novelty_rate) if table.num_rows else None
    n = table.num_rows
    now = dt.datetime.now(dt.timezone.utc)
    flags = read_arrivals(store, extractor_key, shard_id)
    of: dict[str, str] = {}
    sim: dict[str, float] = {}
    if flags is not None:
        of = dict(zip(flags.column("image_id").to_pylist(), flags.column("near_duplicate_of").to_pylist(),
                      strict=True))
        sim = dict(zip(flags.column("image_id").to_pylist(),
                       flags.column("near_duplicate_similarity").to_pylist(), strict=True))
    image_ids = table.column("image_id").to_pylist()
    out = pa.table(
        {
            "image_id": table.column("image_id"),
            "cluster_id": pa.array(a.cluster_id if a else np.zeros(0, np.int32), pa.int32()),
            "distance": pa.array(a.distance if a else np.zeros(0, np.float32), pa.float32()),
            "confidence": pa.array(a.confidence if a else np.zeros(0, np.float32), pa.float32()),
            "is_novel": pa.array(a.is_novel if a else np.zeros(0, bool), pa.bool_()),
            "model_id": pa.array([model_id] * n, pa.string()),
            "labeled_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
            "near_duplicate_of": pa.array([of.get(i) for i in image_ids], pa.string()),
            "near_duplicate_similarity": pa.array([sim.get(i) for i in image_ids], pa.float32()),
            "novelty_score": pa.array(a.novelty_score if a else np.zeros(0, np.float32), pa.float32(),
                                      from_pandas=True),
        },
        schema=LABELS_FILE_SCHEMA,
    )
    store.write_parquet(rel, out)
    sizes = pc.value_counts(out.column("cluster_id")).to_pylist()
    n_novel = int(out.column("is_novel").to_numpy().sum())
    n_dup = n - out.column("near_duplicate_of").null_count
    log.info("labelled shard %s with %s: %d rows, %d novel, %d near-duplicates of stored images, in %.1f s",
             shard_id, model_id, n, n_novel, n_dup, time.perf_counter() - t0)
    return {"shard_id": shard_id, "path": rel, "n": n, "novel": n_novel, "near_duplicates": n_dup,
            "skipped": False, "sizes": {int(v["values"]): int(v["counts"]) for v in sizes}}


def with_names(labels: pa.Table, names: dict[int, str]) -> pa.Table:
    """``labels`` plus a ``cluster_name`` column from ``cluster_names.csv`` (empty when unnamed)."""
    ids = labels.column("cluster_id").to_pylist()
    return labels.append_column("cluster_name", pa.array([names.get(int(i), "") for i in ids], pa.string()))


def read_labels(store: Store, model_id: str) -> pa.Table:
    """All label rows of a model version (every date), with the columns of :data:`LABELS_FILE_SCHEMA`
    (files written before the near-duplicate columns get them as nulls)."""
    parts = store.glob(label_shards_glob(model_id))
    if not parts:
        return LABELS_FILE_SCHEMA.empty_table()
    return pa.concat_tables([conform_labels(store.read_parquet(p)) for p in parts])


def evaluate(store: Store, model_id: str, extractor_key: str, *, truth: str = "none",
             sample_size: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Metrics of a model's labels: sizes, silhouette/Davies-Bouldin on a sample of the clustering space,
    and ACC/NMI/ARI against the parent-folder class when ``truth == "parent_dir"``; with them how the model got
    its clusters: ``n_clusters``, ``k_sweep`` (when ``k="auto"`` chose k) and HDBSCAN's fitted ``noise_share``."""
    model = load_model_cached(store, model_id)
    labels = read_labels(store, model_id)
    out: dict[str, Any] = {"n_labeled": labels.num_rows,
                           "n_novel": int(pc.sum(labels.column("is_novel")).as_py() or 0),
                           "n_clusters": model.n_clusters}
    for key in ("noise_share", "k_sweep"):
        if key in model.meta:
            out[key] = model.meta[key]
    # internal metrics on a seeded sample of the embedded features
    rng = np.random.default_rng(seed)
    ids_all: list[str] = []
    Z_parts: list[np.ndarray] = []
    total = 0
    progress = Progress(f"evaluate {model_id}: embedding a sample", labels.num_rows, log, unit="rows").start()
    for ids, X in iter_feature_batches(store, extractor_key, done_shards(store, extractor_key)):
        keep = rng.random(len(ids)) < max(sample_size / max(labels.num_rows, 1), 1e-9)
        total += len(ids)
        if keep.any():
            ids_all.extend(np.asarray(ids)[keep].tolist())
            Z_parts.append(model.embed(X[keep]))
        progress.advance(len(ids))
    progress.finish()
    if Z_parts:
        Z = np.concatenate(Z_parts)
        raw = model.assign_embedded(Z).raw
        out.update({f"internal_{k}": v for k, v in internal_metrics(Z, raw, sample_size=sample_size, seed=seed).items()
                    if k != "cluster_sizes"})
    sizes = pc.value_counts(labels.column("cluster_id")).to_pylist()
    out["cluster_sizes"] = {int(s["values"]): int(s["counts"]) for s in sorted(sizes, key=lambda s: s["values"])}
    if truth == "parent_dir" and labels.num_rows:
        manifest = read_manifest(store, columns=["image_id", "uri"])
        joined = labels.select(["image_id", "cluster_id"]).join(manifest, "image_id", join_type="inner")
        y_true = [parent_name(u) for u in joined.column("uri").to_pylist()]
        out.update(supervised_metrics(y_true, joined.column("cluster_id").to_numpy()))
    return out


def labels_at_level(store: Store, model_id: str, level: int | None = None) -> pa.Table:
    """A model's label rows with the image URIs: ``image_id``, ``uri``, ``cluster_id`` (the stable id, or at
    ``level`` the id of its group when the model's cluster tree is cut into ``level`` groups,
    :meth:`ClusterModel.at_level`; no refit), ``fine_cluster_id`` (the stable id), ``confidence``, ``is_novel``."""
    labels = read_labels(store, model_id)
    if labels.num_rows == 0:
        raise ConfigError(f"model {model_id} has no labels in {store.uri(LABELS_DIR)}; label images first")
    fine = labels.column("cluster_id").to_numpy().astype(np.int32)
    coarse = fine if level is None else load_model_cached(store, model_id).at_level(fine, level)
    manifest = read_manifest(store, columns=["image_id", "uri"])
    uri_of = dict(zip(manifest.column("image_id").to_pylist(), manifest.column("uri").to_pylist(), strict=True))
    ids = labels.column("image_id").to_pylist()
    return pa.table({"image_id": pa.array(ids, pa.string()),
                     "uri": pa.array([uri_of.get(i) for i in ids], pa.string()),
                     "cluster_id": pa.array(coarse, pa.int32()), "fine_cluster_id": pa.array(fine, pa.int32()),
                     "confidence": labels.column("confidence"), "is_novel": labels.column("is_novel")})
