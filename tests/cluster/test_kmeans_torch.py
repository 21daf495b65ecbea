"""The torch k-means backend against faiss on the same real data, and its estimator contract."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, make_blobs

from imgclust.cluster.classic import FaissKMeans
from imgclust.cluster.kmeans_torch import TorchKMeans
from imgclust.config import ClusterConfig, Recipe, ReduceConfig
from imgclust.estimator import load_estimator
from imgclust.exceptions import ConfigError
from imgclust.models.model import fit_model
from imgclust.reduce.pca import ExactPCA


@pytest.fixture(scope="module")
def digits_pca() -> np.ndarray:
    X = load_digits().data.astype(np.float32)  # 1,797 real 8x8 digits
    return ExactPCA(n_components=20).fit_transform(X)


def test_same_init_gives_the_same_lloyd_solution_as_faiss(digits_pca: np.ndarray) -> None:
    init = digits_pca[np.random.default_rng(0).choice(len(digits_pca), 10, replace=False)]
    f = FaissKMeans(n_clusters=10, n_iter=20).fit(digits_pca, init_centroids=init)
    t = TorchKMeans(n_clusters=10, n_iter=20, device="cpu").fit(digits_pca, init_centroids=init)
    assert t.inertia_full_ == pytest.approx(f.inertia_full_, rel=1e-3)
    assert np.mean(t.predict(digits_pca) == f.predict(digits_pca)) > 0.99


def test_own_seeding_reaches_faiss_inertia_within_one_percent() -> None:
    X, _ = make_blobs(20_000, n_features=32, centers=50, cluster_std=2.0, random_state=3)
    X = X.astype(np.float32)
    f = FaissKMeans(n_clusters=50, n_redo=2, seed=1).fit(X)
    t = TorchKMeans(n_clusters=50, n_redo=2, seed=1, device="cpu").fit(X)
    assert abs(t.inertia_full_ - f.inertia_full_) / f.inertia_full_ < 0.01


def test_seeded_runs_are_reproducible_and_predict_matches_transform(digits_pca: np.ndarray) -> None:
    a = TorchKMeans(n_clusters=10, seed=4, device="cpu").fit(digits_pca)
    b = TorchKMeans(n_clusters=10, seed=4, device="cpu").fit(digits_pca)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    labels, dist = a.predict_with_distance(digits_pca)
    d = a.transform(digits_pca)
    np.testing.assert_array_equal(labels, d.argmin(axis=1))
    np.testing.assert_allclose(dist, d.min(axis=1), rtol=1e-3, atol=1e-2)


def test_empty_clusters_are_reseeded(digits_pca: np.ndarray) -> None:
    init = np.repeat(digits_pca[:1], 8, axis=0)  # 8 identical centroids: 7 would stay empty
    t = TorchKMeans(n_clusters=8, n_iter=5, device="cpu").fit(digits_pca, init_centroids=init)
    assert len(np.unique(t.predict(digits_pca))) == 8


def test_spherical_keeps_unit_centroids(digits_pca: np.ndarray) -> None:
    t = TorchKMeans(n_clusters=6, spherical=True, device="cpu").fit(digits_pca)
    np.testing.assert_allclose(np.linalg.norm(t.cluster_centers_, axis=1), 1.0, rtol=1e-5)


def test_save_load_through_the_registry(tmp_path: Path, digits_pca: np.ndarray) -> None:
    t = TorchKMeans(n_clusters=5, device="cpu").fit(digits_pca)
    t.save(tmp_path / "km")
    loaded = load_estimator(tmp_path / "km")
    assert isinstance(loaded, TorchKMeans)
    np.testing.assert_array_equal(loaded.predict(digits_pca), t.predict(digits_pca))


def test_model_uses_the_configured_backend(digits_pca: np.ndarray) -> None:
    model = fit_model(lambda: iter([digits_pca]), extractor_key="k",
                      recipe=Recipe(reduce=ReduceConfig(method="none"),
                                    cluster=ClusterConfig(k=10, backend="torch", device="cpu", n_redo=1)))
    assert isinstance(model.clusterer, TorchKMeans)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_a_gpu_is_a_clear_error(digits_pca: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        TorchKMeans(n_clusters=3, device="cuda").fit(digits_pca)


@pytest.mark.gpu
def test_gpu_matches_cpu(digits_pca: np.ndarray) -> None:
    init = digits_pca[:10]
    c = TorchKMeans(n_clusters=10, device="cpu").fit(digits_pca, init_centroids=init)
    g = TorchKMeans(n_clusters=10, device="cuda").fit(digits_pca, init_centroids=init)
    assert g.inertia_full_ == pytest.approx(c.inertia_full_, rel=1e-3)
