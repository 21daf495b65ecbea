"""A night's novelty: is the share of novel images above what known kinds give, and do they form new groups?

Reads the label rows a nightly run wrote for its new shards (``is_novel`` from the model's calibrated score,
:mod:`imgclust.models.novelty`) and decides the novelty event:

* **rate**: the night's novel count above :func:`~imgclust.models.novelty.event_limit`, the 0.999 quantile of the
  Beta-Binomial count a night of known kinds gives at the conformal threshold;
* **candidates**: the novel images grouped in the model's novelty space (:func:`imgclust.models.candidates.find_candidates`);
  each group large and tight enough is a candidate new cluster, written as ``candidate-<i>.png`` (a montage) and
  listed in ``candidates.json`` under ``novelty/<model_id>/date=<YYYY-MM-DD>/``;
* **shift**: the night's novelty scores as a whole above the model's calibration scores, one-sided Mann-Whitney
  p-value below :data:`SHIFT_ALPHA` (:meth:`~imgclust.models.novelty.NoveltyScorer.shift_pvalue`): a new kind moves the whole
  score distribution even when few of its images pass the threshold.

The event fires on any of the three. Models without a calibrated score (fitted before it, or on too few rows) fall back to
a fixed share, :data:`LEGACY_NOVEL_SHARE`, logged and recorded as ``rule: "legacy-share"``.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgclust.cluster.registry import clusterer_spec
from imgclust.config import ClusterConfig, fixed_k
from imgclust.exceptions import StoreError
from imgclust.io.features import feature_path, iter_feature_batches
from imgclust.io.layout import candidate_montage_path, candidates_glob, candidates_path, labels_path
from imgclust.io.manifest import read_manifest
from imgclust.io.store import Store
from imgclust.models.candidates import candidate_montage, find_candidates
from imgclust.models.labels import load_model_cached, shard_date
from imgclust.models.model import n_clusters_of
from imgclust.models.novelty import event_limit

log = logging.getLogger(__name__)

EVENT_QUANTILE = 0.999
"""Quantile of the known-kinds count above which a night's novel count raises the event."""
SHIFT_ALPHA = 1e-3
"""p-value below which the night's score shift raises the event (as rare on known-kind nights as the rate rule)."""
LEGACY_NOVEL_SHARE = 0.2
"""Novel share that raises the event for models without a calibrated novelty score."""


