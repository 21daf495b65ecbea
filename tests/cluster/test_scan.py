"""imgclust.cluster.scan: SCAN's loss by hand, neighbour mining, the fitted head and its vote, save/load, errors; and
``clusterer="scan"`` inside the deep methods."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import fashion_test_subset
from sklearn.metrics import adjusted_rand_score

from imgclust.cluster.scan import ScanClusterer, nearest_neighbours, scan_loss, whitening
from imgclust.deep.contrastive import ContrastiveClusterer
from imgclust.deep.methods import load_deep
from imgclust.estimator import Estimator, load_estimator
from imgclust.exceptions import ConfigError, NotFittedError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _directions(seed: int = 0, per: int = 150, dim: int = 8, spread: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Four groups of rows around four orthogonal directions (unit rows after normalisation)."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([np.eye(dim)[c] + spread * rng.standard_normal((per, dim)) for c in range(4)])
    return X.astype(np.float32), np.repeat(np.arange(4), per)


def test_scan_loss_by_hand() -> None:
    pa = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    pn = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    total, consistency, entropy = scan_loss(pa, pn, entropy_weight=2.0)
    # <p_i, p_N(i)> = 1 and 0.5: consistency = -(log 1 + log 0.5) / 2; mean assignment (0.75, 0.25)
    assert consistency.item() == pytest.approx(math.log(2) / 2)
    assert entropy.item() == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert total.item() == pytest.approx(math.log(2) / 2 - 2.0 * entropy.item())
    # disagreeing one-hot neighbours: the clamp keeps the loss finite (-log 1e-8)
    far, _, _ = scan_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), entropy_weight=0.0)
    assert far.item() == pytest.approx(-math.log(1e-8))


def test_nearest_neighbours_drop_the_row_itself() -> None:
    angles = np.array([0.0, 0.1, 0.25, 1.5, 1.6])
    rows = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    np.testing.assert_array_equal(nearest_neighbours(rows, 1)[:, 0], [1, 0, 1, 4, 3])
    # exact duplicates: each is the other's neighbour, never its own
    dup = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    nb = nearest_neighbours(dup, 2)
    assert nb[0, 0] == 1 and nb[1, 0] == 0 and all(i not in row for i, row in enumerate(nb))


def test_whitening_gives_identity_covariance_and_drops_empty_directions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("imgclust.cluster.scan._COV_CHUNK", 64)  # the covariance summed over several blocks
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 3)) @ np.array([[3.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 0.2, 0.1]]) + 7.0
    mean, W = whitening(X)
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-5)
    Z = (X - mean) @ W
    np.testing.assert_allclose(Z.T @ Z / len(X), np.eye(3), atol=1e-4)
    # a constant column (and a copy of another) carries no variance of its own: those directions are dropped
    flat = np.concatenate([X, np.full((500, 1), 2.0), X[:, :1]], axis=1)
    mean, W = whitening(flat)
    assert W.shape == (5, 3)
    Z = (flat - mean) @ W
    np.testing.assert_allclose(Z.T @ Z / len(flat), np.eye(3), atol=1e-4)
    # 40 rows of 64-d (4 groups): a covariance of 40 rows resolves 4 directions, not 39; whitening all of them
    # would put every row at the same distance from every other
    few = np.repeat(np.eye(64)[:4], 10, axis=0) + 0.05 * rng.standard_normal((40, 64))
    mean, W = whitening(few)
    assert W.shape == (64, 4)
    z = (few - mean) @ W
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    nb = nearest_neighbours(z.astype(np.float32), 5)
    assert (nb // 10 == np.arange(40)[:, None] // 10).mean() > 0.95  # neighbours stay in their group
    with pytest.raises(ConfigError, match="identical rows"):
        whitening(np.ones((5, 3)))
    with pytest.raises(ConfigError, match="at least 2"):
        whitening(np.ones((1, 3)))


def _nuisance(seed: int = 0, per: int = 150) -> tuple[np.ndarray, np.ndarray]:
    """Two groups told apart by one low-variance direction (the last dim: +-1, noise 0.1), hidden among four
    high-variance ones (std 5; the first shifted by 10, off the origin, so cosine sees them first)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(2), per)
    X = np.concatenate([5.0 * rng.standard_normal((2 * per, 4)),
                        (2.0 * y - 1.0 + 0.1 * rng.standard_normal(2 * per))[:, None]], axis=1)
    X[:, 0] += 10.0
    return X.astype(np.float32), y


