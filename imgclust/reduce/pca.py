"""Exact PCA from summed per-block statistics, for data that is streamed or spread over workers.

Each block (a feature shard, a batch) contributes its row count ``n``, mean ``mu`` ``(D,)`` and
centred scatter ``M = sum (x - mu)(x - mu)^T`` ``(D, D)``. Two summaries merge exactly with the
pairwise update of Chan, Golub & LeVeque ("Updating formulae and a pairwise algorithm for computing
sample variances", 1979)::

    n = n_a + n_b,  delta = mu_b - mu_a,  mu = mu_a + delta * n_b / n,
    M = M_a + M_b + (n_a * n_b / n) * delta delta^T

so shards can be summarised in parallel (Dask workers, in any order or tree) and merged once. The
covariance ``M / (n - 1)`` is eigendecomposed (``numpy.linalg.eigh``) into the principal axes:
the same subspace as an SVD-based full PCA (Pearson 1901; Jolliffe, *Principal Component Analysis*,
2002, ch. 3), computed in one pass over the data with memory ``O(D^2)`` per worker.

Compared with :class:`imgclust.reduce.streaming.StreamingPCA` (Incremental PCA), the exact path costs one
``(b, D) x (D, b)`` GEMM per block instead of an SVD of ``(k + b, D)``, is embarrassingly
parallel, and is exact (not an approximation that depends on batch order). Its cost is the
``D x D`` state: 32 MB of float64 at ``D = 2048``, fine for CNN features (``D <= 4096``).

Precision: each block is centred on its own mean in float64 before the product, which avoids the
cancellation of ``sum x x^T - n mu mu^T``. The product runs in float32 BLAS (twice the speed of float64 on
CPUs) over at most :data:`GEMM_ROWS` rows at a time, and those partial products are summed in float64, so
float32 rounding accumulates over at most ``b = min(n, GEMM_ROWS)`` terms whatever the block size. With
``C`` the centred rows and ``u = 2**-24`` (float32 unit roundoff), every entry obeys Higham's inner-product
bound (*Accuracy and Stability of Numerical Algorithms*, 2002, sec. 3.1), for any summation order the
BLAS kernel picks::

    |scatter_jk - (C^T C)_jk| <= gamma(b + 2) * (|C|^T |C|)_jk,   gamma(m) = m u / (1 - m u)

(``+ 2``: rounding the centred values to float32). "Exact" PCA means exact *algebra* (no truncation or
batch-order dependence, unlike Incremental PCA), not bit-identical sums: two CPUs or merge orders agree
within that bound, not to the last bit.
"""
from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgclust.batches import ArrayOrSource, iter_blocks
from imgclust.estimator import Estimator, register_estimator
from imgclust.exceptions import ConfigError, CorruptArtifactError
from imgclust.validation import check_array, check_int, l2_normalize

logger = logging.getLogger(__name__)

__all__ = ["GEMM_ROWS", "ExactPCA", "ScatterStats", "float32_scatter_bound", "merge_all", "select_components"]

GEMM_ROWS = 8192
"""Rows per float32 product in :meth:`ScatterStats.of`: float32 rounding accumulates over at most this many
terms (the precision bound in the module docstring); large enough that the GEMM runs at full speed."""


def float32_scatter_bound(n_terms: int) -> float:
    """``gamma(n_terms + 2)`` for float32: the relative error bound of one scatter entry against
    ``(|C|^T |C|)_jk`` when float32 products accumulate ``n_terms`` rows (see the module docstring)."""
    m = (n_terms + 2) * float(np.finfo(np.float32).eps) / 2
    if m >= 1:
        raise ConfigError(f"no float32 error bound for {n_terms} accumulated terms; use fewer rows per product")
    return m / (1 - m)



