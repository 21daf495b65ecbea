"""GaussianMixtureClusterer against scikit-learn's GaussianMixture, save/load, errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from imgclust.cluster.classic import FaissKMeans
from imgclust.cluster.gmm import GaussianMixtureClusterer
from imgclust.estimator import load_estimator
from imgclust.exceptions import ConfigError, NotFittedError


def _unequal(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One wide cluster (std 3) between two tight ones (std 0.3) 5.5 away: k-means' equal Voronoi cells
    give the wide cluster's flanks to the tight ones; a mixture with per-component covariances does not."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.standard_normal((600, 2)) * 3.0, rng.standard_normal((300, 2)) * 0.3 + [5.5, 0.0],
                        rng.standard_normal((300, 2)) * 0.3 - [5.5, 0.0]])
    return X.astype(np.float32), np.repeat([0, 1, 2], [600, 300, 300])


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_matches_sklearn_posteriors(cov: str) -> None:
    X, _ = _unequal()
    ours = GaussianMixtureClusterer(n_clusters=3, covariance_type=cov, fit_sample=None, random_state=3).fit(X)
    ref = GaussianMixture(3, covariance_type=cov, random_state=3).fit(X.astype(np.float64))
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X.astype(np.float64)), atol=1e-8)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X.astype(np.float64)))
    assert ours.cluster_centers_.shape == (3, 2) and ours.cluster_centers_.dtype == np.float32
    np.testing.assert_allclose(ours.predict_proba(X[:5]).sum(axis=1), 1.0)


def test_recovers_unequal_spreads_that_kmeans_cuts() -> None:
    X, y = _unequal()
    gmm = GaussianMixtureClusterer(n_clusters=3, fit_sample=None).fit(X).predict(X)
    km = FaissKMeans(n_clusters=3, n_redo=5, max_points_per_centroid=1000).fit(X).predict(X)
    assert adjusted_rand_score(y, gmm) > 0.95
    assert adjusted_rand_score(y, km) < 0.5


def test_save_load_round_trip_and_sampled_fit(tmp_path: Path) -> None:
    X, _ = _unequal(1)
    est = GaussianMixtureClusterer(n_clusters=3, fit_sample=600, random_state=0).fit(X)
    assert est.n_train_samples_ == 600 and est.n_samples_seen_ == 1200
    est.save(tmp_path / "gmm")
    loaded = load_estimator(tmp_path / "gmm")
    assert isinstance(loaded, GaussianMixtureClusterer)
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    assert loaded.get_params() == est.get_params() and loaded.converged_ == est.converged_


def test_errors_are_clear() -> None:
    X, _ = _unequal()
    with pytest.raises(NotFittedError):
        GaussianMixtureClusterer(n_clusters=3).predict(X)
    with pytest.raises(ConfigError, match="covariance_type"):
        GaussianMixtureClusterer(n_clusters=3, covariance_type="tied").fit(X)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least 10 rows"):
        GaussianMixtureClusterer(n_clusters=10).fit(X[:5])
    est = GaussianMixtureClusterer(n_clusters=3).fit(X)
    with pytest.raises(ConfigError):
        est.predict(np.zeros((2, 3), dtype=np.float32))


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_consensus_mixture_is_the_m_step_of_the_consensus_partition(cov: str, tmp_path: Path) -> None:
    """consensus_runs=R: labels are the evidence-accumulation consensus of R single EM runs (seeds
    0..R-1), and the mixture's parameters are that partition's weights, means and covariances."""
    from imgclust.cluster.consensus import consensus_labels

    X, y = _unequal(2)
    runs = [GaussianMixtureClusterer(n_clusters=3, covariance_type=cov, fit_sample=None, random_state=s).fit(X)
            for s in range(4)]
    labels = consensus_labels(np.stack([r.predict(X) for r in runs], axis=1), 3)
    est = GaussianMixtureClusterer(n_clusters=3, covariance_type=cov, fit_sample=None, consensus_runs=4).fit(X)
    X64 = X.astype(np.float64)
    for j in range(3):
        rows = X64[labels == j]
        np.testing.assert_allclose(est.weights_[j], len(rows) / len(X))
        np.testing.assert_allclose(est.means_[j], rows.mean(axis=0))
        cov_j = np.cov(rows.T, bias=True) + 1e-6 * np.eye(2)
        if cov == "full":
            p = est.precisions_cholesky_[j]
            np.testing.assert_allclose(np.linalg.inv(p @ p.T), cov_j, rtol=1e-8)
        else:
            np.testing.assert_allclose(est.precisions_cholesky_[j] ** -2, np.diag(cov_j), rtol=1e-8)
    assert np.mean(est.predict(X) == labels) > 0.95
    assert adjusted_rand_score(y, est.predict(X)) > 0.9
    assert est.n_iter_ == sum(r.n_iter_ for r in runs)
    est.save(tmp_path / "c")
    loaded = load_estimator(tmp_path / "c")
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    assert loaded.get_params()["consensus_runs"] == 4
    with pytest.raises(ConfigError, match="consensus_runs"):
        GaussianMixtureClusterer(n_clusters=3, consensus_runs=0).fit(X)


def test_fit_labels_is_one_m_step_from_given_labels() -> None:
    """fit_labels: the mixture of a partition found elsewhere (the multi-view consensus): its weights and
    means are the labelled clusters'; its prediction returns the labels of well-separated groups."""
    X, y = _unequal(5)
    est = GaussianMixtureClusterer(n_clusters=3).fit_labels(X, y)
    for j in range(3):
        np.testing.assert_allclose(est.means_[j], X[y == j].astype(np.float64).mean(axis=0))
        np.testing.assert_allclose(est.weights_[j], np.mean(y == j))
    assert adjusted_rand_score(y, est.predict(X)) > 0.9
    with pytest.raises(ConfigError, match="at least 2 rows"):
        GaussianMixtureClusterer(n_clusters=4).fit_labels(X, y)  # cluster 3 is empty
    with pytest.raises(ConfigError, match="labels"):
        GaussianMixtureClusterer(n_clusters=3).fit_labels(X, y[:-1])