def test_whitened_neighbours_see_the_low_variance_direction() -> None:
    X, y = _nuisance()
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    raw = nearest_neighbours(unit, 10)
    mean, W = whitening(unit)
    z = (unit - mean) @ W
    white = nearest_neighbours((z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32), 10)
    purity = [float((y[nb] == y[:, None]).mean()) for nb in (raw, white)]
    assert purity[1] > 0.93 and purity[0] < 0.75, purity


def _vote_by_hand(est: ScanClusterer, queries: np.ndarray, space: Any) -> np.ndarray:
    """The vote ``(n, C)`` over the ``n_neighbors + 1`` fitted rows nearest to ``queries`` in ``space(rows)``."""
    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    nb = np.argsort(-(space(unit(queries)) @ space(est.reference_.astype(np.float32)).T), axis=1)
    return est.reference_proba_.astype(np.float32)[nb[:, :est.n_neighbors + 1]].mean(axis=1)


def test_the_fit_and_the_vote_use_whitened_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    import imgclust.cluster.scan

    mined: list[np.ndarray] = []

    def spy(rows: np.ndarray, k: int, queries: np.ndarray | None = None) -> np.ndarray:
        mined.append(rows.copy())
        return nearest_neighbours(rows, k, queries)

    monkeypatch.setattr(imgclust.cluster.scan, "nearest_neighbours", spy)
    X, _ = _nuisance(seed=1)
    est = ScanClusterer(n_clusters=2, n_neighbors=10, heads=2, epochs=5, random_state=0, whiten=True).fit(X)
    unit_rows = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    assert len(mined) == 1  # the training neighbours were mined among the whitened rows
    np.testing.assert_allclose(mined[0], est._neighbour_space(unit_rows), atol=1e-6)
    assert np.abs(mined[0][:, :4] - unit_rows[:, :4]).max() > 0.1
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    mean, W = whitening(unit)
    np.testing.assert_allclose(est.mean_, mean, atol=1e-5)
    assert est.whitening_.shape == (5, 5)

    def whitened(rows: np.ndarray) -> np.ndarray:
        z = (rows - est.mean_) @ est.whitening_
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    proba = est.predict_proba(X)
    by_hand = _vote_by_hand(est, X, whitened)
    unwhitened = _vote_by_hand(est, X, lambda rows: rows)
    assert np.abs(proba - by_hand).mean() < 1e-3 < np.abs(proba - unwhitened).mean()
    np.testing.assert_array_equal(est.labels_, est.predict(X))
    raw = ScanClusterer(n_clusters=2, n_neighbors=10, heads=2, epochs=5, random_state=0).fit(X)  # default: as given
    assert raw.whitening_.shape == (5, 0)
    assert np.abs(raw.predict_proba(X) - _vote_by_hand(raw, X, lambda rows: rows)).mean() < 1e-3


def test_fit_recovers_directional_groups_and_predicts_its_labels() -> None:
    X, y = _directions()
    est = ScanClusterer(n_clusters=4, n_neighbors=10, heads=3, epochs=40, batch_size=128, lr=1e-2, random_state=0).fit(X)
    assert adjusted_rand_score(y, est.labels_) == 1.0
    assert len(est.head_losses_) == 3 and est.best_head_ == int(np.argmin(est.head_losses_))
    np.testing.assert_array_equal(est.predict(X), est.labels_)
    proba = est.predict_proba(X[:7])
    assert proba.shape == (7, 4) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-2)
    est.vote = False  # the head alone agrees on such clean groups
    assert adjusted_rand_score(y, est.predict(X)) == 1.0
    assert est.cluster_centers_.shape == (4, 8)
    # the rows' scale does not matter (they are normalised), new rows near a group join it
    np.testing.assert_array_equal(est.predict(X * 3.0), est.predict(X))
    again = ScanClusterer(n_clusters=4, n_neighbors=10, heads=3, epochs=40, batch_size=128, lr=1e-2, random_state=0).fit(X)
    np.testing.assert_array_equal(again.labels_, est.labels_)  # seeded