@dataclass
class ScatterStats:
    """Sufficient statistics of PCA for a set of rows: ``n``, ``mean`` (D,) and centred ``scatter`` (D, D).

    Stored in float64. ``ScatterStats.of(X)`` summarises a block; :meth:`merge` combines two summaries
    exactly (Chan et al. 1979); :meth:`to_bytes` / :meth:`from_bytes` move them between processes as
    a small ``.npz`` (no pickle).
    """

    n: int
    mean: np.ndarray
    scatter: np.ndarray

    @classmethod
    def of(cls, X: np.ndarray) -> ScatterStats:
        """Summarise a block ``(n, D)`` (float32 or float64, used as float32; ``n >= 1``); the scatter is
        within :func:`float32_scatter_bound` ``(min(n, GEMM_ROWS))`` of exact, entry by entry."""
        X = check_array(X)
        if X.shape[0] == 0:
            raise ConfigError("ScatterStats.of got an empty block; skip empty blocks before summarising")
        mean = X.mean(axis=0, dtype=np.float64)
        scatter = np.zeros((X.shape[1], X.shape[1]), dtype=np.float64)
        for start in range(0, X.shape[0], GEMM_ROWS):  # float32 sums over <= GEMM_ROWS terms, then float64
            C = (X[start:start + GEMM_ROWS] - mean).astype(np.float32)
            scatter += C.T @ C
        return cls(n=int(X.shape[0]), mean=mean, scatter=scatter)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def merge(self, other: ScatterStats) -> ScatterStats:
        """The statistics of the union of both row sets (order-independent up to rounding)."""
        if other.dim != self.dim:
            raise ConfigError(f"cannot merge PCA statistics of {self.dim}-d and {other.dim}-d features; "
                              "were the shards extracted with different backbones?")
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.n * other.n / n)
        return ScatterStats(n=n, mean=mean, scatter=scatter)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=False, n=np.int64(self.n), mean=self.mean, scatter=self.scatter)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str = "<bytes>") -> ScatterStats:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                n, mean, scatter = int(z["n"]), z["mean"], z["scatter"]
        except (OSError, ValueError, KeyError) as exc:
            raise CorruptArtifactError(f"{where} is not a PCA statistics file ({exc}); delete it and re-run") from exc
        if mean.ndim != 1 or scatter.shape != (mean.shape[0], mean.shape[0]) or n < 1:
            raise CorruptArtifactError(f"{where}: inconsistent PCA statistics (n={n}, mean {mean.shape}, "
                                       f"scatter {scatter.shape}); delete it and re-run")
        return cls(n=n, mean=mean, scatter=scatter)


