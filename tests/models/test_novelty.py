"""NoveltyScorer and conformal calibration on real Fashion-MNIST pixels: calibrated false-novel rate, a held-out
class scoring higher, determinism, persistence and errors."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import requires_fashion

from imgclust.batches import as_batch_source
from imgclust.data.datasets import load_fashion_mnist
from imgclust.estimator import load_estimator
from imgclust.exceptions import ConfigError, NotFittedError
from imgclust.models.novelty import (
    NoveltyScorer,
    calibrate,
    min_calibration_rows,
    novelty_rows,
    projection_residual,
    shift_pvalue,
)
from imgclust.reduce.streaming import StreamingPCA

HELD_OUT = (8, 9)  # bag, ankle boot: never fitted
RATE = 0.05


@pytest.fixture(scope="module")
def fashion() -> dict[str, np.ndarray]:
    """PCA-50 novelty rows of Fashion-MNIST train pixels: 12,000 fitted known-class rows, 8,000 fresh
    known-class rows (never fitted) and 2,000 rows of the held-out classes."""
    x, y = load_fashion_mnist("train")
    x = x.reshape(len(x), -1).astype(np.float32) / 255.0
    rng = np.random.default_rng(23)
    known = rng.permutation(np.flatnonzero(~np.isin(y, HELD_OUT)))
    new = rng.choice(np.flatnonzero(np.isin(y, HELD_OUT)), 2_000, replace=False)
    fit, fresh = x[known[:12_000]], x[known[12_000:20_000]]
    pca = StreamingPCA(n_components=50).fit(fit)
    return {"fit": novelty_rows(pca, fit), "fresh": novelty_rows(pca, fresh), "new": novelty_rows(pca, x[new])}


def _tolerance(n_cal: int, m: int, rate: float, z: float = 4.0) -> float:
    """z standard deviations of the flagged share of ``m`` fresh rows after calibrating on ``n_cal`` rows.

    Conditional on the calibration set, a fresh row is flagged with probability ``p ~ Beta(n + 1 - l, l)``,
    ``l = floor((n + 1) rate)`` (Vovk 2012; Angelopoulos & Bates 2021, sec. 3.2), and the flagged count of
    ``m`` rows is Binomial(m, p): Var(share) = E[p (1 - p)] / m + Var(p). z = 4 fails a correct
    implementation about once in 16,000 seeds (normal approximation)."""
    n1, ell = n_cal + 1, math.floor((n_cal + 1) * rate)
    a, b = n1 - ell, ell  # Beta(a, b) of the coverage 1 - p
    mean_p = b / (a + b)
    var_p = a * b / ((a + b) ** 2 * (a + b + 1))
    return z * math.sqrt((mean_p * (1 - mean_p) - var_p) / m + var_p)


@requires_fashion
@pytest.mark.parametrize("k", [1, 20])  # k = 1 exposes calibration rows leaking into the references
def test_calibrated_false_novel_rate_on_fresh_known_rows(fashion: dict[str, np.ndarray], k: int) -> None:
    scorer = NoveltyScorer(k=k, n_reference=6_000, n_calibration=4_000, rate=RATE, seed=0).fit(fashion["fit"])
    flagged = float(scorer.predict(fashion["fresh"]).mean())
    expected = RATE - 0.5 / (scorer.calibration_scores_.size + 1)  # the guarantee is [rate - 1/(n+1), rate]
    assert abs(flagged - expected) <= _tolerance(4_000, len(fashion["fresh"]), RATE), flagged
    # calibration rows must not be references: a reference's own k = 1 distance is its residual alone, so a
    # leaked calibration set puts the threshold too low and flags several times the rate
    assert scorer.reference_.shape == (6_000, 51) and np.all(scorer.reference_[:, -1] == 0)


def test_shift_pvalue_is_uniform_for_exchangeable_nights_and_small_for_a_shifted_one() -> None:
    """Nights drawn like the calibration scores fire at about alpha (300 seeded nights: the count at alpha = 0.05
    is Binomial(300, 0.05), mean 15, sd 3.8); a night with 20 % of its scores shifted up by 0.7 sd gets a p-value
    below the event's 0.001."""
    rng = np.random.default_rng(5)
    cal = rng.gamma(2.0, size=3_000)
    ps = np.array([shift_pvalue(cal, rng.gamma(2.0, size=1_000)) for _ in range(300)])
    assert 0 <= ps.min() and ps.max() <= 1
    assert 15 - 4 * 3.8 <= int((ps < 0.05).sum()) <= 15 + 4 * 3.8
    night = np.r_[rng.gamma(2.0, size=800), rng.gamma(2.0, size=200) + 1.0]  # a new kind: scores shifted by 1
    assert shift_pvalue(cal, night) < 1e-3
    assert shift_pvalue(cal, -night) > 0.5 and shift_pvalue(cal, np.zeros(0)) == 1.0