@pytest.mark.parametrize("whiten", [False, True])
def test_all_zero_rows_get_the_uniform_assignment(caplog: pytest.LogCaptureFixture, whiten: bool) -> None:
    X, y = _directions()
    zeros = X.copy()
    zeros[3] = 0.0
    est = ScanClusterer(n_clusters=4, n_neighbors=10, heads=3, epochs=40, batch_size=128, lr=1e-2,
                        whiten=whiten).fit(zeros)
    assert "1 of 600 rows are all zeros" in caplog.text
    assert not est._neighbour_space(np.zeros((1, 8), np.float32)).any()  # no direction, whitened or not
    proba = est.predict_proba(zeros[:5])
    np.testing.assert_allclose(proba[3], 0.25)
    keep = np.arange(600) != 3
    assert adjusted_rand_score(y[keep], est.labels_[keep]) == 1.0  # one row without direction harms no other


@pytest.mark.parametrize("whiten", [False, True])
def test_save_load_round_trip(tmp_path: Path, whiten: bool) -> None:
    X, _ = _directions(seed=1)
    est = ScanClusterer(n_clusters=4, n_neighbors=5, heads=2, epochs=10, fit_sample=400, random_state=2,
                        whiten=whiten).fit(X)
    assert est.reference_.shape == (400, 8) and est.reference_.dtype == np.float16 and est.n_samples_seen_ == 600
    est.save(tmp_path / "scan")
    loaded = load_estimator(tmp_path / "scan")
    assert isinstance(loaded, ScanClusterer) and loaded.whiten is whiten
    np.testing.assert_array_equal(loaded.whitening_, est.whitening_)
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    np.testing.assert_array_equal(loaded.labels_, est.labels_)


def test_a_model_saved_before_whitening_loads_unwhitened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    X, _ = _directions(seed=3)
    est = ScanClusterer(n_clusters=4, n_neighbors=5, heads=2, epochs=10, whiten=False).fit(X)
    assert est.whitening_.shape == (8, 0)
    assert ScanClusterer(n_clusters=2).whiten is False  # so an artifact without the parameter loads unwhitened
    with monkeypatch.context() as old:  # write the artifact as the version before `whiten` existed did
        old.setattr(ScanClusterer, "_array_attrs", ("weight_", "bias_", "reference_", "reference_proba_", "labels_"))
        old.setattr(ScanClusterer, "_param_names", classmethod(
            lambda cls: [n for n in Estimator._param_names.__func__(cls) if n != "whiten"]))  # type: ignore[attr-defined]
        est.save(tmp_path / "old")
    manifest = (tmp_path / "old" / "estimator.json").read_text()
    assert "whiten" not in manifest
    loaded = load_estimator(tmp_path / "old")
    assert isinstance(loaded, ScanClusterer) and loaded.whiten is False
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))


def test_errors_are_clear() -> None:
    X, _ = _directions()
    with pytest.raises(NotFittedError):
        ScanClusterer(n_clusters=4).predict(X)
    for bad, match in (({"n_neighbors": 0}, "n_neighbors"), ({"lr": 0.0}, "lr"), ({"vote": "yes"}, "vote"), ({"whiten": 1}, "whiten"),
                       ({"entropy_weight": -1.0}, "entropy_weight"), ({"n_clusters": 1}, "n_clusters")):
        with pytest.raises(ConfigError, match=match):
            ScanClusterer(**{"n_clusters": 4, **bad}).fit(X)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="more than 20 rows"):
        ScanClusterer(n_clusters=2).fit(X[:20])
    fitted = ScanClusterer(n_clusters=4, n_neighbors=5, heads=1, epochs=2).fit(X)
    with pytest.raises(ConfigError):
        fitted.predict(X[:, :5])


def test_simclr_with_the_scan_clusterer_fits_saves_and_loads(tmp_path: Path) -> None:
    x, _ = fashion_test_subset(200)
    with pytest.raises(ConfigError, match="umap_components=None"):
        ContrastiveClusterer(clusterer="scan").fit(x)  # UMAP's default 10 components: refused before training
    est = ContrastiveClusterer.with_training(n_clusters=4, width=4, epochs=1, batch_size=64, umap_components=None,
                                             clusterer="scan", device="cpu", seed=0).fit(x)
    assert est.scan_ is not None and est.gmm_ is None and est.kmeans_ is None
    assert est.scan_.whiten  # a learned representation: neighbours after whitening
    np.testing.assert_array_equal(est.labels_, est.predict(x))
    assert est.cluster_centers_.shape == (4, est.embed_dim_)
    est.save(tmp_path / "m")
    loaded = load_deep(tmp_path / "m")
    assert isinstance(loaded, ContrastiveClusterer) and isinstance(loaded.scan_, ScanClusterer)
    np.testing.assert_array_equal(loaded.predict(x), est.predict(x))
