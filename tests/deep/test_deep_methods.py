"""imgclust.deep.nnc and imgclust.deep.deepcluster: hand-checked losses, Otsu, re-seeding, fit / save / exact resume."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fashion_test_subset, requires_fashion
from helpers_deep import assert_same_network, fit_crash_resume

from imgclust.deep import AutoencoderClusterer, nnc
from imgclust.deep.deepcluster import DeepCluster, reseed_empty_clusters, uniform_label_weights
from imgclust.deep.nnc import NeighbourConsistency
from imgclust.exceptions import ConfigError, NotFittedError

pytestmark = pytest.mark.usefixtures("one_torch_thread")



# ----------------------------------------------------------------------------- pure losses


def test_nc_loss_by_hand() -> None:
    q = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]], dtype=torch.float64)
    q_nb = torch.tensor([[0.25, 0.5, 0.25], [0.2, 0.3, 0.5]], dtype=torch.float64)
    # row 0: (ln 2)² + (-ln 2)² + 0; row 1: identical to its neighbour -> 0; mean over the 2 rows
    assert math.isclose(float(nnc.nc_loss(q, q_nb)), math.log(2) ** 2, rel_tol=1e-12)
    assert float(nnc.nc_loss(q, q)) == 0.0
    with pytest.raises(ConfigError):
        nnc.nc_loss(q, q_nb[:1])


def _between_class_variance(v: np.ndarray, t: float) -> float:
    c0, c1 = v[v < t], v[v >= t]
    if c0.size == 0 or c1.size == 0:
        return -1.0
    return c0.size * c1.size * (c0.mean() - c1.mean()) ** 2 / v.size**2


def test_otsu_threshold_bimodal_and_degenerate() -> None:
    rng = np.random.default_rng(0)
    low, high = rng.normal(0.1, 0.01, 500), rng.normal(0.8, 0.02, 300)
    v = rng.permutation(np.concatenate([low, high]))
    t = nnc.otsu_threshold(v)
    assert low.max() < t <= high.min()
    assert nnc.otsu_threshold(torch.from_numpy(v).float()) == pytest.approx(t, abs=1e-6)  # tensors accepted
    assert nnc.otsu_threshold(np.full(7, 0.3)) == 0.3
    with pytest.raises(ConfigError):
        nnc.otsu_threshold(np.array([0.1, np.nan]))


def test_otsu_threshold_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    for trial in range(5):
        v = rng.random(1000) ** (1 + trial)  # skewed, no clear modes
        t = nnc.otsu_threshold(v)
        edges = np.linspace(v.min(), v.max(), 257)[1:-1]
        scores = np.array([_between_class_variance(v, e) for e in edges])
        assert _between_class_variance(v, t) == pytest.approx(scores.max(), rel=1e-12)  # same 256 bins, raw values
        u = np.unique(v)  # exact Otsu over every split of the sorted values: the bins lose almost nothing
        exact = max(_between_class_variance(v, s) for s in (u[:-1] + u[1:]) / 2)
        assert _between_class_variance(v, t) >= 0.995 * exact


def test_sample_stability_loss_matches_numpy() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(16, 5)) * 2
    q_np = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    lam = 0.8
    for t in (None, 0.3):
        tt = nnc.otsu_threshold(q_np) if t is None else t
        fq = np.where(q_np < tt, np.abs(q_np - tt) / tt, np.abs(q_np - tt) / (1 - tt))
        sq = fq.mean(1) - lam * ((fq - fq.mean(1, keepdims=True)) ** 2).mean(1)
        q = torch.tensor(q_np, requires_grad=True)
        loss = nnc.sample_stability_loss(q, lam, t=t)
        assert float(loss.detach()) == pytest.approx(1 - sq.mean(), rel=1e-10)
        loss.backward()
        assert q.grad is not None and torch.isfinite(q.grad).all()
    # fully certain rows are perfectly stable: fq = 1 everywhere, no variance -> loss 0
    assert float(nnc.sample_stability_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), t=0.5)) == 0.0
    assert nnc.stability_fq(torch.tensor([0.5]), 0.5).item() == 0.0


def test_balance_loss_by_hand() -> None:
    # uniform mean: float32 log k + sum of k terms p log p (their |.| sum to log k); u = 2**-24, gamma_{k-1} for the
    # sum, ~5u per term (mean, log, product), u for log k: |error| <= (k + 5) u log k; 1e-7 was under one ulp of log 5
    assert float(nnc.balance_loss(torch.full((4, 5), 0.2))) == pytest.approx(0.0, abs=(5 + 5) * 2**-24 * math.log(5))
    collapsed = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert float(nnc.balance_loss(collapsed)) == pytest.approx(math.log(3))  # everything in one cluster
    # two of three clusters used equally: log 3 - log 2
    assert float(nnc.balance_loss(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))) == pytest.approx(math.log(1.5))


def test_nearest_neighbours_excludes_self_even_with_duplicates() -> None:
    emb = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.1, 5.0]], dtype=np.float32)
    np.testing.assert_array_equal(nnc.nearest_neighbours(emb), [1, 0, 3, 2])


# ----------------------------------------------------------------------------- DeepCluster pieces


def test_reseed_empty_clusters_splits_the_largest() -> None:
    rng = np.random.default_rng(3)
    feats = np.concatenate([rng.normal(0, 1, (30, 2)), rng.normal(8, 0.5, (10, 2))]).astype(np.float32)
    labels = np.array([0] * 30 + [2] * 10)
    cents = np.array([feats[:30].mean(0), [100.0, 100.0], feats[30:].mean(0)], dtype=np.float32)
    new_labels, new_cents, n = reseed_empty_clusters(feats, labels, cents, rng=np.random.default_rng(0))
    counts = np.bincount(new_labels, minlength=3)
    assert n == 1 and (counts > 0).all() and counts[0] + counts[1] == 30
    np.testing.assert_array_equal(new_labels[30:], 2)  # other clusters untouched
    assert np.all(np.isin(np.flatnonzero(new_labels == 1), np.arange(30)))  # taken from the largest cluster
    assert np.linalg.norm(new_cents[1] - cents[0]) < 0.01 and np.allclose(new_cents[2], cents[2])
    assert labels[0] == 0 and cents[1, 0] == 100.0  # inputs not modified
    # degenerate: identical points cannot be split by a hyperplane -> half of them move
    same = np.zeros((6, 3), dtype=np.float32)
    lab, _, n = reseed_empty_clusters(same, np.zeros(6, dtype=np.int64), np.zeros((2, 3), dtype=np.float32),
                                      rng=np.random.default_rng(0))
    assert n == 1 and np.bincount(lab).tolist() == [3, 3]
    with pytest.raises(ConfigError):
        reseed_empty_clusters(same[:1], np.zeros(1, dtype=np.int64), np.zeros((2, 3)), rng=np.random.default_rng(0))


def test_uniform_label_weights_balance_pseudo_labels() -> None:
    labels = np.array([0] * 90 + [1] * 9 + [3])
    w = uniform_label_weights(labels, 4)
    per_label = np.bincount(labels, weights=w, minlength=4)
    np.testing.assert_allclose(per_label, [1 / 3, 1 / 3, 0, 1 / 3])


# ----------------------------------------------------------------------------- estimators on real images


@pytest.fixture(scope="module")
def fashion() -> tuple[np.ndarray, np.ndarray]:
    return fashion_test_subset(600)


@pytest.fixture(scope="module")
def pretrained_ae(fashion: tuple[np.ndarray, np.ndarray]) -> AutoencoderClusterer:
    return AutoencoderClusterer.with_training(arch="convae", n_clusters=10, epochs=1, batch_size=200, augment=False, kmeans_redo=1,
                                              device="cpu", seed=0).fit(fashion[0])


@requires_fashion
def test_nnc_fit_predict_save_load(tmp_path: Path, fashion: tuple[np.ndarray, np.ndarray],
                                   pretrained_ae: AutoencoderClusterer) -> None:
    x, _ = fashion
    with pytest.raises(ConfigError, match="not both"):
        NeighbourConsistency(pretrained=pretrained_ae, autoencoder={"epochs": 1}).fit(x)
    with pytest.raises(ConfigError):
        NeighbourConsistency(pretrained=pretrained_ae, alpha=0.0).fit(x)
    est = NeighbourConsistency.with_training(n_clusters=10, pretrained=pretrained_ae, max_iter=6, batch_size=100, knn_interval=3,
                                             kmeans_redo=1, device="cpu")
    with pytest.raises(NotFittedError):
        est.predict(x)
    assert est.fit(x) is est
    assert est.labels_.shape == (600,) and est.labels_.dtype == np.int64
    assert est.cluster_centers_.shape == (10, 10) and est.n_iter_ == 6
    assert [r["step"] for r in est.refreshes_] == [0, 3]
    q = est.predict_proba(x)
    assert q.shape == (600, 10) and np.allclose(q.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(est.predict(x), est.labels_)
    assert pretrained_ae.network_ is not est.network_
    est.save(tmp_path / "nnc")
    loaded = NeighbourConsistency.load(tmp_path / "nnc")
    assert loaded.pretrained is None and loaded.refreshes_ == est.refreshes_
    np.testing.assert_array_equal(loaded.predict(x), est.predict(x))
    np.testing.assert_array_equal(loaded.predict_proba(x), q)


@requires_fashion
def test_nnc_resume_is_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     fashion: tuple[np.ndarray, np.ndarray], pretrained_ae: AutoencoderClusterer) -> None:
    x = fashion[0][:200]  # 4 steps per epoch of 50; crash mid-epoch 2, after a neighbour refresh at step 4
    params = {"n_clusters": 10, "pretrained": pretrained_ae, "max_iter": 8, "batch_size": 50, "knn_interval": 4,
              "kmeans_redo": 1, "device": "cpu"}
    ref, res = fit_crash_resume(lambda **ckpt: NeighbourConsistency.with_training(**params, **ckpt),  # type: ignore[arg-type]
                                x, tmp_path, monkeypatch, crash_at=6, every=5)
    assert res.resumed_from_step_ == 5
    assert_same_network(ref, res)
    np.testing.assert_array_equal(ref.cluster_centers_, res.cluster_centers_)
    assert [h["loss"] for h in ref.history_] == [h["loss"] for h in res.history_]
    assert ref.refreshes_ == res.refreshes_


def _dc(**kw: object) -> DeepCluster:
    params = {"n_clusters": 10, "n_pseudo": 20, "embed_dim": 16, "pca_dim": 8, "epochs": 2, "batch_size": 100,
              "kmeans_redo": 1, "device": "cpu", "seed": 0, **kw}
    return DeepCluster.with_training(**params)  # type: ignore[arg-type]


@requires_fashion
def test_deepcluster_fit_predict_save_load(tmp_path: Path, fashion: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = fashion
    with pytest.raises(ConfigError):
        _dc(momentum=1.5).fit(x)
    est = _dc()
    assert est.fit(x) is est
    assert est.labels_.shape == (600,) and set(np.unique(est.labels_)) <= set(range(10))
    assert est.transform(x).shape == (600, 16) and est.cluster_centers_.shape == (10, 8)
    assert [a["epoch"] for a in est.assignments_] == [1, 2] and est.assignments_[1]["nmi_prev"] is not None
    assert all(a["smallest"] > 0 for a in est.assignments_) and est.n_pseudo_ == 20
    np.testing.assert_array_equal(est.predict(x), est.labels_)
    est.save(tmp_path / "dc")
    loaded = DeepCluster.load(tmp_path / "dc")
    np.testing.assert_array_equal(loaded.predict(x), est.predict(x))
    np.testing.assert_array_equal(loaded.cluster_features(x), est.cluster_features(x))
    assert loaded.assignments_ == est.assignments_


@requires_fashion
def test_deepcluster_resume_is_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             fashion: tuple[np.ndarray, np.ndarray]) -> None:
    x = fashion[0][:200]  # 4 steps per epoch; checkpoints once per epoch; crash mid-epoch 2
    ref, res = fit_crash_resume(lambda **ckpt: _dc(batch_size=50, **ckpt), x, tmp_path, monkeypatch, crash_at=6)
    assert res.resumed_from_step_ == 4
    assert_same_network(ref, res)
    assert [h["loss"] for h in ref.history_] == [h["loss"] for h in res.history_]
    assert ref.assignments_ == res.assignments_
    np.testing.assert_array_equal(ref.labels_, res.labels_)
