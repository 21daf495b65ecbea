"""ACC / NMI / ARI on hand-checked examples; internal metrics with noise labels."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import davies_bouldin_score, silhouette_score

from imgclust.exceptions import ConfigError
from imgclust.metrics import ari, cluster_accuracy, internal_metrics, nmi, supervised_metrics


def test_permuted_labelling_is_perfect() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, size=200)
    perm = np.array([3, 0, 4, 1, 2])
    assert cluster_accuracy(y, perm[y]) == 1.0
    assert supervised_metrics(y, perm[y] + 10) == pytest.approx({"acc": 1.0, "nmi": 1.0, "ari": 1.0})


def test_hand_computed_accuracy() -> None:
    # clusters x classes table: c0 -> (2, 0), c1 -> (1, 1), c2 -> (0, 2); best map c0->0, c2->1: 4/6
    assert cluster_accuracy([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(4 / 6)
    # one cluster can map to only one class (one-to-one), even with string class labels
    assert cluster_accuracy(["a", "a", "b", "b"], [7, 7, 7, 7]) == pytest.approx(0.5)


def test_unequal_numbers_of_clusters_and_classes() -> None:
    assert cluster_accuracy([0, 0, 1, 1], [0, 1, 2, 3]) == pytest.approx(0.5)  # more clusters
    assert cluster_accuracy([0, 1, 2, 2], [0, 0, 0, 0]) == pytest.approx(0.5)  # fewer clusters
    # noise (-1) is an ordinary cluster: it may take a class, nothing is dropped from n
    assert cluster_accuracy([0, 0, 1, 1, 2], [-1, -1, 5, 5, 5]) == pytest.approx(4 / 5)


def test_label_validation() -> None:
    with pytest.raises(ConfigError, match="same samples"):
        cluster_accuracy([0, 1], [0, 1, 2])
    with pytest.raises(ConfigError, match="1-D"):
        nmi(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="empty"):
        ari([], [])


def test_nmi_ari_partial_agreement() -> None:
    y, p = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    assert 0.0 < nmi(y, p) < 1.0 and ari(y, p) < 1.0


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_blobs(n_samples=600, n_features=5, centers=3, random_state=4)
    labels = y.copy()
    labels[::10] = -1  # 60 noise points
    return X.astype(np.float32), labels


def test_internal_metrics_exclude_noise(clustered) -> None:
    X, labels = clustered
    out = internal_metrics(X, labels, sample_size=10000)
    keep = labels != -1
    assert out["n_clusters"] == 3
    assert out["noise_fraction"] == pytest.approx(0.1)
    assert out["cluster_sizes"][-1] == 60 and sum(out["cluster_sizes"].values()) == 600
    assert out["silhouette"] == pytest.approx(silhouette_score(X[keep], labels[keep]), rel=1e-5)
    assert out["davies_bouldin"] == pytest.approx(davies_bouldin_score(X[keep], labels[keep]), rel=1e-5)


def test_internal_metrics_sampled_silhouette_is_seeded(clustered) -> None:
    X, labels = clustered
    a = internal_metrics(X, labels, sample_size=200, seed=1)
    b = internal_metrics(X, labels, sample_size=200, seed=1)
    assert a == b
    full = internal_metrics(X, labels)["silhouette"]
    assert abs(a["silhouette"] - full) < 0.05


def test_fewer_than_two_clusters_gives_nan_and_warns(clustered, caplog: pytest.LogCaptureFixture) -> None:
    X, _ = clustered
    labels = np.where(np.arange(600) % 2 == 0, 0, -1)
    with caplog.at_level(logging.WARNING, logger="imgclust.metrics"):
        out = internal_metrics(X, labels)
    assert math.isnan(out["silhouette"]) and math.isnan(out["davies_bouldin"])
    assert out["n_clusters"] == 1 and out["noise_fraction"] == pytest.approx(0.5)
    assert "at least 2" in caplog.text
    with pytest.raises(ConfigError, match="shape"):
        internal_metrics(X, labels[:10])
