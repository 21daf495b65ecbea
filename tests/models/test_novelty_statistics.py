"""Novelty on statistics stored after the representation (the ``deep:`` extractor's layout): the ``mahalanobis``
score, and a model that clusters the representation columns and scores novelty on the rest."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import requires_fashion

from imgclust.config import ClusterConfig, Recipe, ReduceConfig
from imgclust.data.datasets import load_fashion_mnist
from imgclust.estimator import load_estimator
from imgclust.exceptions import ConfigError
from imgclust.io.features import embeddings_table, feature_layout, feature_path, iter_feature_batches
from imgclust.io.store import Store
from imgclust.models.model import ClusterModel, fit_model
from imgclust.models.novelty import NoveltyScorer, kind_for

HELD_OUT = (8, 9)  # bag, ankle boot


def test_mahalanobis_score_is_the_shrunk_covariance_distance(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(6, 6)) * np.array([3.0, 1.0, 0.5, 0.2, 0.1, 0.01])
    X = (rng.normal(size=(3_000, 6)) @ mix + 5.0).astype(np.float32)
    scorer = NoveltyScorer(kind="mahalanobis", residual=False, n_reference=2_000, n_calibration=1_000,
                           shrinkage=0.01, seed=0).fit(X)
    ref = scorer.reference_.astype(np.float64)
    cov = np.cov(ref, rowvar=False)
    cov += 0.01 * np.trace(cov) / 6 * np.eye(6)
    q = X[:50].astype(np.float64) - ref.mean(axis=0)
    expected = np.sqrt(np.einsum("ij,jk,ik->i", q, np.linalg.inv(cov), q))
    np.testing.assert_allclose(scorer.score(X[:50]), expected, rtol=1e-4)
    # the candidates' space: the whitened coordinates on the leading principal axes (all six: the score's norm)
    np.testing.assert_allclose(np.linalg.norm(scorer.space(X[:50]), axis=1), scorer.score(X[:50]), rtol=1e-5)
    top2 = NoveltyScorer(kind="mahalanobis", residual=False, n_reference=2_000, n_calibration=1_000,
                         shrinkage=0.01, n_components=2, seed=0).fit(X)
    z = top2.space(X)
    assert z.shape == (3_000, 2) and np.all(np.abs(z.std(axis=0) - 1.0) < 0.05)  # unit variance on each axis
    np.testing.assert_array_equal(top2.score(X[:50]), scorer.score(X[:50]))
    assert scorer.describe() == {"score": "mahalanobis", "rate": 0.05, "threshold": scorer.threshold_,
                                 "n_reference": 2_000, "n_calibration": 1_000, "shrinkage": 0.01, "n_features": 6}
    scorer.save(tmp_path / "novelty")
    loaded = load_estimator(tmp_path / "novelty")
    np.testing.assert_array_equal(loaded.score(X[:50]), scorer.score(X[:50]))
    assert kind_for(None, statistics=True) == ("mahalanobis", False)


@pytest.mark.parametrize(("params", "match"), [({"residual": True}, "residual=True is for kind='knn'"),
                                               ({"residual": False, "shrinkage": 0.0}, "shrinkage must be in"),
                                               ({"residual": False, "shrinkage": "big"}, "shrinkage must be in")])
def test_bad_mahalanobis_parameters_are_refused(params: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        NoveltyScorer(kind="mahalanobis", **params).fit(np.zeros((100, 4), np.float32))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def features() -> dict[str, np.ndarray]:
    """Rows laid out as the ``deep:`` extractor stores them: 20 representation columns (PCA of the pixels) then
    16 statistic columns (per-row mean and spread of the pixels of 8 horizontal bands of the image), for 4,000
    fitted known-class images, 2,000 fresh known-class and 1,000 held-out ones (Fashion-MNIST train)."""
    from sklearn.decomposition import PCA

    x, y = load_fashion_mnist("train")
    rng = np.random.default_rng(5)
    known = rng.permutation(np.flatnonzero(~np.isin(y, HELD_OUT)))
    new = rng.choice(np.flatnonzero(np.isin(y, HELD_OUT)), 1_000, replace=False)
    idx = np.r_[known[:6_000], new]
    px = x[idx].astype(np.float32) / 255.0
    rep = PCA(n_components=20, random_state=0).fit(px[:4_000].reshape(-1, 784)[:, :]).transform(px.reshape(-1, 784))
    bands = px[:, :24].reshape(len(px), 8, 3 * 28)
    rows = np.concatenate([rep, bands.mean(axis=2), bands.std(axis=2)], axis=1).astype(np.float32)
    return {"fit": rows[:4_000], "fresh": rows[4_000:6_000], "new": rows[6_000:]}


@requires_fashion
def test_model_clusters_the_representation_and_scores_the_statistics(features: dict[str, np.ndarray],
                                                                       tmp_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    recipe = Recipe(reduce=ReduceConfig(n_components=10), cluster=ClusterConfig(k=6, seed=0, novelty_references=2_500,
                                                                               novelty_calibration=1_500))
    split = fit_model(features["fit"], extractor_key="deep-test", recipe=recipe, representation_dim=20)
    alone = fit_model(features["fit"][:, :20], extractor_key="deep-test", recipe=recipe)
    assert split.representation_dim == 20 and alone.representation_dim is None
    assert split.reducer is not None and split.reducer.n_features_in_ == 20  # the statistics are not reduced
    np.testing.assert_allclose(split.centroids, alone.centroids, rtol=1e-5, atol=1e-5)
    assert split.meta["novelty"]["score"] == "mahalanobis" and split.meta["novelty"]["n_features"] == 16
    assert alone.meta["novelty"]["score"] == "knn-residual"
    known, new = split.assign(features["fresh"]), split.assign(features["new"])
    np.testing.assert_array_equal(known.raw, alone.assign(features["fresh"][:, :20]).raw)
    auroc = roc_auc_score(np.r_[np.zeros(len(known.raw)), np.ones(len(new.raw))],
                          np.r_[known.novelty_score, new.novelty_score])
    assert auroc > 0.85, auroc  # the statistics alone see the held-out bags and boots
    assert abs(float(known.is_novel.mean()) - 0.05) < 0.03
    store = Store(tmp_path / "store")
    split.save(store)
    loaded = ClusterModel.load(store, split.model_id)
    assert loaded.representation_dim == 20
    np.testing.assert_array_equal(loaded.assign(features["new"]).novelty_score, new.novelty_score)
    with pytest.raises(ConfigError, match="fitted on 20-column features .* Refit on the new features"):
        alone.assign(features["new"])  # a model from before the statistics meets the extractor's wider rows
    with pytest.raises(ConfigError, match="representation_dim=40 must be in 1..36"):
        fit_model(features["fit"], extractor_key="deep-test", recipe=recipe, representation_dim=40)


def test_feature_shards_say_where_the_statistics_start(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    X = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    ids = [f"i{j}" for j in range(5)]
    store.write_parquet(feature_path("deep-x", "s0"), embeddings_table(ids, X, {"representation_dim": "4"}))
    store.write_parquet(feature_path("plain", "s0"), embeddings_table(ids, X, {"dim": "6"}))
    assert feature_layout(store, "deep-x", "s0") == (6, 4) and feature_layout(store, "plain", "s0") == (6, 6)
    (_, full), = iter_feature_batches(store, "deep-x", ["s0"])
    (got, rep), = iter_feature_batches(store, "deep-x", ["s0"], representation=True)
    (_, plain), = iter_feature_batches(store, "plain", ["s0"], representation=True)
    np.testing.assert_array_equal(full, X)
    assert got == ids and rep.flags.c_contiguous
    np.testing.assert_array_equal(rep, X[:, :4])
    np.testing.assert_array_equal(plain, X)  # shards written before the metadata: every column