def merge_all(stats: Iterable[ScatterStats]) -> ScatterStats:
    """Merge any number of summaries pairwise as a balanced tree (rounding error grows with log depth)."""
    level = list(stats)
    if not level:
        raise ConfigError("no PCA statistics to merge: no feature rows were summarised")
    while len(level) > 1:
        level = [level[i].merge(level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
    return level[0]


def select_components(ratio: np.ndarray, n_components: int | None, variance_target: float | None
                      ) -> tuple[int, bool | None]:
    """``(k, variance_target_met)``: a fixed ``n_components``, or the fewest whose cumulative ``ratio``
    (explained-variance ratios, descending) reaches ``variance_target`` (all of them, with a warning, if
    none does)."""
    if variance_target is None:
        assert n_components is not None
        return n_components, None
    cum = np.cumsum(ratio)
    reached = np.flatnonzero(cum >= variance_target - 1e-12)
    if reached.size:
        return int(reached[0]) + 1, True
    logger.warning("PCA: %d components explain %.4f of the variance, below variance_target=%.4f; keeping all "
                   "of them (raise max_components for more)", len(ratio), float(cum[-1]) if len(cum) else 0.0,
                   variance_target)
    return len(ratio), False


class LinearProjection(Estimator):
    """Shared parameters, persisted attributes and ``transform`` of the PCA estimators:
    ``(X - mean_) @ components_.T`` ``(n, D) -> (n, k)``.

    Subclasses set ``components_`` (k, D), ``mean_`` (D,), ``explained_variance_`` and
    ``explained_variance_ratio_`` (k,), ``n_components_``, ``n_samples_seen_``, and the
    parameters ``whiten``, ``l2_normalize_input``, ``l2_normalize_output``.
    """

    _array_attrs = ("components_", "mean_", "explained_variance_", "explained_variance_ratio_")
    _meta_attrs = ("n_features_in_", "n_components_", "n_samples_seen_", "variance_target_met_")

    components_: np.ndarray | None
    mean_: np.ndarray
    explained_variance_: np.ndarray
    explained_variance_ratio_: np.ndarray
    n_components_: int
    n_samples_seen_: int

    def __init__(self, *, n_components: int | None = None, variance_target: float | None = None,
                 max_components: int = 256, batch_size: int = 65536, whiten: bool = False,
                 l2_normalize_input: bool = False, l2_normalize_output: bool = False) -> None:
        """The parameters of both PCAs, documented on :class:`ExactPCA` (whose ``batch_size`` default this is)
        and :class:`imgclust.reduce.streaming.StreamingPCA`."""
        self.n_components = n_components
        self.variance_target = variance_target
        self.max_components = max_components
        self.batch_size = batch_size
        self.whiten = whiten
        self.l2_normalize_input = l2_normalize_input
        self.l2_normalize_output = l2_normalize_output

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Project ``(n, D)`` to ``(n, k)`` float32 (whitened / L2-normalised as configured)."""
        self._check_fitted()
        X = self._check_dim(X)
        if self.l2_normalize_input:
            X = l2_normalize(X)
        assert self.components_ is not None  # checked by _check_fitted
        Z = (X - self.mean_) @ self.components_.T
        if self.whiten:
            Z /= np.maximum(np.sqrt(self.explained_variance_), np.finfo(np.float32).eps)
        if self.l2_normalize_output:
            Z = l2_normalize(Z)
        return np.ascontiguousarray(Z, dtype=np.float32)

    def _validate_params(self) -> None:
        """Exactly one of ``n_components`` / ``variance_target``, both in range; positive sizes."""
        name = type(self).__name__
        if (self.n_components is None) == (self.variance_target is None):
            raise ConfigError(f"{name} needs exactly one of n_components (a fixed k) or variance_target "
                              f"(e.g. 0.95); got n_components={self.n_components}, "
                              f"variance_target={self.variance_target}")
        check_int("n_components", self.n_components, minimum=1, allow_none=True)
        if self.variance_target is not None and not 0.0 < self.variance_target <= 1.0:
            raise ConfigError(f"variance_target must be in (0, 1], got {self.variance_target}")
        check_int("max_components", self.max_components, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)

    def fit(self, X: ArrayOrSource) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        """``fit(X).transform(X)`` for an in-memory array ``(n, D) -> (n, k)``."""
        return self.fit(X).transform(X)


@register_estimator
class ExactPCA(LinearProjection):
    """PCA from summed scatter statistics (one pass, parallel over blocks), input ``(n, D)``.

    Parameters
    ----------
    n_components, variance_target
        Exactly one: a fixed ``k``, or the fewest components whose explained-variance ratio (of the
        total variance, trace of the covariance) reaches the target in ``(0, 1]``.
    max_components
        Cap on ``k`` with ``variance_target``.
    batch_size
        Rows per block when :meth:`fit` streams an array or a batch source.
    whiten, l2_normalize_input, l2_normalize_output
        As :class:`imgclust.reduce.streaming.StreamingPCA`. With ``l2_normalize_input`` the statistics must be
        computed on normalised rows too (:meth:`fit` does it; for :meth:`fit_stats` the caller does).

    Attributes
    ----------
    components_ : (k, D) float32, rows are unit principal axes, sign fixed so that the entry of largest
        magnitude is positive (deterministic across runs and merge orders)
    mean_ : (D,) float32      explained_variance_, explained_variance_ratio_ : (k,) float32
    n_components_, n_samples_seen_, n_features_in_ : int   variance_target_met_ : bool | None
    """

    def statistics(self, X: ArrayOrSource) -> ScatterStats:
        """Summarise an array ``(n, D)`` or a batch source block by block (rows L2-normalised first
        when ``l2_normalize_input``); what one Dask worker computes for its shards."""
        parts = [ScatterStats.of(l2_normalize(b) if self.l2_normalize_input else b)
                 for b in iter_blocks(X, batch_size=self.batch_size)]
        if not parts:
            raise ConfigError("ExactPCA got no rows; the input array or batch source is empty")
        return merge_all(parts)

    def fit(self, X: ArrayOrSource) -> ExactPCA:
        """Fit on an array ``(n, D)`` or a :data:`BatchSource` in one pass."""
        self._validate_params()
        return self.fit_stats(self.statistics(X))

    def fit_stats(self, stats: ScatterStats) -> ExactPCA:
        """Fit from merged statistics (e.g. :func:`merge_all` of per-shard summaries)."""
        self._validate_params()
        D = stats.dim
        if self.n_components is not None and self.n_components > D:
            raise ConfigError(f"n_components={self.n_components} exceeds the {D} input features; "
                              "choose n_components <= n_features")
        if stats.n < 2:
            raise ConfigError(f"PCA needs at least 2 rows, got {stats.n}")
        cov = stats.scatter / (stats.n - 1)
        w, V = np.linalg.eigh((cov + cov.T) * 0.5)  # ascending; symmetrised against rounding
        order = np.argsort(w)[::-1]
        w = np.clip(w[order], 0.0, None)
        V = V[:, order]
        total = float(np.trace(cov))
        ratio = w / total if total > 0 else np.zeros_like(w)
        k_cap = D if self.n_components is not None else min(D, self.max_components)
        k, met = select_components(ratio[:k_cap], self.n_components, self.variance_target)
        comps = V[:, :k].T
        signs = np.sign(comps[np.arange(k), np.argmax(np.abs(comps), axis=1)])
        comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
        self.components_ = comps.astype(np.float32)
        self.mean_ = stats.mean.astype(np.float32)
        self.explained_variance_ = w[:k].astype(np.float32)
        self.explained_variance_ratio_ = ratio[:k].astype(np.float32)
        self.n_components_ = int(k)
        self.n_samples_seen_ = int(stats.n)
        self.n_features_in_ = D
        self.variance_target_met_ = met
        return self
