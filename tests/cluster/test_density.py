"""imgclust.cluster.density: the k-free HDBSCAN rule (issue 24)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from imgclust.cluster.density import (
    EPSILON_CORE_RATIO,
    MIN_ROWS,
    HDBSCANParams,
    core_distance_scale,
    hdbscan_params,
    params_for,
)
from imgclust.exceptions import ConfigError

hdbscan = pytest.importorskip("hdbscan")


def _blobs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Five well separated 10-d Gaussian blobs of 50..2000 rows and different spreads, plus 100 uniform
    background rows labelled -1: ``(3370, 10)`` float64 and ``(3370,)`` labels."""
    rng = np.random.default_rng(seed)
    sizes, spreads = (50, 120, 300, 800, 2000), (0.5, 1.0, 0.8, 1.5, 1.2)
    centers = rng.uniform(-20, 20, (len(sizes), 10))
    X = np.concatenate([c + s * rng.standard_normal((n, 10)) for c, n, s in zip(centers, sizes, spreads, strict=True)])
    y = np.repeat(np.arange(len(sizes)), sizes)
    return np.concatenate([X, rng.uniform(-25, 25, (100, 10))]), np.concatenate([y, np.full(100, -1)])


@pytest.mark.parametrize("n_rows", [MIN_ROWS, 11, 50, 499, 500, 1_797, 10_000, 50_000, 1_000_000])
def test_params_are_valid_hdbscan_parameters(n_rows: int) -> None:
    p = hdbscan_params(n_rows, 10, 0.1)
    assert isinstance(p.min_cluster_size, int) and 2 <= p.min_cluster_size <= max(2, n_rows // 2)
    assert isinstance(p.min_samples, int) and 1 <= p.min_samples <= p.min_cluster_size
    assert p.cluster_selection_method in ("eom", "leaf")
    assert type(p.cluster_selection_epsilon) is float and p.cluster_selection_epsilon >= 0  # hdbscan wants float
    assert p.umap_min_dist >= 0 and p.umap_neighbors >= 2
    if n_rows >= 10_000:
        assert p.min_cluster_size == round(0.01 * n_rows)  # a share of the rows, not a fixed count
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.min_samples = 3  # type: ignore[misc]


def test_hdbscan_accepts_the_params_on_tiny_input() -> None:
    X = np.random.default_rng(0).standard_normal((MIN_ROWS, 3))
    labels = hdbscan.HDBSCAN(**params_for(X).as_kwargs()).fit(X).labels_
    assert labels.shape == (MIN_ROWS,)


def test_epsilon_follows_the_density_scale() -> None:
    X, _ = _blobs(0)
    s = core_distance_scale(X)
    assert params_for(X).cluster_selection_epsilon == pytest.approx(EPSILON_CORE_RATIO * s)
    # the same points 3x further apart: 3x the scale and the epsilon, same clusters
    assert core_distance_scale(3 * X) == pytest.approx(3 * s, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blobs_of_different_sizes_are_found_with_little_noise(seed: int) -> None:
    X, y = _blobs(seed)
    p = params_for(X)
    labels = hdbscan.HDBSCAN(**p.as_kwargs()).fit(X).labels_
    blob = y >= 0
    assert labels.max() + 1 == 5  # the smallest blob (50 rows) is above min_cluster_size (34) and found
    assert np.mean(labels[blob] < 0) <= 0.02  # blob rows are clustered, not noise
    assert np.mean(labels < 0) <= 0.05
    # every blob is one cluster: each blob's rows share one label, and labels are not shared across blobs
    majority = [np.bincount(labels[blob & (y == b)] + 1).argmax() - 1 for b in range(5)]
    assert len(set(majority)) == 5 and -1 not in majority


@pytest.mark.slow
def test_digits_umap_gives_roughly_the_classes() -> None:
    """Real data: scikit-learn digits -> PCA 30 -> UMAP(10, min_dist 0) -> HDBSCAN with the rule (~20 s)."""
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    from imgclust.metrics import nmi
    from imgclust.reduce.streaming import UMAPReducer

    X, y = load_digits(return_X_y=True)
    P = PCA(30, random_state=0).fit_transform(X / 16.0)
    Z = UMAPReducer(n_components=10, n_neighbors=15, min_dist=0.0, random_state=0, fit_sample=None).fit(P).embedding_
    labels = hdbscan.HDBSCAN(**params_for(Z).as_kwargs()).fit(Z).labels_
    assert 8 <= labels.max() + 1 <= 20
    assert np.mean(labels < 0) <= 0.10
    assert nmi(y, labels) >= 0.80


@pytest.mark.parametrize(("n_rows", "n_dims", "scale"), [
    (MIN_ROWS - 1, 10, 0.1), (0, 10, 0.1), (100, 0, 0.1), (100, 10, 0.0), (100, 10, -1.0),
    (100, 10, float("nan")), (100, 10, float("inf")), (100.0, 10, 0.1), (True, 10, 0.1), (100, "10", 0.1),
])
def test_bad_input_raises_config_error(n_rows: object, n_dims: object, scale: float) -> None:
    with pytest.raises(ConfigError):
        hdbscan_params(n_rows, n_dims, scale)  # type: ignore[arg-type]


def test_bad_arrays_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="at least"):
        params_for(np.zeros((MIN_ROWS - 1, 2)))
    with pytest.raises(ConfigError, match="2-D"):
        params_for(np.zeros(50))
    with pytest.raises(ConfigError, match="NaN"):
        core_distance_scale(np.full((50, 2), np.nan))
    with pytest.raises(ConfigError, match="duplicates"):
        core_distance_scale(np.zeros((50, 2)))
    with pytest.raises(ConfigError, match="more than"):
        core_distance_scale(np.zeros((5, 2)), 5)


def test_params_dataclass_kwargs() -> None:
    p = HDBSCANParams(min_cluster_size=10, min_samples=5, cluster_selection_method="leaf",
                      cluster_selection_epsilon=0.5)
    assert p.as_kwargs() == {"min_cluster_size": 10, "min_samples": 5, "cluster_selection_method": "leaf",
                             "cluster_selection_epsilon": 0.5}
