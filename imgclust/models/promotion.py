"""The promotion gate: does a freshly fitted candidate model replace the current one?

The gate compares one metric of the candidate with the same metric of the current (promoted)
model, as produced by ``imgclust.models.labels.evaluate`` (keys ``internal_silhouette``,
``internal_davies_bouldin``, and ``acc`` / ``nmi`` / ``ari`` when ground truth is known).

Rules, in order:

1. No current model (``current_metrics is None``): the first model always promotes.
2. The candidate's metric is missing, ``None``, NaN or infinite: do not promote (an unscorable model
   must not replace a scored one).
3. The current model's metric is missing or not finite: promote, and say so in the reason (there is
   nothing to compare against, and keeping an unscorable model forever is worse).
4. Otherwise promote when the candidate is not worse than the current by more than ``tolerance``,
   an absolute difference in the metric's own direction (inclusive: exactly ``tolerance`` worse
   still promotes).

A refit that *failed* never reaches the gate: the caller (task/flow) sees the exception, writes no
model (``model.json`` is written last) and leaves ``models/CURRENT`` alone. ``decide`` only judges
candidates that were fitted, saved and evaluated; it performs no I/O and never promotes by itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from imgclust.exceptions import ConfigError

__all__ = ["KNOWN_METRICS", "GateConfig", "GateDecision", "decide"]

KNOWN_METRICS: dict[str, bool] = {
    "internal_silhouette": True,
    "internal_davies_bouldin": False,
    "acc": True,
    "nmi": True,
    "ari": True,
}
"""Metric name -> ``higher_is_better`` for the metrics whose direction the gate knows."""

_EPS = 1e-12  # float slack so that "exactly tolerance worse" is inclusive


def _known() -> str:
    return ", ".join(f"{m} ({'higher' if h else 'lower'} is better)" for m, h in KNOWN_METRICS.items())


@dataclass(frozen=True)
class GateConfig:
    """Which metric gates promotion, its direction, and the tolerated regression.

    ``higher_is_better=None`` (default) takes the direction from :data:`KNOWN_METRICS`; a metric not
    listed there needs it given explicitly, and a value contradicting a known direction is refused.
    ``tolerance`` >= 0 is absolute, in the metric's units.
    """

    metric: str = "internal_silhouette"
    higher_is_better: bool | None = None
    tolerance: float = 0.02

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise ConfigError(f"metric must be a non-empty metric name; known: {_known()}")
        known = KNOWN_METRICS.get(self.metric)
        if self.higher_is_better is None:
            if known is None:
                raise ConfigError(f"unknown gate metric {self.metric!r}: its direction is unknown. Use one of "
                                  f"{_known()}, or pass higher_is_better explicitly")
            object.__setattr__(self, "higher_is_better", known)
        elif not isinstance(self.higher_is_better, bool):
            raise ConfigError(f"higher_is_better must be True, False or None; got {self.higher_is_better!r}")
        elif known is not None and self.higher_is_better != known:
            raise ConfigError(f"{self.metric} is {'higher' if known else 'lower'}-is-better; got "
                              f"higher_is_better={self.higher_is_better}. Leave it unset")
        tol = self.tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ConfigError(f"tolerance must be a finite number >= 0 (absolute, in {self.metric} units); "
                              f"got {tol!r}")


@dataclass(frozen=True)
class GateDecision:
    """Outcome of :func:`decide`: ``promote``, a human-readable ``reason``, and the two metric values
    compared (``None`` where absent or not finite)."""

    promote: bool
    reason: str
    candidate: float | None
    current: float | None

    def as_json(self) -> dict[str, Any]:
        return {"promote": self.promote, "reason": self.reason, "candidate": self.candidate,
                "current": self.current}


def decide(candidate_metrics: dict[str, Any], current_metrics: dict[str, Any] | None,
           config: GateConfig) -> GateDecision:
    """Apply the gate (module docstring) to the candidate's and the current model's metric dicts."""
    if not isinstance(config, GateConfig):
        raise ConfigError(f"config must be a GateConfig; got {type(config).__name__}")
    m = config.metric
    cand, why = _value(candidate_metrics, m)
    if current_metrics is None:
        return GateDecision(True, f"first model: nothing promoted yet (candidate {m}={_fmt(cand)})", cand, None)
    if cand is None:
        return GateDecision(False, f"candidate {m} is {why}; not promoting a model the gate cannot score",
                            None, _value(current_metrics, m)[0])
    cur, why_cur = _value(current_metrics, m)
    if cur is None:
        return GateDecision(True, f"current model's {m} is {why_cur}; promoting the candidate ({m}={_fmt(cand)}) "
                                  "since there is nothing to compare against", cand, None)
    gain = cand - cur if config.higher_is_better else cur - cand  # > 0: candidate better
    direction = "higher" if config.higher_is_better else "lower"
    if gain >= 0:
        return GateDecision(True, f"candidate {m}={_fmt(cand)} is not worse than current {_fmt(cur)} "
                                  f"({direction} is better)", cand, cur)
    if gain >= -config.tolerance - _EPS:
        return GateDecision(True, f"candidate {m}={_fmt(cand)} is worse than current {_fmt(cur)} by "
                                  f"{_fmt(-gain)}, within tolerance {config.tolerance:g} ({direction} is better)",
                            cand, cur)
    return GateDecision(False, f"candidate {m}={_fmt(cand)} is worse than current {_fmt(cur)} by {_fmt(-gain)}, "
                               f"beyond tolerance {config.tolerance:g} ({direction} is better); keeping the "
                               "current model", cand, cur)


def _value(metrics: dict[str, Any], name: str) -> tuple[float | None, str]:
    """``(value, "")`` or ``(None, why)`` for ``metrics[name]``."""
    if not isinstance(metrics, dict):
        raise ConfigError(f"metrics must be a dict of name -> value; got {type(metrics).__name__}")
    if name not in metrics or metrics[name] is None:
        return None, f"missing (metrics present: {sorted(metrics)})"
    raw = metrics[name]
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None, f"not a number ({raw!r})"
    if math.isnan(value):
        return None, "NaN"
    if not math.isfinite(value):
        return None, f"not finite ({value})"
    return value, ""


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