@requires_fashion
def test_held_out_classes_score_higher(fashion: dict[str, np.ndarray]) -> None:
    from sklearn.metrics import roc_auc_score

    scorer = NoveltyScorer(n_reference=6_000, n_calibration=4_000, rate=RATE, seed=0).fit(fashion["fit"])
    fresh, new = scorer.score(fashion["fresh"]), scorer.score(fashion["new"])
    auroc = roc_auc_score(np.r_[np.zeros(len(fresh)), np.ones(len(new))], np.r_[fresh, new])
    assert auroc > 0.88, auroc
    assert scorer.predict(fashion["new"]).mean() > 0.5  # > 10x the target false-novel rate


@requires_fashion
def test_residual_column_adds_in_quadrature(fashion: dict[str, np.ndarray]) -> None:
    with_res = NoveltyScorer(k=5, n_reference=2_000, n_calibration=1_000, seed=1).fit(fashion["fit"])
    plain = NoveltyScorer(k=5, n_reference=2_000, n_calibration=1_000, residual=False, seed=1)
    plain.fit(fashion["fit"][:, :-1])
    q = fashion["new"][:300]
    np.testing.assert_allclose(with_res.score(q), np.hypot(plain.score(q[:, :-1]), q[:, -1]), rtol=1e-4)


@requires_fashion
def test_deterministic_by_seed_and_streaming(fashion: dict[str, np.ndarray]) -> None:
    a = NoveltyScorer(n_reference=3_000, n_calibration=1_000, seed=5).fit(fashion["fit"])
    b = NoveltyScorer(n_reference=3_000, n_calibration=1_000, seed=5).fit(as_batch_source(fashion["fit"], 1_000))
    c = NoveltyScorer(n_reference=3_000, n_calibration=1_000, seed=6).fit(fashion["fit"])
    np.testing.assert_array_equal(a.reference_, b.reference_)
    assert a.threshold_ == b.threshold_
    np.testing.assert_array_equal(a.score(fashion["new"]), b.score(fashion["new"]))
    assert not np.array_equal(a.reference_, c.reference_)


@requires_fashion
def test_save_load_round_trip(fashion: dict[str, np.ndarray], tmp_path: Path) -> None:
    a = NoveltyScorer(k=10, n_reference=2_000, n_calibration=1_000, rate=0.1, seed=2).fit(fashion["fit"])
    a.save(tmp_path / "novelty")
    b = load_estimator(tmp_path / "novelty")
    assert isinstance(b, NoveltyScorer) and b.get_params() == a.get_params()
    assert b.threshold_ == a.threshold_ and b.n_seen_ == 12_000
    np.testing.assert_array_equal(b.score(fashion["new"]), a.score(fashion["new"]))
    assert b.threshold_for(0.1) == a.threshold_


def test_calibrate_is_the_conformal_quantile() -> None:
    s = np.arange(1, 20, dtype=np.float32)[::-1]  # 19 scores 19..1
    assert calibrate(s, 0.05) == 19.0  # ceil(20 * 0.95) = 19th smallest
    assert calibrate(s, 0.5) == 10.0  # ceil(20 * 0.5) = 10th smallest
    assert min_calibration_rows(0.05) == 19 and min_calibration_rows(0.1) == 9


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_rates_are_refused(rate: float) -> None:
    with pytest.raises(ConfigError, match="false-novel rate"):
        calibrate(np.ones(100), rate)
    with pytest.raises(ConfigError, match="false-novel rate"):
        NoveltyScorer(rate=rate).fit(np.ones((100, 3), np.float32))


def test_too_few_or_empty_inputs_are_refused() -> None:
    with pytest.raises(ConfigError, match="no calibration scores"):
        calibrate(np.zeros(0), 0.05)
    with pytest.raises(ConfigError, match="at least 19"):
        calibrate(np.ones(18), 0.05)
    with pytest.raises(ConfigError, match="NaN or infinite"):
        calibrate(np.array([1.0, np.nan] * 20), 0.05)
    with pytest.raises(ConfigError, match="no rows"):
        NoveltyScorer().fit(np.zeros((0, 4), np.float32))
    rows = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    with pytest.raises(ConfigError, match="references"):
        NoveltyScorer(k=20, n_reference=100, n_calibration=50).fit(rows)
    with pytest.raises(ConfigError, match="smaller than k"):
        NoveltyScorer(k=20, n_reference=10).fit(rows)
    with pytest.raises(NotFittedError):
        NoveltyScorer().score(rows)


def test_wrong_width_and_whitening_reducer_are_refused() -> None:
    rows = np.random.default_rng(1).standard_normal((300, 6)).astype(np.float32)
    scorer = NoveltyScorer(k=3, n_reference=200, n_calibration=50, rate=0.1).fit(rows)
    with pytest.raises(ConfigError):
        scorer.score(rows[:, :5])
    pca = StreamingPCA(n_components=3, whiten=True).fit(rows)
    with pytest.raises(ConfigError, match="residual=False"):
        novelty_rows(pca, rows)
    res = projection_residual(StreamingPCA(n_components=6).fit(rows), rows)  # full rank: nothing discarded
    np.testing.assert_allclose(res, 0.0, atol=1e-4)
