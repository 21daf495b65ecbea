"""HDBSCAN parameters chosen for the embedding it runs on, for the ``hdbscan`` method without a given k.

HDBSCAN* (Campello, Moulavi & Sander, PAKDD 2013; McInnes & Healy, ICDMW 2017) builds a hierarchy of density
level sets and keeps the clusters that persist. The pipeline's old defaults (``min_cluster_size=50``,
``min_samples`` equal to it, excess-of-mass selection) were not chosen for a UMAP embedding of an image corpus:
with ``min_samples`` that large the core distances smooth over the thin gaps UMAP leaves between touching
kinds, and excess of mass then keeps a few large parents (tops, footwear, bags) instead of the kinds.

:func:`hdbscan_params` states the rule from the number of rows and the embedding's density scale;
:func:`core_distance_scale` measures that scale and :func:`params_for` does both for an array.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from imgclust.cluster.classic import HDBSCANClusterer
from imgclust.exceptions import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["HDBSCANParams", "hdbscan_for", "hdbscan_params", "core_distance_scale", "params_for", "MIN_CLUSTER_SHARE",
           "MIN_SAMPLES", "EPSILON_CORE_RATIO", "MIN_ROWS", "UMAP_MIN_DIST"]

MIN_CLUSTER_SHARE = 0.01
"""``min_cluster_size`` as a share of the fitted rows (the smallest group worth a cluster of its own)."""

MIN_SAMPLES = 5
"""HDBSCAN ``min_samples``: neighbours behind a core distance, small and independent of the size."""

EPSILON_CORE_RATIO = 2.5
"""``cluster_selection_epsilon`` in units of the median core distance (:func:`core_distance_scale`)."""

SMALLEST_CLUSTER = 5
"""Floor of ``min_cluster_size`` for small inputs."""

MIN_ROWS = 2 * SMALLEST_CLUSTER
"""Fewest rows the rule accepts: below it no two clusters of the smallest size fit."""

UMAP_MIN_DIST = 0.0
"""UMAP ``min_dist`` the rule assumes before HDBSCAN (points packed densely; McConville et al. 2020)."""

UMAP_NEIGHBORS = 15
"""UMAP ``n_neighbors`` the rule was chosen with for pixel features (the deep recipe keeps its 20)."""

SCALE_SAMPLE = 5000
"""Rows whose core distance :func:`core_distance_scale` measures (neighbours are searched among all rows)."""


@dataclass(frozen=True)
class HDBSCANParams:
    """Parameters of ``hdbscan.HDBSCAN`` (and the UMAP settings the rule assumes before it).

    ``min_cluster_size`` >= 2, ``min_samples`` in ``1..min_cluster_size``, ``cluster_selection_method``
    ``"eom"`` or ``"leaf"``, ``cluster_selection_epsilon`` >= 0 (a distance in the clustered space);
    ``umap_min_dist`` >= 0 and ``umap_neighbors`` >= 2.
    """

    min_cluster_size: int
    min_samples: int
    cluster_selection_method: Literal["eom", "leaf"]
    cluster_selection_epsilon: float
    umap_min_dist: float = UMAP_MIN_DIST
    umap_neighbors: int = UMAP_NEIGHBORS

    def as_kwargs(self) -> dict[str, object]:
        """The keyword arguments of ``hdbscan.HDBSCAN`` (the UMAP settings left out)."""
        return {"min_cluster_size": self.min_cluster_size, "min_samples": self.min_samples,
                "cluster_selection_method": self.cluster_selection_method,
                "cluster_selection_epsilon": self.cluster_selection_epsilon}


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def hdbscan_params(n_rows: int, n_dims: int, core_scale: float) -> HDBSCANParams:
    """HDBSCAN parameters for ``n_rows`` rows of an ``n_dims``-dimensional (UMAP) embedding whose median core
    distance is ``core_scale`` (:func:`core_distance_scale` with ``min_samples = 5``).

    The rule:

    * ``min_cluster_size = max(5, round(0.01 * n_rows))``, at most ``n_rows // 2``: a cluster is a group of at
      least 1 % of the rows. The hdbscan parameter-selection guide defines ``min_cluster_size`` as the
      smallest grouping worth a cluster; a share, not a count, keeps that meaning across corpus sizes;
    * ``min_samples = 5`` (at most ``min_cluster_size``): the guide notes that ``min_samples`` sets how
      conservative the clustering is (how much becomes noise) and that it defaults to ``min_cluster_size``;
      decoupled and small, it keeps UMAP's tight clumps dense, so few rows become noise and the density
      gaps between touching kinds are not smoothed away;
    * ``cluster_selection_method = "leaf"`` with ``cluster_selection_epsilon = 2.5 * core_scale``: leaf
      selection takes the finest clusters of the condensed tree (excess of mass, Campello et al. 2013,
      prefers the large parents: a few clusters where kinds touch); the epsilon threshold (Malzer & Baum,
      "A Hybrid Approach To Hierarchical Density-based Cluster Selection", MFI 2020) merges back leaves that
      split at a distance below it, so the leaves do not shatter into micro-clusters and noise. Expressed in
      units of the median core distance, the threshold follows the embedding's density: a smaller corpus, or
      another space, has larger distances between neighbours;
    * UMAP before it: ``min_dist = 0`` (McConville et al., N2D, ICPR 2020; the UMAP docs' "Using UMAP for
      Clustering"): points packed densely, which is what a density clusterer needs.

    The constants were chosen by ``benchmarks/hdbscan_defaults.py`` on a seeded *train* subset (pixel UMAP
    and SimCLR features): leaf selection, ``min_samples`` and the share by the best NMI with at most 10 %
    noise on both (the share is the middle of a range that scored alike); the epsilon ratio as the largest value of
    its grid (steps of 0.5) whose next value still kept more than half the clusters on both, because the
    number of clusters falls abruptly past a corpus-dependent distance. ``n_dims`` is checked only.

    Raises :class:`ConfigError` for fewer than :data:`MIN_ROWS` rows, fewer than one dimension, or a core
    scale that is not a positive finite number.
    """
    n_rows = _check_count("n_rows", n_rows, 1)
    _check_count("n_dims", n_dims, 1)
    if n_rows < MIN_ROWS:
        raise ConfigError(f"HDBSCAN needs at least {MIN_ROWS} rows for two clusters of {SMALLEST_CLUSTER}; got "
                          f"{n_rows}. Cluster more images or use k-means with a given k")
    if not (isinstance(core_scale, (int, float, np.floating)) and np.isfinite(core_scale) and core_scale > 0):
        raise ConfigError(f"core_scale must be a positive finite distance, got {core_scale!r}; measure it with "
                          "core_distance_scale(X)")
    min_cluster_size = min(max(SMALLEST_CLUSTER, round(MIN_CLUSTER_SHARE * n_rows)), n_rows // 2)
    params = HDBSCANParams(min_cluster_size=min_cluster_size, min_samples=min(MIN_SAMPLES, min_cluster_size),
                           cluster_selection_method="leaf",
                           cluster_selection_epsilon=float(EPSILON_CORE_RATIO * core_scale))
    logger.debug("hdbscan_params(%d rows, %d dims, core scale %.4g) -> %s", n_rows, n_dims, core_scale, params)
    return params


def core_distance_scale(X: np.ndarray, min_samples: int = MIN_SAMPLES, *, sample: int = SCALE_SAMPLE,
                        seed: int = 0) -> float:
    """Median core distance of ``X`` ``(n, D)``: over a seeded sample of at most ``sample`` rows, the
    Euclidean distance to the ``min_samples``-th nearest other row (HDBSCAN's core distance, the point itself
    not counted), neighbours searched among all rows. Exact k-NN (scikit-learn); meant for low-dimensional
    embeddings such as UMAP's. Raises :class:`ConfigError` on non-finite input, too few rows, or a zero
    scale (all those neighbours coincide: deduplicate the rows first)."""
    from sklearn.neighbors import NearestNeighbors

    Z = np.asarray(X, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[1] < 1:
        raise ConfigError(f"X must be a 2-D array (n, D) with D >= 1, got shape {Z.shape}")
    k = _check_count("min_samples", min_samples, 1)
    _check_count("sample", sample, 1)
    if Z.shape[0] <= k:
        raise ConfigError(f"core distances with min_samples={k} need more than {k} rows, got {Z.shape[0]}")
    if not np.isfinite(Z).all():
        raise ConfigError("X has NaN or infinite values; the embedding must be finite")
    rng = np.random.default_rng(seed)
    rows = rng.choice(Z.shape[0], sample, replace=False) if Z.shape[0] > sample else np.arange(Z.shape[0])
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z[rows])
    scale = float(np.median(dist[:, k]))
    if not scale > 0:
        raise ConfigError(f"the median distance to the {k}-th neighbour is 0: most rows have {k} exact "
                          "duplicates; deduplicate the rows before density clustering")
    return scale


def params_for(X: np.ndarray, *, seed: int = 0) -> HDBSCANParams:
    """:func:`hdbscan_params` for the rows ``X`` ``(n, D)`` HDBSCAN will be fitted on."""
    Z = np.asarray(X)
    if Z.ndim != 2:
        raise ConfigError(f"X must be a 2-D array (n, D), got shape {Z.shape}")
    if Z.shape[0] < MIN_ROWS:
        raise ConfigError(f"HDBSCAN needs at least {MIN_ROWS} rows for two clusters of {SMALLEST_CLUSTER}; got "
                          f"{Z.shape[0]}. Cluster more images or use k-means with a given k")
    return hdbscan_params(Z.shape[0], Z.shape[1], core_distance_scale(Z, MIN_SAMPLES, seed=seed))


def hdbscan_for(sample: np.ndarray, min_cluster_size: int | None, seed: int) -> HDBSCANClusterer:
    """HDBSCAN for the clustering sample ``(m, d)``: with ``min_cluster_size`` given, that size and HDBSCAN's own
    other defaults; unset, every parameter chosen for the embedding by :func:`imgclust.cluster.density.params_for`."""
    if min_cluster_size is not None:
        return HDBSCANClusterer(min_cluster_size=min_cluster_size, fit_sample=None, random_state=seed)
    params = params_for(sample, seed=seed)
    logger.info("HDBSCAN parameters for %d rows of this %d-dimensional embedding: %s", sample.shape[0],
                sample.shape[1], params.as_kwargs())
    return HDBSCANClusterer(**params.as_kwargs(), fit_sample=None, random_state=seed)  # type: ignore[arg-type]
