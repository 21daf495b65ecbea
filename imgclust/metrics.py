"""Clustering quality measures.

With ground-truth classes: clustering accuracy ACC (best one-to-one cluster→class mapping by the
Hungarian algorithm, Kuhn 1955; as used by DEC, Xie et al. 2016, ASCAE 2021 and Qian et al. 2025), normalised
mutual information NMI (Strehl & Ghosh 2002) and adjusted Rand index ARI (Hubert & Arabie 1985).
Without labels: silhouette (Rousseeuw 1987), Davies-Bouldin (Davies & Bouldin 1979), cluster
sizes and the noise fraction.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_rand_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)

from imgclust.exceptions import ConfigError
from imgclust.validation import check_array, check_int

logger = logging.getLogger(__name__)

__all__ = ["cluster_accuracy", "nmi", "ari", "supervised_metrics", "internal_metrics", "NOISE"]

NOISE = -1
"""Label of points that belong to no cluster (HDBSCAN noise, novel images)."""


def _check_labels(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.ndim != 1 or p.ndim != 1:
        raise ConfigError(f"labels must be 1-D arrays; got shapes {t.shape} and {p.shape}. Use .ravel()")
    if t.shape[0] != p.shape[0]:
        raise ConfigError(f"y_true has {t.shape[0]} labels and y_pred {p.shape[0]}; they must describe "
                          "the same samples in the same order")
    if t.shape[0] == 0:
        raise ConfigError("cannot score an empty labelling; pass at least one sample")
    return t, p


def cluster_accuracy(y_true: Any, y_pred: Any) -> float:
    """Clustering accuracy: the fraction of samples correct under the best one-to-one mapping.

    ``ACC = max_m (1/n) Σ_i 1[y_true_i = m(y_pred_i)]`` over injective maps ``m`` from clusters to
    classes, solved with the Hungarian algorithm on the ``(clusters, classes)`` contingency table.
    The numbers of clusters and classes may differ: surplus clusters map to no class and count as
    wrong. Nothing is ignored: a noise label ``-1`` is treated as one more cluster.

    Parameters: ``y_true`` ``(n,)`` class labels, ``y_pred`` ``(n,)`` cluster labels (any hashables).
    """
    t, p = _check_labels(y_true, y_pred)
    _, t_idx = np.unique(t, return_inverse=True)
    _, p_idx = np.unique(p, return_inverse=True)
    table = np.zeros((p_idx.max() + 1, t_idx.max() + 1), dtype=np.int64)
    np.add.at(table, (p_idx, t_idx), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / t.shape[0])


def nmi(y_true: Any, y_pred: Any) -> float:
    """Normalised mutual information ``(n,)`` vs ``(n,)`` (arithmetic-mean normalisation, sklearn)."""
    t, p = _check_labels(y_true, y_pred)
    return float(normalized_mutual_info_score(t, p))


def ari(y_true: Any, y_pred: Any) -> float:
    """Adjusted Rand index ``(n,)`` vs ``(n,)`` (sklearn); 0 for chance, 1 for identical partitions."""
    t, p = _check_labels(y_true, y_pred)
    return float(adjusted_rand_score(t, p))


def supervised_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """``{"acc", "nmi", "ari"}`` for class labels ``(n,)`` and cluster labels ``(n,)``."""
    return {"acc": cluster_accuracy(y_true, y_pred), "nmi": nmi(y_true, y_pred), "ari": ari(y_true, y_pred)}


def internal_metrics(X: Any, labels: Any, *, sample_size: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Label-free quality of a clustering of ``X`` ``(n, D)`` with ``labels`` ``(n,)``.

    Noise rows (label ``-1``) are excluded from silhouette and Davies-Bouldin. Silhouette is
    ``O(m^2)``, so it is computed on a seeded uniform sample of at most ``sample_size`` non-noise
    rows; Davies-Bouldin is linear and uses every non-noise row. With fewer than two clusters
    (or a sample holding one), or as many clusters as rows, they are NaN and a warning is logged.

    Returns ``silhouette`` (float), ``davies_bouldin`` (float), ``n_clusters`` (int, without
    noise), ``noise_fraction`` (float), ``cluster_sizes`` (dict label -> count, noise included, so
    the counts sum to ``n``).
    """
    X = check_array(X)
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != X.shape[0]:
        raise ConfigError(f"labels must have shape ({X.shape[0]},) to match X; got {lab.shape}")
    if X.shape[0] == 0:
        raise ConfigError("cannot score an empty clustering; pass at least one row")
    check_int("sample_size", sample_size, minimum=2)
    ids, counts = np.unique(lab, return_counts=True)
    keep = lab != NOISE
    n_clusters = int(np.count_nonzero(ids != NOISE))
    out: dict[str, Any] = {
        "silhouette": float("nan"),
        "davies_bouldin": float("nan"),
        "n_clusters": n_clusters,
        "noise_fraction": float(1.0 - keep.mean()),
        "cluster_sizes": {_plain(i): int(c) for i, c in zip(ids, counts, strict=True)},
    }
    Xc, lc = X[keep], lab[keep]
    if n_clusters < 2:
        logger.warning("internal_metrics: %d cluster(s) besides noise; silhouette and Davies-Bouldin "
                       "need at least 2, reporting NaN", n_clusters)
        return out
    if n_clusters < Xc.shape[0]:
        out["davies_bouldin"] = float(davies_bouldin_score(Xc, lc))
    else:  # every row its own cluster (a corpus of k images): no within-cluster spread to compare
        logger.warning("internal_metrics: %d clusters over %d rows; Davies-Bouldin needs fewer clusters than "
                       "rows, reporting NaN", n_clusters, Xc.shape[0])
    rng = np.random.default_rng(seed)
    if Xc.shape[0] > sample_size:
        idx = np.sort(rng.choice(Xc.shape[0], size=sample_size, replace=False))
        Xs, ls = Xc[idx], lc[idx]
    else:
        Xs, ls = Xc, lc
    n_in_sample = np.unique(ls).size
    if 2 <= n_in_sample <= Xs.shape[0] - 1:
        out["silhouette"] = float(silhouette_score(Xs, ls))
    else:
        logger.warning("internal_metrics: the silhouette sample of %d rows holds %d clusters (needs 2 to "
                       "n-1); reporting NaN. Raise sample_size", Xs.shape[0], n_in_sample)
    return out


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
