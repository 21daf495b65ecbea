"""A :class:`~imgclust.config.Recipe`'s stages after the linear reduction, implemented once.

``reduce -> [UMAP] -> cluster``: the pipeline's model (:func:`imgclust.models.model.fit_model`, which streams the
PCA / IncrementalPCA pass before these stages and keeps the reducer) and the deep estimators' last stage
(:meth:`imgclust.deep.embedding.EmbeddingClusterer.fit`, on its embeddings in memory) both run

1. :func:`fit_umap`: UMAP (McInnes, Healy & Melville 2018), when the recipe asks for it, fitted on a seeded sample
   of at most ``fit_sample`` rows;
2. :func:`fit_clusters`: the number of clusters resolved on the clustering sample (``k="auto"``: the sweep of
   :mod:`imgclust.cluster.choose_k`), then the registered method's fit (:mod:`imgclust.cluster.registry`), warm
   started where the method allows it.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from imgclust.batches import ArrayOrSource, BatchSource
from imgclust.cluster.choose_k import KSweep, resolve_k
from imgclust.cluster.registry import ClusterFitInput, FittedClusterer, clusterer_spec
from imgclust.config import ClusterConfig, Recipe, fixed_k
from imgclust.models.capping import FitSizes
from imgclust.reduce.streaming import UMAPReducer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterStage:
    """What :func:`fit_clusters` fitted: the method's result, the cluster step with its number of clusters resolved
    (``k="auto"`` replaced by the chosen k) and the sweep that chose it (None when k was given or found by the
    method)."""

    fitted: FittedClusterer
    cluster: ClusterConfig
    sweep: KSweep | None


def fit_umap(data: ArrayOrSource, recipe: Recipe, sizes: FitSizes, *, fit_sample: int | None) -> UMAPReducer | None:
    """The recipe's UMAP, fitted on at most ``fit_sample`` rows of ``data`` ``(n, d)`` (array or stream; None: every
    row) seeded by ``recipe.cluster.seed``, with the dimensions and neighbours of ``sizes`` (the recipe's, capped to
    the rows, :func:`imgclust.models.capping.cap_to_data`); None when the recipe has no UMAP."""
    if not sizes.umap_components:
        return None
    return UMAPReducer(n_components=sizes.umap_components, n_neighbors=sizes.umap_neighbors, fit_sample=fit_sample,
                       random_state=recipe.cluster.seed).fit(data)


def fit_clusters(sample: np.ndarray, recipe: Recipe, sizes: FitSizes, *, stream: BatchSource | None = None,
                 n_rows: int | None = None, warm_start: Callable[[], np.ndarray | None] | None = None) -> ClusterStage:
    """Cluster rows already in the clustering space: k resolved on ``sample`` ``(m, d)``, then the recipe's method.

    ``stream``: every row (a method may pass over all of them, e.g. k-means; None: it trains on ``sample``);
    ``n_rows``: their count (default ``m``); ``warm_start``: called, for a method that accepts it, for initial
    centroids ``(k, d)`` (or None); a start whose count differs from the resolved k is dropped (logged)."""
    cluster, sweep = resolve_k(sample, recipe.cluster)
    k = fixed_k(cluster) or 0  # 0: the method finds its own number
    spec = clusterer_spec(cluster.method)
    init = warm_start() if spec.warm_starts and warm_start is not None else None
    if init is not None and init.shape[0] != k:
        log.info("no warm start: k=auto chose %d clusters, the previous model had %d", k, init.shape[0])
        init = None
    fitted = spec.fit(ClusterFitInput(sample=sample, stream=stream, n_rows=sample.shape[0] if n_rows is None else n_rows,
                                      k=k, config=cluster, sizes=sizes, init=init))
    return ClusterStage(fitted, cluster, sweep)
