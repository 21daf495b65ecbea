"""Refit a model on all stored features and carry the previous version's stable cluster ids over.

The new model's raw clusters are matched to the previous model's stable ids through the images
both label (:func:`imgclust.models.lineage.match_clusters`); the lineage (matches, splits, merges, retired
ids, next free id) is recorded in the new ``model.json`` together with the parent model id.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import numpy as np
import pyarrow as pa

from imgclust.cluster.registry import clusterer_spec
from imgclust.config import ClusterConfig, ExtractConfig, Recipe, ReduceConfig, validated
from imgclust.io.features import done_shards, iter_feature_batches
from imgclust.io.store import Store
from imgclust.models.labels import read_labels
from imgclust.models.lineage import Lineage, initial_lineage, match_clusters
from imgclust.models.model import (
    ClusterModel,
    WarmStart,
    discard_pca_statistics,
    fit_from_store,
    model_recipe,
)
from imgclust.models.novelty_night import cluster_config_for_novelty

log = logging.getLogger(__name__)


def _shared_assignments(store: Store, model: ClusterModel, prev: pa.Table, max_rows: int, seed: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(prev stable ids, new raw clusters) of up to ``max_rows`` images of the previous labels ``prev``."""
    if prev.num_rows > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(prev.num_rows, size=max_rows, replace=False))
        prev = prev.take(pa.array(keep))
    prev_of = dict(zip(prev.column("image_id").to_pylist(), prev.column("cluster_id").to_pylist(), strict=True))
    prev_ids: list[np.ndarray] = []
    new_raw: list[np.ndarray] = []
    for ids, X in iter_feature_batches(store, model.extractor_key, done_shards(store, model.extractor_key)):
        rows = [i for i, image_id in enumerate(ids) if image_id in prev_of]
        if not rows:
            continue
        prev_ids.append(np.fromiter((prev_of[ids[i]] for i in rows), np.int64, len(rows)))
        new_raw.append(model.assign(X[rows]).raw)
    if not prev_ids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(prev_ids), np.concatenate(new_raw)


def previous_means(store: Store, previous: ClusterModel, labels: pa.Table, extractor_key: str, k: int
                   ) -> WarmStart | None:
    """Warm start for k-means: the mean of each previous stable cluster's members in the new space.

    Only when the new k equals the previous model's cluster count (a different k is a different
    recipe, fitted from scratch; with ``k="auto"`` the fit drops the start when the sweep chose another k) and
    every previous cluster still has labelled members.
    """
    if k != previous.n_clusters:
        log.info("no warm start: k=%d differs from the previous model's %d clusters", k, previous.n_clusters)
        return None
    index_of = {int(s): i for i, s in enumerate(previous.stable_ids.tolist())}
    slot = {i: index_of[c] for i, c in zip(labels.column("image_id").to_pylist(),
                                           labels.column("cluster_id").to_pylist(), strict=True) if c in index_of}

    def init(embed: Callable[[np.ndarray], np.ndarray]) -> np.ndarray | None:
        sums: np.ndarray | None = None
        counts = np.zeros(k, np.int64)
        for ids, X in iter_feature_batches(store, extractor_key, done_shards(store, extractor_key)):
            rows = [j for j, image_id in enumerate(ids) if image_id in slot]
            if not rows:
                continue
            Z = embed(X[rows]).astype(np.float64)
            idx = np.fromiter((slot[ids[j]] for j in rows), np.int64, len(rows))
            sums = np.zeros((k, Z.shape[1])) if sums is None else sums
            np.add.at(sums, idx, Z)
            counts += np.bincount(idx, minlength=k)
        if sums is None or (counts == 0).any():
            log.info("no warm start: %d previous clusters have no labelled members", int((counts == 0).sum()))
            return None
        return (sums / counts[:, None]).astype(np.float32)

    return init


def recluster_recipe(store: Store, previous_model_id: str, *, reduce: ReduceConfig | None = None,
                     cluster: ClusterConfig | None = None,
                     reason: Literal["schedule", "novelty", "manual"] = "schedule") -> Recipe:
    """The recipe a recluster refits: ``previous_model_id``'s (:func:`~imgclust.models.model.model_recipe`) with a
    given ``reduce`` / ``cluster`` step replacing its own; a recluster started by the novelty event (``reason``)
    keeping the previous cluster step makes room for the candidate new clusters of its newest night
    (:func:`~imgclust.models.novelty_night.cluster_config_for_novelty`). ConfigError, before any work, when the
    steps do not go together (e.g. SCAN on a UMAP recipe)."""
    previous = model_recipe(store, previous_model_id)
    if cluster is None:
        cluster = previous.cluster
        if reason == "novelty":  # room for the candidate new clusters the nightly run reported
            cluster = cluster_config_for_novelty(store, previous_model_id, cluster)
    return validated(Recipe, reduce=reduce or previous.reduce, cluster=cluster)


def refit_with_lineage(store: Store, extractor_key: str, *, recipe: Recipe,
                       extract: ExtractConfig | None, previous_model_id: str | None, min_overlap: float = 0.3,
                       max_rows: int = 500_000, shard_ids: list[str] | None = None,
                       pca_statistics: list[str] | None = None) -> ClusterModel:
    """Fit on ``shard_ids`` (default: all done shards), inherit stable ids from ``previous_model_id``, save;
    return the model. ``pca_statistics``: see :func:`imgclust.models.model.fit_from_store`."""
    previous = ClusterModel.load(store, previous_model_id) if previous_model_id else None
    # the previous labels are read once: they seed the warm start and the lineage
    prev_labels = (read_labels(store, previous.model_id).select(["image_id", "cluster_id"])
                   if previous is not None else None)
    warm = (previous_means(store, previous, prev_labels, extractor_key, recipe.k or previous.n_clusters)
            if previous is not None and prev_labels is not None and clusterer_spec(recipe.cluster.method).warm_starts
            else None)
    model = fit_from_store(store, extractor_key, recipe=recipe, extract=extract, save=False,
                           warm_start=warm, shard_ids=shard_ids, pca_statistics=pca_statistics)
    model.meta["warm_start_offered"] = warm is not None  # k-means init from the previous clusters
    lineage: Lineage
    if previous is None or prev_labels is None:
        lineage = initial_lineage(model.n_clusters)
    else:
        prev_lineage = previous.meta.get("lineage")
        next_id = int(prev_lineage["next_id"]) if prev_lineage else int(previous.stable_ids.max(initial=-1)) + 1
        retired = [int(i) for i in prev_lineage.get("retired", [])] if prev_lineage else []
        prev_ids, new_raw = _shared_assignments(store, model, prev_labels, max_rows, recipe.cluster.seed)
        lineage = match_clusters(prev_ids, new_raw, prev_known_ids=[*previous.stable_ids.tolist(), *retired],
                                 min_overlap=min_overlap, next_id=next_id, n_new_clusters=model.n_clusters)
        log.info("lineage vs %s: %d inherited, %d new ids, %d retired, %d splits, %d merges", previous_model_id,
                 len(lineage.matched), len(lineage.new_ids), len(lineage.retired), len(lineage.splits),
                 len(lineage.merges))
    model.stable_ids = lineage.stable_ids.astype(np.int32)
    model.meta["lineage"] = lineage.as_json()
    model.meta["parent_model"] = previous_model_id
    model.save(store)
    discard_pca_statistics(store, pca_statistics)
    return model
