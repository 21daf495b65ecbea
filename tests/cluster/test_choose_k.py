"""choose_k: the k sweep behind ``--k auto`` (imgclust.cluster.choose_k)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from imgclust.cluster.choose_k import KSweep, apply_rule, choose_k, default_k_max
from imgclust.exceptions import ConfigError


def blobs(k: int, *, n_per: int = 150, d: int = 6, seed: int = 0) -> np.ndarray:
    """``k`` well-separated isotropic Gaussian blobs ``(k * n_per, d)`` float32 (centres >= 12 sd apart)."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((0, d))
    while centres.shape[0] < k:  # rejection sampling keeps every pair of centres far apart
        c = rng.uniform(-30, 30, size=d)
        if centres.shape[0] == 0 or np.min(np.linalg.norm(centres - c, axis=1)) >= 12:
            centres = np.vstack([centres, c])
    Z = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres])
    return Z[rng.permutation(len(Z))].astype(np.float32)


@pytest.mark.parametrize(("k", "method"), [(2, "kmeans"), (3, "kmeans"), (6, "kmeans"), (9, "kmeans"), (2, "gmm"),
                                           (4, "gmm"), (7, "gmm")])
def test_recovers_the_number_of_well_separated_blobs(k: int, method: str) -> None:
    sweep = choose_k(blobs(k, seed=k), method=method, k_max=14, seed=0)  # type: ignore[arg-type]
    assert sweep.chosen == k, sweep.reason
    assert k in sweep.ks and sweep.ks == tuple(sorted(set(sweep.ks)))
    assert "silhouette" in sweep.scores
    assert all(len(v) == len(sweep.ks) for v in sweep.scores.values())
    assert ("bic" in sweep.scores) == (method == "gmm")
    assert str(k) in sweep.reason and sweep.rule


def test_digits_pca_gives_a_sane_k() -> None:
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    X, y = load_digits(return_X_y=True)
    Z = PCA(n_components=10, random_state=0).fit_transform(X / 16.0).astype(np.float32)
    sweep = choose_k(Z, method="kmeans", k_max=20, seed=0)
    assert 6 <= sweep.chosen <= 14, sweep.reason  # 10 classes, some of them overlapping in 10 PCA dimensions


def test_same_seed_same_sweep_and_subsample_bound() -> None:
    Z = blobs(5, n_per=400, seed=1)  # 2,000 rows
    a = choose_k(Z, method="kmeans", k_max=9, max_rows=600, seed=3)
    b = choose_k(Z, method="kmeans", k_max=9, max_rows=600, seed=3)
    assert a.n_rows == 600 <= 600
    assert (a.ks, a.chosen, a.reason) == (b.ks, b.chosen, b.reason)
    assert a.scores == b.scores
    assert choose_k(Z, method="kmeans", k_max=9, max_rows=5000, seed=3).n_rows == 2000


def test_bad_inputs_raise_config_error() -> None:
    Z = blobs(3, seed=2)
    with pytest.raises(ConfigError, match="k_min"):
        choose_k(Z, k_min=1)
    with pytest.raises(ConfigError, match="below k_min"):
        choose_k(Z, k_min=5, k_max=4)
    bad = Z.copy()
    bad[7, 2] = np.nan
    with pytest.raises(ConfigError, match="NaN or inf"):
        choose_k(bad)
    with pytest.raises(ConfigError, match="too few"):
        choose_k(Z[:30], k_min=2)
    with pytest.raises(ConfigError, match="method"):
        choose_k(Z, method="hdbscan")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        choose_k(Z[:, 0])


def test_k_max_above_what_the_rows_allow_is_capped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    Z = blobs(3, n_per=40, seed=4)  # 120 rows: at most 24 clusters (5 rows per cluster)
    with caplog.at_level(logging.WARNING, logger="imgclust.cluster.choose_k"):
        sweep = choose_k(Z, method="kmeans", k_max=40, seed=0)
    assert max(sweep.ks) == 24
    assert "capped" in sweep.reason and any("capped" in r.getMessage() for r in caplog.records)
    assert sweep.chosen == 3


def test_default_k_max() -> None:
    assert default_k_max(8) == 2
    assert default_k_max(408) == 40  # 34 photos in a dozen variants each: the range must reach 34
    assert default_k_max(1797) == 50
    assert default_k_max(1_000_000) == default_k_max(10_000) == 50
    with pytest.raises(ConfigError):
        default_k_max(0)


def test_json_round_trip_with_nan() -> None:
    sweep = KSweep(ks=(2, 3, 5), scores={"stability": (0.5, 0.9, 0.7), "bic": (float("nan"), 1.0, 2.0)}, chosen=3,
                   criterion="stability", rule="r.", reason="why.", n_rows=100, seconds=1.5)
    d = json.loads(json.dumps(sweep.to_json(), allow_nan=False))
    assert d["scores"]["bic"][0] is None
    back = KSweep.from_json(d)
    assert back.ks == sweep.ks and back.chosen == 3 and back.n_rows == 100 and back.reason == "why."
    assert np.isnan(back.scores["bic"][0]) and back.scores["stability"] == sweep.scores["stability"]
    with pytest.raises(ConfigError):
        KSweep.from_json({**d, "chosen": 4})


def test_rule_picks_from_the_scores() -> None:
    ks = [2, 3, 4, 5]
    k, criterion, reason = apply_rule(ks, {"silhouette": [0.55, 0.5, 0.6, 0.2]})
    assert (k, criterion) == (4, "silhouette") and "0.600" in reason  # k = 2 is not 0.1 above the best k >= 3
    assert apply_rule(ks, {"silhouette": [0.75, 0.5, 0.6, 0.2]})[0] == 2  # a clear two-way structure
    assert apply_rule(ks, {"silhouette": [0.8, float("nan"), 0.3, 0.2]})[0] == 2
    stab = {"stability": [1.0, 0.97, 0.96, 0.6], "stability_se": [0.0, 0.02, 0.01, 0.05]}
    assert apply_rule(ks, stab, "finest-stable")[0] == 4  # k = 2 left out: k = 3, 4 are stable
    assert apply_rule(ks, {**stab, "stability": [1.0, 0.5, 0.6, 0.4]}, "finest-stable")[0] == 2
    with pytest.raises(ConfigError, match="unknown"):
        apply_rule(ks, stab, "nope")
    with pytest.raises(ConfigError, match="NaN"):
        apply_rule(ks, {"silhouette": [float("nan")] * 4})
