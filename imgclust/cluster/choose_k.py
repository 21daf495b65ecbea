"""Automatic choice of the number of clusters k (``--k auto``) by a sweep over k.

Rows ``Z`` ``(n, d)`` already in the clustering space (after PCA / UMAP) are subsampled (seeded, at most
``max_rows``), then each k of a coarse grid from ``k_min`` to ``k_max`` (every k up to 12, roughly geometric
above) is fitted with the recipe's clusterer (:class:`~imgclust.cluster.classic.FaissKMeans` or
:class:`~imgclust.cluster.gmm.GaussianMixtureClusterer`) and scored; a fine sweep then scores every integer between
the grid neighbours of the coarse choice and the rule is applied again to all scored k.

Criteria (per k, on the sweep sample):

* ``silhouette`` (Rousseeuw, J. Comput. Appl. Math. 1987) of the fit's labels on a seeded sample of
  :data:`SILHOUETTE_ROWS` rows: how much closer each row is to its own cluster than to the next one;
* ``bic`` (Schwarz 1978) of the Gaussian mixture (``method="gmm"`` only; free from the fit, reported, not used:
  on UMAP coordinates it keeps falling to the end of any range, as a mixture fits non-Gaussian clusters with
  ever more components);
* candidates kept for the benchmark (:func:`score_k`): ``stability``, agreement of partitions fitted
  independently, as model-order selection by stability (Ben-Hur, Elisseeff & Guyon, PSB 2002; Lange, Roth,
  Braun & Buhmann, Neural Computation 2004): the mean adjusted Rand index (Hubert & Arabie 1985) of a fit on
  the whole sample and fits on two disjoint random halves, each predicted on every row, with its standard
  error; ``null_stability``, the same on uniform rows in the data's principal box, for Clest (Dudoit &
  Fridlyand, Genome Biology 2002).

The rule (:data:`RULE`, ``"silhouette-k3"``): the k >= 3 of highest silhouette; k = 2 only when its silhouette
exceeds every k >= 3's by more than :data:`SILHOUETTE_TWO_MARGIN`. Silhouette favours k = 2 wherever one gap
dominates (a whole corpus splits cleanly into, say, clothes and footwear), and such a split hides every finer
structure; the margin keeps k = 2 for data that has two clusters and nothing finer. It was chosen among the
candidates of :data:`RULES` (plain silhouette; lowest BIC; highest stability; the largest k within one standard
error of the best stability, with and without k = 2; stability above a threshold; Clest) by
``benchmarks/choose_k.py --dense`` on labelled image corpora, ranked by the runs where k lands within 20 % of the
number of classes and NMI within 0.02 of the NMI at that number, then by the runs meeting the NMI goal alone.
It also needs one fit per k where stability needs three.

The silhouette reflects the clustering space, not the labels: where the embedding merges kinds into one
island (e.g. similar garment classes on a pixel UMAP), the rule returns fewer clusters than kinds.

Cost: one fit per scored k on at most ``max_rows`` rows, one thread (:func:`_one_thread`), plus the silhouette on
:data:`SILHOUETTE_ROWS` rows; the number of scored k's is about ``12 + log(k_max / 12) / log(1.25)`` plus the
fine step.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np

from imgclust.cluster.registry import clusterer_spec
from imgclust.config import ClusterConfig, fixed_k
from imgclust.exceptions import ConfigError
from imgclust.validation import check_array, check_int

logger = logging.getLogger(__name__)

__all__ = ["KSweep", "choose_k", "resolve_k", "default_k_max", "min_sweep_rows", "score_k", "apply_rule", "RULES", "RULE"]

K_MAX_CAP = 50
"""Upper end of the default range (:func:`default_k_max`)."""
MIN_ROWS_PER_CLUSTER = 5
"""Rows per cluster, on average, at the largest k the sweep fits (``k_max`` is capped to ``rows // 5``): corpora of
many small kinds (a dozen variants of each photo) need k up to a tenth of their rows and more."""
MIN_SWEEP_ROWS_PER_K = 20
"""The sweep needs ``20 * k_min`` rows (:func:`min_sweep_rows`): below that a silhouette says little."""

"""Rows per cluster, on average, the sweep sample must hold at ``k_max`` (the stability candidate fits halves)."""
SILHOUETTE_ROWS = 2000
"""Rows of the seeded sample the silhouette is computed on (``O(m^2)``)."""
GRID_EVERY_UP_TO = 12
"""The coarse grid holds every k up to this one (a step of one is already 10-50 % of such k)."""
GRID_RATIO = 1.25
"""Ratio of consecutive k's of the coarse grid above :data:`GRID_EVERY_UP_TO`."""


@dataclass(frozen=True)
class KSweep:
    """The outcome of :func:`choose_k`: every k scored, the criteria, and the chosen k with its reason."""

    ks: tuple[int, ...]
    scores: dict[str, tuple[float, ...]]
    chosen: int
    criterion: str
    rule: str
    reason: str
    n_rows: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types: lists and floats, NaN written as ``None``."""
        return {"ks": [int(k) for k in self.ks],
                "scores": {name: [None if not math.isfinite(v) else float(v) for v in vals]
                           for name, vals in self.scores.items()},
                "chosen": int(self.chosen), "criterion": self.criterion, "rule": self.rule, "reason": self.reason,
                "n_rows": int(self.n_rows), "seconds": float(self.seconds)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KSweep:
        """Inverse of :meth:`to_json` (``None`` back to NaN)."""
        try:
            ks = tuple(int(k) for k in d["ks"])
            scores = {str(name): tuple(float("nan") if v is None else float(v) for v in vals)
                      for name, vals in d["scores"].items()}
            out = cls(ks=ks, scores=scores, chosen=int(d["chosen"]), criterion=str(d["criterion"]),
                      rule=str(d["rule"]), reason=str(d["reason"]), n_rows=int(d["n_rows"]),
                      seconds=float(d["seconds"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"not a KSweep record ({err!r}); expected the keys ks, scores, chosen, criterion, "
                              "rule, reason, n_rows, seconds as written by KSweep.to_json") from err
        if any(len(v) != len(ks) for v in scores.values()) or out.chosen not in ks:
            raise ConfigError("KSweep record is inconsistent: every score needs one value per k and chosen must be "
                              "one of ks")
        return out


def min_sweep_rows(k_min: int) -> int:
    """Fewest sample rows :func:`choose_k` sweeps from ``k_min`` (:data:`MIN_SWEEP_ROWS_PER_K` per cluster)."""
    return MIN_SWEEP_ROWS_PER_K * k_min


def default_k_max(n_rows: int) -> int:
    """Default upper end of the range: ``min(K_MAX_CAP, max(2, n_rows // 10))``: ten rows per cluster on average at
    the largest k, bounded so the sweep's cost stays bounded. (The classic ``sqrt(n / 2)`` (Mardia, Kent & Bibby
    1979) stops at 14 for 400 images, below a corpus of 34 photos in a dozen variants each.)"""
    check_int("n_rows", n_rows, minimum=1)
    return int(min(K_MAX_CAP, max(2, n_rows // 10)))


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run BLAS, OpenMP (faiss) and torch (k-means++ seeding) on one thread, restoring the settings after.

    The sweep makes many fits of at most ``max_rows`` low-dimensional rows; for fits that small, thread start-up
    and OpenMP spin-waiting on a shared machine cost more than the work they split.
    """
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def _make_clusterer(method: str, k: int, seed: int) -> Any:
    if method == "kmeans":
        from imgclust.cluster.classic import FaissKMeans

        return FaissKMeans(n_clusters=k, seed=seed)
    from imgclust.cluster.gmm import GaussianMixtureClusterer

    return GaussianMixtureClusterer(n_clusters=k, random_state=seed, fit_sample=None)


def _gmm_bic(gmm: Any, Z: np.ndarray) -> float:
    """BIC ``-2 log L + p log n`` of a fitted full- or diag-covariance mixture on rows ``Z`` ``(n, d)``."""
    from scipy.special import logsumexp

    n, d = Z.shape
    k = gmm.n_clusters
    cov_params = k * d * (d + 1) / 2 if gmm.covariance_type == "full" else k * d
    p = cov_params + k * d + k - 1
    log_l = float(logsumexp(gmm._weighted_log_prob(Z), axis=1).sum())
    return -2.0 * log_l + p * math.log(n)


def _stability(Z: np.ndarray, k: int, *, method: str, seed: int, labels: np.ndarray | None = None
               ) -> tuple[float, float]:
    """Mean and standard error of the ARI of three partitions of ``Z`` ``(m, d)``: the whole-sample fit (seed
    ``seed``; its ``labels`` when already known) and fits on two disjoint random halves (seeds ``seed + 1``,
    ``seed + 2``), each predicted on every row."""
    from sklearn.metrics import adjusted_rand_score

    m = Z.shape[0]
    if labels is None:
        labels = _make_clusterer(method, k, seed).fit(Z).predict(Z)
    perm = np.random.default_rng((seed, k, 1)).permutation(m)
    half_a, half_b = np.sort(perm[: m // 2]), np.sort(perm[m // 2:])
    la = _make_clusterer(method, k, seed + 1).fit(Z[half_a]).predict(Z)
    lb = _make_clusterer(method, k, seed + 2).fit(Z[half_b]).predict(Z)
    aris = np.array([adjusted_rand_score(labels, la), adjusted_rand_score(labels, lb), adjusted_rand_score(la, lb)])
    return float(aris.mean()), float(aris.std(ddof=1) / math.sqrt(len(aris)))


def _null_reference(Z: np.ndarray, seed: int) -> np.ndarray:
    """Rows ``(m, d)`` drawn uniformly in the box of ``Z``'s principal axes (Tibshirani, Walther & Hastie 2001;
    Dudoit & Fridlyand 2002): data of the same extent and no cluster structure."""
    rng = np.random.default_rng((seed, 3))
    mean = Z.mean(axis=0, dtype=np.float64)
    _, _, vt = np.linalg.svd(Z - mean, full_matrices=False)
    P = (Z - mean) @ vt.T
    U = rng.uniform(P.min(axis=0), P.max(axis=0), size=P.shape)
    return np.ascontiguousarray(U @ vt + mean, dtype=np.float32)


def score_k(Z: np.ndarray, k: int, *, method: Literal["kmeans", "gmm"], seed: int,
            criteria: tuple[str, ...] = ("silhouette", "bic")) -> tuple[dict[str, float], np.ndarray]:
    """Score one k on the sweep rows ``Z`` ``(m, d)`` float32.

    Returns ``(scores, labels)``: the criteria named in ``criteria`` (``stability`` adds ``stability_se``; ``bic``
    is NaN for k-means; ``null_stability`` is the stability of :func:`_null_reference` rows, for the Clest rule)
    and the whole-sample fit's labels ``(m,)`` int64.
    """
    from sklearn.metrics import silhouette_score

    m = Z.shape[0]
    full = _make_clusterer(method, k, seed).fit(Z)
    labels = np.asarray(full.predict(Z), dtype=np.int64)
    out: dict[str, float] = {}
    if "stability" in criteria:
        out["stability"], out["stability_se"] = _stability(Z, k, method=method, seed=seed, labels=labels)
    if "null_stability" in criteria:
        out["null_stability"] = _stability(_null_reference(Z, seed), k, method=method, seed=seed)[0]
    if "silhouette" in criteria:
        idx = np.random.default_rng((seed, 2)).permutation(m)[:SILHOUETTE_ROWS]
        ok = np.unique(labels[idx]).size >= 2
        out["silhouette"] = float(silhouette_score(Z[idx], labels[idx])) if ok else float("nan")
    if "bic" in criteria:
        out["bic"] = _gmm_bic(full, Z) if method == "gmm" else float("nan")
    return out, labels


# ---- rules: (ks ascending, scores) -> (chosen k, criterion, reason) ------------------------------------------
RuleFn = Callable[[list[int], dict[str, list[float]]], tuple[int, str, str]]


def _argbest(ks: list[int], vals: list[float], *, lower: bool) -> int:
    arr = np.array(vals, dtype=np.float64)
    if not np.isfinite(arr).any():
        raise ConfigError("no k could be scored (every value is NaN)")
    arr = np.where(np.isfinite(arr), arr, np.inf if lower else -np.inf)
    return ks[int(np.argmin(arr) if lower else np.argmax(arr))]


def _rule_silhouette(ks: list[int], s: dict[str, list[float]]) -> tuple[int, str, str]:
    k = _argbest(ks, s["silhouette"], lower=False)
    return k, "silhouette", f"k={k} has the highest silhouette ({s['silhouette'][ks.index(k)]:.3f})"


def _rule_bic(ks: list[int], s: dict[str, list[float]]) -> tuple[int, str, str]:
    k = _argbest(ks, s["bic"], lower=True)
    return k, "bic", f"k={k} has the lowest BIC ({s['bic'][ks.index(k)]:.6g})"


def _rule_stability_max(ks: list[int], s: dict[str, list[float]]) -> tuple[int, str, str]:
    k = _argbest(ks, s["stability"], lower=False)
    return k, "stability", f"k={k} has the highest stability (mean ARI {s['stability'][ks.index(k)]:.3f})"


def _stability_threshold_rule(tau: float) -> RuleFn:
    def rule(ks: list[int], s: dict[str, list[float]]) -> tuple[int, str, str]:
        st = s["stability"]
        ok = [k for k, v in zip(ks, st, strict=True) if math.isfinite(v) and v >= tau]
        if not ok:
            k = _argbest(ks, st, lower=False)
            return k, "stability", (f"no k reaches stability {tau}; k={k} is the most stable "
                                    f"(mean ARI {st[ks.index(k)]:.3f})")
        k = max(ok)
        return k, "stability", f"k={k} is the largest k with stability >= {tau} (mean ARI {st[ks.index(k)]:.3f})"
    return rule


def _rule_stability_1se(ks: list[int], s: dict[str, list[float]]) -> tuple[int, str, str]:
    st, se = s["stability"], s["stability_se"]
    best = ks.index(_argbest(ks, st, lower=False))
    bar = st[best] - se[best]
    k = max(k for k, v in zip(ks, st, strict=True) if math.isfinite(v) and v >= bar)
    return k, "stability", (f"k={k} is the largest k within 1 SE of the best stability (mean ARI "
                            f"{st[ks.index(k)]:.3f} >= {st[best]:.3f} - {se[best]:.3f} at k={ks[best]})")


def _rule_clest(ks: list[int], s: dict[str, list[float]]) -> tuple[int, str, str]:
    gain = [a - b for a, b in zip(s["stability"], s["null_stability"], strict=True)]
    k = _argbest(ks, gain, lower=False)
    i = ks.index(k)
    return k, "stability_gain", (f"k={k} has the largest stability above the null reference's "
                                 f"({s['stability'][i]:.3f} - {s['null_stability'][i]:.3f})")


SILHOUETTE_TWO_MARGIN = 0.1
"""How far k = 2's silhouette must exceed every k >= 3's for the ``silhouette-k3`` rule to return 2."""


def _rule_silhouette_k3(ks: list[int], s: dict[str, list[float]]) -> tuple[int, str, str]:
    sil = s["silhouette"]
    sub = [i for i, k in enumerate(ks) if k >= 3]
    if not sub:
        return _rule_silhouette(ks, s)
    k = _argbest([ks[i] for i in sub], [sil[i] for i in sub], lower=False)
    v = sil[ks.index(k)]
    if 2 in ks and math.isfinite(sil[ks.index(2)]) and sil[ks.index(2)] > v + SILHOUETTE_TWO_MARGIN:
        return 2, "silhouette", (f"k=2 has the highest silhouette ({sil[ks.index(2)]:.3f}), more than "
                                 f"{SILHOUETTE_TWO_MARGIN} above the best k >= 3 (k={k}, {v:.3f})")
    two = ""
    if 2 in ks and math.isfinite(sil[ks.index(2)]):
        two = f"; k=2 ({sil[ks.index(2)]:.3f}) is not {SILHOUETTE_TWO_MARGIN} above it"
    return k, "silhouette", f"k={k} has the highest silhouette among k >= 3 ({v:.3f}){two}"


STABLE = 0.9
"""Stability (mean ARI) from which a partition into ``k >= 3`` clusters counts as stable (rule ``finest-stable``)."""


def _rule_finest_stable(ks: list[int], s: dict[str, list[float]]) -> tuple[int, str, str]:
    st, se = s["stability"], s["stability_se"]
    sub = [i for i, k in enumerate(ks) if k >= 3]
    if not sub or max((st[i] for i in sub if math.isfinite(st[i])), default=-1.0) < STABLE:
        sub = list(range(len(ks)))  # no stable partition finer than two: k = 2 competes
    best = max(sub, key=lambda i: st[i] if math.isfinite(st[i]) else -np.inf)
    if not math.isfinite(st[best]):
        raise ConfigError("no k could be scored (every stability is NaN)")
    bar = st[best] - se[best]
    k = max(ks[i] for i in sub if math.isfinite(st[i]) and st[i] >= bar)
    two = "" if ks[sub[0]] == 2 else " (k = 2 left out: a finer partition is stable)"
    return k, "stability", (f"k={k} is the largest k with stability within 1 SE of the best (mean ARI "
                            f"{st[ks.index(k)]:.3f} >= {st[best]:.3f} - {se[best]:.3f} at k={ks[best]}){two}")


RULES: dict[str, RuleFn] = {
    "silhouette-k3": _rule_silhouette_k3,
    "finest-stable": _rule_finest_stable,
    "stability-1se": _rule_stability_1se,
    "stability-max": _rule_stability_max,
    "stability>=0.9": _stability_threshold_rule(0.9),
    "clest": _rule_clest,
    "silhouette": _rule_silhouette,
    "bic": _rule_bic,
}
"""Candidate rules, compared by ``benchmarks/choose_k.py --dense``."""

RULE = "silhouette-k3"
"""The rule :func:`choose_k` applies (chosen from the benchmark's measurements)."""
RULE_NEEDS = {"silhouette-k3": ("silhouette",), "finest-stable": ("stability",), "stability-1se": ("stability",),
              "stability-max": ("stability",), "stability>=0.9": ("stability",),
              "clest": ("stability", "null_stability"), "silhouette": ("silhouette",), "bic": ("bic",)}
"""Criteria each rule reads (:func:`choose_k` computes those of :data:`RULE` and, for a mixture, the free BIC)."""
RULE_TEXT = {
    "finest-stable": "the largest k whose stability (mean ARI of three independent fits) is within one standard "
                     "error of the best stability, k = 2 left out when some k >= 3 has stability >= 0.9",
    "stability-1se": "the largest k whose stability is within one standard error of the best stability",
    "stability-max": "the k of highest stability",
    "stability>=0.9": "the largest k with stability >= 0.9",
    "clest": "the k of largest stability above that of a uniform null reference (Dudoit & Fridlyand 2002)",
    "silhouette": "the k of highest silhouette",
    "silhouette-k3": "the k >= 3 of highest silhouette (Rousseeuw 1987), k = 2 only when its silhouette is more than "
                     f"{SILHOUETTE_TWO_MARGIN} above every k >= 3's",
    "bic": "the k of lowest BIC",
}


def apply_rule(ks: list[int] | tuple[int, ...], scores: dict[str, list[float]] | dict[str, tuple[float, ...]],
               rule: str | None = None) -> tuple[int, str, str]:
    """``(chosen k, criterion, reason)`` of rule ``rule`` (a key of :data:`RULES`; default :data:`RULE`) on
    scored ``ks`` (ascending)."""
    rule = RULE if rule is None else rule
    if rule not in RULES:
        raise ConfigError(f"unknown k rule {rule!r}; choose one of {sorted(RULES)}")
    return RULES[rule](list(ks), {name: list(v) for name, v in scores.items()})


def _grid(k_min: int, k_max: int) -> list[int]:
    """Coarse grid ``k_min .. k_max``: every k up to :data:`GRID_EVERY_UP_TO`, then roughly geometric (ratio
    :data:`GRID_RATIO`), both ends included."""
    ks = {k_min, k_max, *range(k_min, min(k_max, GRID_EVERY_UP_TO) + 1)}
    k = float(max(k_min, GRID_EVERY_UP_TO))
    while k < k_max:
        ks.add(int(round(k)))
        k = max(k * GRID_RATIO, k + 1)
    return sorted(x for x in ks if k_min <= x <= k_max)


def choose_k(Z: np.ndarray, *, method: Literal["kmeans", "gmm"] = "kmeans", k_min: int = 2, k_max: int | None = None,
             max_rows: int = 10_000, seed: int = 0) -> KSweep:
    """Choose the number of clusters for rows ``Z`` ``(n, d)`` float32 already in the clustering space.

    A seeded sample of at most ``max_rows`` rows is swept: a coarse grid (:func:`_grid`) from ``k_min`` to
    ``k_max`` (default :func:`default_k_max` of the sample's rows), then every integer between the grid
    neighbours of the coarse choice; each k is fitted with ``method``'s clusterer (seed ``seed``) and scored
    (module docstring), and :data:`RULE` picks k from all the scored k's. ``k_max`` larger than the sample
    supports (:data:`MIN_ROWS_PER_CLUSTER` rows per cluster) is lowered with a warning, said in ``reason``.
    Deterministic for a ``seed``.

    Raises :class:`ConfigError` for ``k_min < 2``, ``k_max < k_min``, too few rows for ``k_min``, non-finite or
    non-2-D ``Z``, or an unknown ``method``.
    """
    t0 = time.perf_counter()
    if method not in ("kmeans", "gmm"):
        raise ConfigError(f"choose_k supports method 'kmeans' or 'gmm', got {method!r}")
    check_int("k_min", k_min, minimum=2)
    check_int("k_max", k_max, minimum=2, allow_none=True)
    check_int("max_rows", max_rows, minimum=2)
    check_int("seed", seed, minimum=0)
    if k_max is not None and k_max < k_min:
        raise ConfigError(f"k_max={k_max} is below k_min={k_min}; give a range with k_min <= k_max")
    Z = check_array(Z, name="Z")
    n = Z.shape[0]
    if n > max_rows:
        Z = Z[np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))]
    m = Z.shape[0]
    allowed = m // MIN_ROWS_PER_CLUSTER
    if m < min_sweep_rows(k_min):
        raise ConfigError(f"{m} rows are too few to choose k from k_min={k_min}: the sweep needs at least "
                          f"{min_sweep_rows(k_min)} rows ({MIN_SWEEP_ROWS_PER_K} per cluster); give more "
                          "rows or fix k")
    cap_note = ""
    hi = default_k_max(m) if k_max is None else k_max
    hi = max(hi, k_min)
    if hi > allowed:
        logger.warning("choose_k: k_max=%d is more than %d rows support; capped to %d (%d rows per cluster)",
                       hi, m, allowed, MIN_ROWS_PER_CLUSTER)
        cap_note = f" (k_max capped from {hi} to {allowed}: {m} rows)"
        hi = allowed
    criteria = RULE_NEEDS[RULE] + (("bic",) if method == "gmm" and "bic" not in RULE_NEEDS[RULE] else ())
    scored: dict[int, dict[str, float]] = {}

    def sweep(ks: list[int], stage: str) -> None:
        for k in ks:
            if k in scored:
                continue
            t = time.perf_counter()
            scored[k], _ = score_k(Z, k, method=method, seed=seed, criteria=criteria)
            logger.info("choose_k %s: k=%d %s (%.1f s)", stage, k,
                        ", ".join(f"{c} {v:.4g}" for c, v in scored[k].items()), time.perf_counter() - t)

    grid = _grid(k_min, hi)
    with _one_thread():
        sweep(grid, "coarse")
        coarse_k, _, _ = apply_rule(grid, _table(grid, scored))
        i = grid.index(coarse_k)
        lo_f, hi_f = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        sweep(list(range(lo_f + 1, hi_f)), "fine")
    ks = sorted(scored)
    table = _table(ks, scored)
    chosen, criterion, reason = apply_rule(ks, table)
    seconds = time.perf_counter() - t0
    logger.info("choose_k: k=%d of %d..%d (%s, %d rows, %.0f s): %s", chosen, k_min, hi, method, m, seconds, reason)
    return KSweep(ks=tuple(ks), scores={c: tuple(v) for c, v in table.items()}, chosen=chosen, criterion=criterion,
                  rule=f"{RULE_TEXT[RULE]}, on a coarse grid of k then every k next to its choice.",
                  reason=f"{reason}, among k={k_min}..{hi}{cap_note} on {m} rows.", n_rows=m, seconds=seconds)


def _table(ks: list[int], scored: dict[int, dict[str, float]]) -> dict[str, list[float]]:
    names = sorted({c for v in scored.values() for c in v})
    return {c: [scored[k].get(c, float("nan")) for k in ks] for c in names}


def resolve_k(sample: np.ndarray, cluster: ClusterConfig) -> tuple[ClusterConfig, KSweep | None]:
    """``cluster`` with a number of clusters: as given, or (``k="auto"``) chosen by :func:`~imgclust.cluster.choose_k.choose_k`
    on ``sample`` ``(m, d)``, rows already in the clustering space, with the sweep that chose it. The sweep fits
    the clusterer the method's registry entry names (:attr:`~imgclust.cluster.registry.ClustererSpec.sweep`: the GMM for
    ``gmm``, k-means for the others; agglomerative's and SCAN's k is chosen on the same space by k-means). A method
    that finds its own number (HDBSCAN) is returned unchanged.

    Fewer rows than the sweep needs (:func:`~imgclust.cluster.choose_k.min_sweep_rows`) take the rule of thumb
    ``k = round(sqrt(m / 2))`` (Mardia, Kent & Bibby 1979), kept in ``[k_min, k_max]`` and at most ``m``; logged
    and recorded as the sweep's rule."""
    spec = clusterer_spec(cluster.method)
    if spec.finds_k or fixed_k(cluster) is not None:
        return cluster, None
    m = int(sample.shape[0])
    if m < min_sweep_rows(cluster.k_min):
        k = min(max(cluster.k_min, round(math.sqrt(m / 2))), cluster.k_max or m, m)
        reason = (f"{m} rows are too few for the sweep (it needs {min_sweep_rows(cluster.k_min)} from k_min="
                  f"{cluster.k_min}), so k={k} by the rule of thumb")
        logger.warning("k=auto: %s", reason)
        sweep = KSweep(ks=(k,), scores={}, chosen=k, criterion="rule of thumb",
                       rule="k = round(sqrt(rows / 2)) (Mardia, Kent & Bibby 1979) when the rows are too few to "
                            "sweep.", reason=reason + ".", n_rows=m, seconds=0.0)
        return cluster.model_copy(update={"k": k}), sweep
    sweep = choose_k(sample, method=cast(Literal["kmeans", "gmm"], spec.sweep), k_min=cluster.k_min,
                     k_max=cluster.k_max, seed=cluster.seed)
    logger.info("k=auto: chose k=%d (%s)", sweep.chosen, sweep.reason)
    return cluster.model_copy(update={"k": sweep.chosen}), sweep