def assess_night(store: Store, model_id: str, extractor_key: str, shard_ids: list[str], *,
                 date: dt.date | None = None, novelty_rate: float | None = None, storage_options: dict[str, Any] | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """Decide a night's novelty event from the label rows of ``shard_ids`` (written by
    :func:`imgclust.models.labels.label_shard` under each shard's ingestion date) and write its candidate new clusters
    under ``date`` (default the first shard's ingestion date).

    Returns ``{"labeled", "novel", "novel_share", "rule", "expected_rate", "limit", "rate_alert", "shift_p",
    "shift_alert", "candidates": [{"candidate", "size", "tightness", "montage"}], "novelty_alert"}``; ``limit`` is the most novel images a night
    of known kinds gives (``rule: "conformal"``) or the legacy share's count. ``novelty_rate`` must be the rate
    the rows were labelled at (default the model's). Idempotent: a rerun rewrites the same files.
    """
    model = load_model_cached(store, model_id)
    if not shard_ids:
        raise StoreError("no shards to assess: the night extracted nothing")
    date = date or shard_date(shard_ids[0])
    paths = [labels_path(model_id, shard_date(sid), sid) for sid in shard_ids]
    missing = [p for p in paths if not store.exists(p)]
    if missing:
        raise StoreError(f"{store.uri(missing[0])} (and {len(missing) - 1} more) are missing: label the shards first")
    tables = [store.read_parquet(p, columns=["image_id", "is_novel", "novelty_score"]) for p in paths]
    labels = pa.concat_tables(tables)
    n = labels.num_rows
    novel_ids = labels.filter(labels.column("is_novel")).column("image_id").to_pylist() if n else []
    out: dict[str, Any] = {"labeled": n, "novel": len(novel_ids),
                           "novel_share": round(len(novel_ids) / n, 4) if n else 0.0, "candidates": []}
    if model.novelty is None:
        limit = int(LEGACY_NOVEL_SHARE * n)
        log.warning("model %s has no calibrated novelty score: the event uses the fixed share %s; refit the model "
                    "(imgclust recluster) to calibrate it", model_id, LEGACY_NOVEL_SHARE)
        out.update(rule="legacy-share", expected_rate=None, limit=limit, rate_alert=len(novel_ids) > limit,
                   novelty_alert=len(novel_ids) > limit)
        return out
    rate = model.novelty.rate if novelty_rate is None else novelty_rate
    limit = event_limit(n, model.novelty.n_calibration_, rate, EVENT_QUANTILE)
    scores = labels.column("novelty_score").drop_null().to_numpy()
    shift_p = model.novelty.shift_pvalue(scores)
    out.update(rule="conformal", expected_rate=rate, limit=limit, rate_alert=len(novel_ids) > limit,
               shift_p=float(f"{shift_p:.3g}"), shift_alert=shift_p < SHIFT_ALPHA)
    if novel_ids:
        out["candidates"] = _write_candidates(store, model, extractor_key, shard_ids, date, novel_ids, n,
                                              storage_options, seed)
    out["novelty_alert"] = bool(out["rate_alert"] or out["candidates"] or out["shift_alert"])
    log.info("night %s on %s: %d of %d images novel (at most %d expected from known kinds at rate %s), "
             "%d candidate new cluster(s), score shift p = %.3g: %s", date, model_id, len(novel_ids), n, limit, rate,
             len(out["candidates"]), shift_p, "event" if out["novelty_alert"] else "no event")
    return out


def _write_candidates(store: Store, model: Any, extractor_key: str, shard_ids: list[str], date: dt.date,
                      novel_ids: list[str], n_night: int, storage_options: dict[str, Any] | None,
                      seed: int) -> list[dict[str, Any]]:
    """Group the night's novel images and write a montage per candidate plus ``candidates.json``."""
    wanted = set(novel_ids)
    ids: list[str] = []
    blocks: list[np.ndarray] = []
    for batch_ids, X in iter_feature_batches(store, extractor_key, shard_ids):
        keep = np.fromiter((i in wanted for i in batch_ids), bool, len(batch_ids))
        if keep.any():
            ids.extend(np.asarray(batch_ids, dtype=object)[keep].tolist())
            blocks.append(X[keep])
    if not blocks:
        raise StoreError(f"the novel images of {shard_ids[:3]}... have no rows in "
                         f"{store.uri(feature_path(extractor_key, shard_ids[0]))}: the features changed after labelling")
    rows = model.novelty.space(model.novelty_input(np.concatenate(blocks)))
    found = find_candidates(rows, model.novelty.reference_space(), n_night=n_night, seed=seed)
    manifest = read_manifest(store, columns=["image_id", "uri"])
    manifest = manifest.filter(pc.is_in(manifest.column("image_id"), value_set=pa.array(sorted(wanted), pa.string())))
    uris = dict(zip(manifest.column("image_id").to_pylist(), manifest.column("uri").to_pylist(), strict=True))
    listed: list[dict[str, Any]] = []
    for i, cand in enumerate(found):
        members = [ids[j] for j in cand.members.tolist()]
        rel = candidate_montage_path(model.model_id, date, i)
        store.write_bytes(rel, candidate_montage([uris.get(m) for m in members], storage_options=storage_options))
        listed.append({"candidate": i, "size": cand.size, "tightness": round(float(cand.tightness), 4),
                       "montage": rel, "image_ids": members})
    store.write_json(candidates_path(model.model_id, date), {"model_id": model.model_id, "date": date.isoformat(),
                                                             "novel": len(novel_ids), "candidates": listed})
    return [{k: v for k, v in c.items() if k != "image_ids"} for c in listed]


def latest_candidates(store: Store, model_id: str) -> dict[str, Any] | None:
    """The newest night's ``candidates.json`` of ``model_id`` (None when no night found any)."""
    paths = sorted(store.glob(candidates_glob(model_id)))
    for rel in reversed(paths):
        record = store.read_json(rel)
        if record.get("candidates"):
            return dict(record)
    return None


def cluster_config_for_novelty(store: Store, previous_model_id: str, cluster: ClusterConfig) -> ClusterConfig:
    """The recipe of a recluster started by the novelty event: room for the candidate new clusters of the previous
    model's newest night that had any, so the new kinds can get clusters (and new stable ids) of their own. A given
    ``k`` grows by the candidates; with ``k="auto"`` the sweep's ``k_min`` becomes the previous model's count plus
    the candidates (k stays chosen, now from there up). HDBSCAN, which finds its own number of clusters, is
    unchanged."""
    record = latest_candidates(store, previous_model_id)
    if record is None or clusterer_spec(cluster.method).finds_k:
        return cluster
    n = len(record["candidates"])
    k = fixed_k(cluster)
    if k is None:
        previous = n_clusters_of(store, previous_model_id)
        k_max = None if cluster.k_max is None else max(cluster.k_max, previous + n)
        log.info("novelty recluster: k=auto from k_min %d (%s's %d clusters + %d candidate new cluster(s) of night "
                 "%s)", previous + n, previous_model_id, previous, n, record["date"])
        return cluster.model_copy(update={"k_min": previous + n, "k_max": k_max})
    log.info("novelty recluster: k %d -> %d for the %d candidate new cluster(s) of %s's night %s", k,
             k + n, n, previous_model_id, record["date"])
    return cluster.model_copy(update={"k": k + n})
