"""Consensus of several partitions by evidence accumulation (Fred & Jain, TPAMI 2005).

Fred & Jain, "Combining Multiple Clusterings Using Evidence Accumulation", IEEE TPAMI 27(6), 2005:
run a clusterer several times (other seeds, other views of the data), count for every pair of
points the fraction of runs that put them in the same cluster (the *co-association* matrix), and
cut an average-linkage tree of ``1 - co-association`` into the final ``k`` clusters. Pairs that
every run separates or joins decide the result; the arbitrary splits a single run makes inside a
large blob (on Fashion-MNIST: which of shirt / T-shirt / pullover / coat a GMM component takes)
disagree between runs and are outvoted.

Cost: the co-association matrix is dense, ``n x n`` float32, so this is for the fitted sample of a
model (10-20k rows), not for a whole corpus; :func:`consensus_labels` refuses more than
``max_rows`` rows with a message instead of running the machine out of memory.
"""
from __future__ import annotations

import logging

import numpy as np

from imgclust.exceptions import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["co_association", "consensus_labels", "MAX_CONSENSUS_ROWS"]

MAX_CONSENSUS_ROWS = 20000
"""Default row cap: the matrix plus scikit-learn's condensed float64 copy need ~5 GB at 20k rows."""


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


def consensus_labels(partitions: np.ndarray, n_clusters: int, *, max_rows: int = MAX_CONSENSUS_ROWS) -> np.ndarray:
    """Evidence-accumulation consensus: average-linkage tree on ``1 - co_association`` cut at ``n_clusters``.

    Args:
        partitions: ``(n, m)`` int labels (see :func:`co_association`).
        n_clusters: clusters of the result, ``1 <= n_clusters <= n``.
        max_rows: refuse larger ``n`` (dense ``n x n`` matrix); cluster a sample instead.

    Returns:
        ``(n,)`` int64 labels ``0..n_clusters-1``, numbered by decreasing cluster size (ties by
        first row), so equal inputs give equal label values.
    """
    from sklearn.cluster import AgglomerativeClustering

    p = _check_partitions(partitions)
    n = p.shape[0]
    if n > max_rows:
        raise ConfigError(f"consensus over {n} rows needs a dense {n}x{n} matrix; the cap is {max_rows} "
                          "(max_rows): run it on a sample of the rows")
    if not 1 <= n_clusters <= n:
        raise ConfigError(f"n_clusters must be in [1, {n}], got {n_clusters}")
    dist = 1.0 - co_association(p)
    raw = AgglomerativeClustering(n_clusters=n_clusters, metric="precomputed", linkage="average").fit_predict(dist)
    sizes = np.bincount(raw, minlength=n_clusters)
    first = np.array([np.flatnonzero(raw == c)[0] for c in range(n_clusters)])
    order = np.lexsort((first, -sizes))  # largest first, ties by first row
    relabel = np.empty(n_clusters, dtype=np.int64)
    relabel[order] = np.arange(n_clusters)
    labels = relabel[raw]
    logger.info("consensus of %d partitions over %d rows -> %d clusters (sizes %s)", p.shape[1], n, n_clusters,
                np.bincount(labels).tolist())
    return labels
