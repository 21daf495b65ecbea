"""The promotion gate: first model, better/worse within and beyond tolerance, directions, bad metrics."""
from __future__ import annotations

import math

import pytest

from imgclust.exceptions import ConfigError
from imgclust.models.promotion import KNOWN_METRICS, GateConfig, GateDecision, decide

SIL = GateConfig()  # internal_silhouette, higher is better, tolerance 0.02


def test_defaults_and_known_directions() -> None:
    assert SIL.metric == "internal_silhouette" and SIL.higher_is_better is True and SIL.tolerance == 0.02
    assert GateConfig(metric="internal_davies_bouldin").higher_is_better is False
    for m in ("acc", "nmi", "ari"):
        assert GateConfig(metric=m).higher_is_better is True
    assert set(KNOWN_METRICS) == {"internal_silhouette", "internal_davies_bouldin", "acc", "nmi", "ari"}


def test_first_model_always_promotes() -> None:
    d = decide({"internal_silhouette": 0.1}, None, SIL)
    assert d.promote and "first model" in d.reason
    assert d.candidate == pytest.approx(0.1) and d.current is None
    assert decide({}, None, SIL).promote  # even unscored: there is nothing to keep instead


def test_better_promotes() -> None:
    d = decide({"internal_silhouette": 0.6}, {"internal_silhouette": 0.5}, SIL)
    assert d == GateDecision(True, d.reason, 0.6, 0.5)
    assert "not worse" in d.reason


def test_slightly_worse_within_tolerance_promotes() -> None:
    d = decide({"internal_silhouette": 0.49}, {"internal_silhouette": 0.5}, SIL)
    assert d.promote and "within tolerance" in d.reason
    # exactly the tolerance is still accepted despite float rounding (0.48 - 0.5 = -0.020000000000000018)
    assert decide({"internal_silhouette": 0.48}, {"internal_silhouette": 0.5}, SIL).promote


def test_worse_beyond_tolerance_is_blocked_with_both_values() -> None:
    d = decide({"internal_silhouette": 0.41}, {"internal_silhouette": 0.5}, SIL)
    assert not d.promote
    assert "0.4100" in d.reason and "0.5000" in d.reason and "0.02" in d.reason
    assert d.candidate == pytest.approx(0.41) and d.current == pytest.approx(0.5)


def test_lower_is_better_metric() -> None:
    db = GateConfig(metric="internal_davies_bouldin", tolerance=0.05)
    assert decide({"internal_davies_bouldin": 0.8}, {"internal_davies_bouldin": 1.0}, db).promote
    assert decide({"internal_davies_bouldin": 1.04}, {"internal_davies_bouldin": 1.0}, db).promote
    d = decide({"internal_davies_bouldin": 1.2}, {"internal_davies_bouldin": 1.0}, db)
    assert not d.promote and "lower is better" in d.reason and "1.2000" in d.reason


def test_supervised_metric_when_present() -> None:
    acc = GateConfig(metric="acc", tolerance=0.0)
    assert decide({"acc": 0.81, "internal_silhouette": 0.1}, {"acc": 0.8, "internal_silhouette": 0.5}, acc).promote
    assert not decide({"acc": 0.79}, {"acc": 0.8}, acc).promote


@pytest.mark.parametrize("candidate, why", [
    ({"internal_silhouette": float("nan")}, "NaN"),
    ({}, "missing"),
    ({"internal_silhouette": None}, "missing"),
    ({"internal_silhouette": math.inf}, "not finite"),
    ({"internal_silhouette": "high"}, "not a number"),
])
def test_unscorable_candidate_is_blocked(candidate: dict, why: str) -> None:
    d = decide(candidate, {"internal_silhouette": 0.3}, SIL)
    assert not d.promote and why in d.reason and "internal_silhouette" in d.reason
    assert d.candidate is None and d.current == pytest.approx(0.3)


def test_unscorable_current_lets_candidate_through_and_says_so() -> None:
    d = decide({"internal_silhouette": 0.2}, {"internal_silhouette": float("nan")}, SIL)
    assert d.promote and "NaN" in d.reason and d.current is None


def test_unknown_metric_and_bad_config() -> None:
    with pytest.raises(ConfigError, match="internal_davies_bouldin") as info:
        GateConfig(metric="calinski")
    assert "internal_silhouette" in str(info.value) and "ari" in str(info.value)
    # a metric the gate does not know is usable with its direction given explicitly
    custom = GateConfig(metric="internal_calinski_harabasz", higher_is_better=True, tolerance=1.0)
    assert decide({"internal_calinski_harabasz": 99.5}, {"internal_calinski_harabasz": 100.0}, custom).promote
    with pytest.raises(ConfigError, match="lower-is-better"):
        GateConfig(metric="internal_davies_bouldin", higher_is_better=True)
    for tol in (-0.1, math.nan, math.inf):
        with pytest.raises(ConfigError, match="tolerance"):
            GateConfig(tolerance=tol)


def test_decision_as_json() -> None:
    d = decide({"internal_silhouette": 0.41}, {"internal_silhouette": 0.5}, SIL)
    assert d.as_json() == {"promote": False, "reason": d.reason, "candidate": 0.41, "current": 0.5}
