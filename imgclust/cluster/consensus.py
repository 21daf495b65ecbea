"""Consensus of several partitions by evidence accumulation (Fred & Jain, TPAMI 2005).

Fred & Jain, "Combining Multiple Clusterings Using Evidence Accumulation", IEEE TPAMI 27(6), 2005:
run a clusterer several times (other seeds, other views of the data), count for every pair of
points the fraction of runs that put them in the same cluster (the *co-association* matrix), and
cut an average-linkage tree of ``1 - co-association`` into the final ``k`` clusters. Pairs that
every run separates or joins decide the result; the arbitrary splits a single run makes inside a
large blob (e.g. which of several similar classes a GMM component takes) disagree between runs and
are outvoted.

Cost: the co-association matrix is dense, ``n x n`` float32, so this is for the fitted sample of a
model (10-20k rows), not for a whole corpus; :func:`consensus_labels` refuses more than
``max_rows`` rows with a message instead of running the machine out of memory.
"""
from __future__ import annotations

import logging

import numpy as np

from imgclust.exceptions import ConfigError
from imgclust.progress import timed

logger = logging.getLogger(__name__)

__all__ = ["co_association", "consensus_labels", "MAX_CONSENSUS_ROWS", "MIN_CLUSTER_FRACTION"]

MAX_CONSENSUS_ROWS = 20000
"""Default row cap: the matrix plus scipy's condensed float64 copy need ~3 GB at 20k rows."""
MIN_CLUSTER_FRACTION = 0.1
"""The ``min_cluster_fraction`` of pooled multi-view consensuses (``n2d-ensemble``): clusters below a tenth of
the mean size are outliers. Chosen by ``benchmarks/view_ensemble.py`` on a *train* subset, where it turned
the tiny clusters of pooled multi-encoder consensuses into real ones. Not the default of
:func:`consensus_labels`: on one view (the pixel recipe's EM runs) a tiny cluster cost less than the extra
split the outlier-aware cut makes, so the GMM consensus keeps Fred & Jain's plain cut."""


def _check_partitions(partitions: np.ndarray) -> np.ndarray:
    p = np.asarray(partitions)
    if p.ndim != 2 or p.shape[1] < 1 or p.shape[0] < 2:
        raise ConfigError(f"partitions must be (n_rows >= 2, n_partitions >= 1) integer labels, got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.integer):
        raise ConfigError(f"partitions must hold integer labels, got dtype {p.dtype}")
    if p.min() < 0:
        raise ConfigError("partitions hold a negative label (noise?); give every row a cluster before the consensus")
    return p.astype(np.int64, copy=False)


def co_association(partitions: np.ndarray) -> np.ndarray:
    """Fraction of partitions that put each pair of rows in the same cluster.

    Args:
        partitions: ``(n, m)`` int labels, column ``j`` one partition of the ``n`` rows (labels
            ``>= 0``; their values need not agree between columns).

    Returns:
        ``(n, n)`` float32 in ``[0, 1]``, symmetric, ones on the diagonal:
        ``C[a, b] = (1/m) Σ_j [p[a, j] == p[b, j]]`` (Fred & Jain 2005, eq. 1), computed as
        ``Σ_j H_j H_jᵀ / m`` with ``H_j`` the one-hot ``(n, k_j)`` membership matrix of partition ``j``.
    """
    p = _check_partitions(partitions)
    n, m = p.shape
    co = np.zeros((n, n), dtype=np.float32)
    for j in range(m):
        _, lab = np.unique(p[:, j], return_inverse=True)
        onehot = np.zeros((n, int(lab.max()) + 1), dtype=np.float32)
        onehot[np.arange(n), lab] = 1.0
        co += onehot @ onehot.T
    co /= m
    return co


def consensus_labels(partitions: np.ndarray, n_clusters: int, *, max_rows: int = MAX_CONSENSUS_ROWS,
                     min_cluster_fraction: float = 0.0) -> np.ndarray:
    """Evidence-accumulation consensus: average-linkage tree on ``1 - co_association`` cut into ``n_clusters``.

    ``min_cluster_fraction = 0`` (default): the plain cut of the tree at ``n_clusters`` (Fred & Jain). It
    spends clusters on a few outlying rows when the partitions disagree about them (e.g. on pooled partitions
    of several encoders). With ``min_cluster_fraction > 0`` the tree
    is cut at the smallest ``k' >= n_clusters`` that gives ``n_clusters`` clusters of at least
    ``min_cluster_fraction * n / n_clusters`` rows; those are the clusters, and every row of the smaller
    ones joins the cluster it co-occurs with most (highest mean co-association); :data:`MIN_CLUSTER_FRACTION`
    is the value pooled multi-view consensuses use. A plain cut whose result has a cluster below
    :data:`MIN_CLUSTER_FRACTION` of the mean size logs a warning (a GMM consensus of a contrastive
    representation can return such near-empty clusters).

    Args:
        partitions: ``(n, m)`` int labels (see :func:`co_association`).
        n_clusters: clusters of the result, ``1 <= n_clusters <= n``.
        max_rows: refuse larger ``n`` (dense ``n x n`` matrix); cluster a sample instead.
        min_cluster_fraction: a cluster smaller than this fraction of the mean cluster size ``n / n_clusters``
            counts as outliers; ``0`` (default) = the plain cut.

    Returns:
        ``(n,)`` int64 labels ``0..n_clusters-1``, numbered by decreasing cluster size (ties by
        first row), so equal inputs give equal label values.

    Raises:
        ConfigError: bad partitions, ``n > max_rows``, ``n_clusters`` out of range, or no cut of the tree
            has ``n_clusters`` clusters of the minimum size (the partitions hold fewer groups: lower
            ``n_clusters`` or ``min_cluster_fraction``).
    """
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    p = _check_partitions(partitions)
    n = p.shape[0]
    if n > max_rows:
        raise ConfigError(f"consensus over {n} rows needs a dense {n}x{n} matrix; the cap is {max_rows} "
                          "(max_rows): run it on a sample of the rows")
    if not 1 <= n_clusters <= n:
        raise ConfigError(f"n_clusters must be in [1, {n}], got {n_clusters}")
    if not 0.0 <= min_cluster_fraction <= 1.0:
        raise ConfigError(f"min_cluster_fraction must be in [0, 1], got {min_cluster_fraction}")
    with timed("consensus: co-association", logger, f"{n} rows, {p.shape[1]} partitions"):
        co = co_association(p)
    with timed("consensus: average-linkage tree", logger, f"{n} rows"):
        dist = 1.0 - co
        np.fill_diagonal(dist, 0.0)
        tree = linkage(squareform(dist, checks=False), method="average")
        del dist
    min_size = max(1, int(min_cluster_fraction * n / n_clusters))
    with timed("consensus: cut", logger, f"{n_clusters} clusters of at least {min_size} rows"):
        raw, big = _cut_with_min_size(tree, n_clusters, min_size, n)
    labels = np.full(n, -1, dtype=np.int64)
    for new, c in enumerate(big):
        labels[raw == c] = new
    outliers = np.flatnonzero(labels < 0)
    if outliers.size:
        member = np.zeros((n, n_clusters), dtype=np.float32)
        member[labels >= 0, labels[labels >= 0]] = 1.0
        labels[outliers] = (co[outliers] @ member / member.sum(axis=0)).argmax(axis=1)
    sizes = np.bincount(labels, minlength=n_clusters)
    first = np.array([np.flatnonzero(labels == c)[0] for c in range(n_clusters)])
    order = np.lexsort((first, -sizes))  # largest first, ties by first row
    relabel = np.empty(n_clusters, dtype=np.int64)
    relabel[order] = np.arange(n_clusters)
    labels = relabel[labels]
    sizes = np.bincount(labels, minlength=n_clusters)
    logger.info("consensus of %d partitions over %d rows -> %d clusters (sizes %s; %d outlying rows reassigned)",
                p.shape[1], n, n_clusters, sizes.tolist(), outliers.size)
    tiny = sizes < MIN_CLUSTER_FRACTION * n / n_clusters
    if min_cluster_fraction == 0.0 and tiny.any():  # a cut with a minimum size has already chosen its clusters
        logger.warning("consensus: %d of %d clusters hold fewer than %.0f%% of the mean cluster size (sizes %s): "
                       "the partitions may agree on fewer groups than n_clusters, and such a cluster may be a few "
                       "outlying rows rather than a group; check it, or ask for fewer clusters",
                       int(tiny.sum()), n_clusters, 100 * MIN_CLUSTER_FRACTION, sizes[tiny].tolist())
    return labels


def _cut_with_min_size(tree: np.ndarray, n_clusters: int, min_size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Smallest cut ``k' >= n_clusters`` of the linkage ``tree`` with ``n_clusters`` clusters of ``>= min_size``
    rows: ``(raw labels (n,), the ids of the n_clusters largest clusters)``."""
    from scipy.cluster.hierarchy import fcluster

    for cut in range(n_clusters, n + 1):
        raw = fcluster(tree, cut, criterion="maxclust")
        sizes = np.bincount(raw)
        big = np.flatnonzero(sizes >= min_size)
        if big.size >= n_clusters:
            return raw, big[np.argsort(-sizes[big], kind="stable")][:n_clusters]
        if sizes.max() < min_size:  # cutting further only shrinks clusters
            break
    raise ConfigError(f"no cut of the consensus tree has {n_clusters} clusters of at least {min_size} rows: the "
                      f"partitions hold fewer groups; lower n_clusters or min_cluster_fraction")
