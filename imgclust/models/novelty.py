"""Open-set novelty: a calibrated score per image in the model's representation before UMAP.

:class:`NoveltyScorer` keeps a seeded sample of fitted rows as references and scores a new row by its
Euclidean distance to the ``k``-th nearest reference (exact faiss search; a k-NN distance novelty
score, Knorr & Ng, VLDB 1998; Ramaswamy, Rastogi & Shim, SIGMOD 2000). With ``residual=True`` the rows
are :func:`novelty_rows` (the reducer's coordinates plus the norm of what the reducer discards) and
the references are kept *projected* (residual column zero), so the distance is the one in the input
feature space to the k-th nearest reference projected on the PCA subspace::

    score(x)^2 = ||P(x - mean) - P(r_k - mean)||^2 + ||(I - P)(x - mean)||^2

A kind of image the reducer was not fitted on shows up in either term: far from every reference
inside the subspace, or far off the subspace. ``kind="pca-residual"`` scores the distance to a
``n_components``-dim PCA subspace of the references alone (for learned representations with no reducer of
their own, where the k-th neighbour distance sees less than this global score). ``kind="mahalanobis"`` scores
the Mahalanobis distance to one Gaussian fitted on the references, its covariance shrunk towards a multiple of
the identity (``shrinkage`` x the mean eigenvalue added to every eigenvalue), for the feature-map statistics a
``deep:`` extractor stores beside its representation (Lee, Lee, Lee & Shin, "A Simple Unified Framework for
Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018, with one class-free Gaussian).

Which kind a model uses depends on its recipe (:func:`kind_for`): ``knn`` with the residual when the model
has a non-whitening linear reducer (pixels, CNN features); ``mahalanobis`` on the statistics when the features
carry them (``deep:`` extractors of networks with statistics); ``pca-residual`` on the features otherwise (deep
recipes, whose representation has no reducer).

The threshold is split-conformal (Vovk, Gammerman & Shafer, *Algorithmic Learning in a Random World*,
2005; Angelopoulos & Bates, "A Gentle Introduction to Conformal Prediction", 2021): scores of fitted
rows held out from the references, the ``ceil((n + 1)(1 - rate))``-th smallest of ``n``. For a new
row exchangeable with the fitted ones the chance of being flagged (a false novel) is at most ``rate``
and at least ``rate - 1 / (n + 1)`` (:func:`calibrate`).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from imgclust.batches import ArrayOrSource, BatchSource, sample_rows
from imgclust.estimator import Estimator, register_estimator
from imgclust.exceptions import ConfigError
from imgclust.progress import tracked
from imgclust.reduce.pca import LinearProjection
from imgclust.validation import check_int

if TYPE_CHECKING:
    from imgclust.config import ClusterConfig

log = logging.getLogger(__name__)


def min_calibration_rows(rate: float) -> int:
    """Fewest calibration scores that give a finite threshold at ``rate``: ``(n + 1)(1 - rate) <= n``."""
    _check_rate(rate)
    return math.ceil((1.0 - rate) / rate - 1e-9)


def calibrate(scores: np.ndarray, rate: float) -> float:
    """Split-conformal threshold of held-out scores ``(n,)`` at a target false-novel ``rate`` in (0, 1).

    Returns the ``ceil((n + 1)(1 - rate))``-th smallest score; a new exchangeable row has
    ``P(score > threshold) <= rate`` (and ``>= rate - 1 / (n + 1)`` when scores have no ties).
    Raises :class:`ConfigError` when ``rate`` is outside (0, 1), ``scores`` is empty or not finite,
    or there are too few scores for ``rate`` (:func:`min_calibration_rows`).
    """
    _check_rate(rate)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ConfigError("no calibration scores: hold out fitted rows from the references to calibrate on")
    if not np.all(np.isfinite(s)):
        raise ConfigError(f"{int(np.sum(~np.isfinite(s)))} calibration scores are NaN or infinite; "
                          "score finite feature rows")
    rank = math.ceil((s.size + 1) * (1.0 - rate) - 1e-9)
    if rank > s.size:
        raise ConfigError(f"{s.size} calibration scores cannot calibrate a false-novel rate of {rate}: it needs at "
                          f"least {min_calibration_rows(rate)}; hold out more rows or raise the rate")
    return float(np.partition(s, rank - 1)[rank - 1])


def split_sizes(n_rows: int, n_reference: int, n_calibration: int) -> tuple[int, int]:
    """``(references, calibration rows)`` drawn from ``n_rows`` fitted rows: as asked when there are enough, else
    the calibration set keeps its share ``n_calibration / (n_reference + n_calibration)`` of the rows."""
    want = n_reference + n_calibration
    m = min(n_rows, want)
    n_cal = n_calibration if m >= want else int(round(m * n_calibration / want))
    return min(n_reference, m - n_cal), n_cal


def event_limit(n_night: int, n_calibration: int, rate: float, quantile: float = 0.999) -> int:
    """Most novel images a night of ``n_night`` known-kind images flags at a conformal threshold, at ``quantile``.

    With a split-conformal threshold from ``n_calibration`` exchangeable scores, the false-novel probability is
    ``Beta(n + 1 - r, r)``-distributed with ``r = ceil((n + 1)(1 - rate))`` (Vovk 2012, "Conditional validity of
    inductive conformal predictors"), so a night's flagged count is Beta-Binomial; a count above its
    ``quantile`` says the night holds images unlike the fitted ones. Raises :class:`ConfigError` like
    :func:`calibrate` for too few calibration rows.
    """
    from scipy.stats import betabinom

    _check_rate(rate)
    if n_calibration < min_calibration_rows(rate):
        raise ConfigError(f"{n_calibration} calibration scores cannot calibrate a false-novel rate of {rate}")
    if not 0.5 < quantile < 1.0:
        raise ConfigError(f"the event quantile must be in (0.5, 1), got {quantile}")
    if n_night <= 0:
        return 0
    rank = math.ceil((n_calibration + 1) * (1.0 - rate) - 1e-9)
    return int(betabinom.ppf(quantile, n_night, n_calibration + 1 - rank, rank))


def shift_pvalue(calibration: np.ndarray, scores: np.ndarray) -> float:
    """One-sided p-value that a night's novelty ``scores`` ``(n,)`` sit higher, as a whole, than the calibration
    scores ``(m,)`` of fitted rows held out from the references: the Mann-Whitney U test (Mann & Whitney, Ann. Math.
    Statist. 1947), normal approximation with the tie correction. Under exchangeability of the night with the fitted
    rows it is uniform, so ``p < alpha`` fires falsely on a fraction ``alpha`` of known-kind nights; a new kind shifts
    the whole score distribution even where few of its images pass the threshold. 1.0 for an empty night."""
    from scipy.stats import mannwhitneyu

    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        return 1.0
    return float(mannwhitneyu(s, np.asarray(calibration, np.float64).ravel(), alternative="greater",
                              method="asymptotic").pvalue)


def _check_rate(rate: float) -> None:
    if not isinstance(rate, (int, float)) or not 0.0 < float(rate) < 1.0:
        raise ConfigError(f"the target false-novel rate must be in (0, 1), e.g. 0.05; got {rate!r}")


def _residual_norm(X: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """``||(I - P)(x - mean)||`` ``(n, D) -> (n,)`` float32 for orthonormal ``components`` (q, D)."""
    centred = X - mean
    projected = (centred @ components.T) @ components
    return np.linalg.norm(centred - projected, axis=1).astype(np.float32)


def _whitening(ref: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """``(mean (d,), W (d, d))`` float32 of references ``(R, d)``: ``||W (x - mean)||`` is the Mahalanobis distance
    under their covariance with ``shrinkage`` x its mean eigenvalue added to every eigenvalue; the rows of ``W``
    are the principal axes scaled by ``1 / sqrt(eigenvalue)``, largest variance first."""
    ref64 = ref.astype(np.float64)
    mean = ref64.mean(axis=0)
    cov = np.cov(ref64 - mean, rowvar=False).reshape(ref.shape[1], ref.shape[1])
    eigval, eigvec = np.linalg.eigh(cov)
    eigval = np.maximum(eigval[::-1], 0.0) + shrinkage * max(float(eigval.mean()), np.finfo(np.float64).tiny)
    return mean.astype(np.float32), np.ascontiguousarray((eigvec[:, ::-1] / np.sqrt(eigval)).T, np.float32)


def projection_residual(reducer: LinearProjection, X: np.ndarray) -> np.ndarray:
    """Norm of what ``reducer`` discards of each row: ``||(I - P)(x - mean)||`` ``(n, D) -> (n,)`` float32.

    Uses the reducer's input convention (L2-normalised first if it was fitted so). Components are
    orthonormal rows, so this is the reconstruction error of PCA.
    """
    reducer._check_fitted()
    Xc = reducer._check_dim(X)
    if reducer.l2_normalize_input:
        from imgclust.validation import l2_normalize

        Xc = l2_normalize(Xc)
    comp = reducer.components_
    if comp is None:  # pragma: no cover - _check_fitted guards it
        raise ConfigError("the reducer has no components; fit it first")
    return _residual_norm(Xc, reducer.mean_, comp)


def novelty_rows(reducer: LinearProjection, X: np.ndarray) -> np.ndarray:
    """Rows a ``residual=True`` :class:`NoveltyScorer` scores: ``[reducer(x), residual(x)]`` ``(n, D) -> (n, q + 1)``.

    Raises :class:`ConfigError` for a whitening or output-normalising reducer: its coordinates are not in
    the units of the residual, so their sum of squares would not be a distance (use ``residual=False``
    on ``reducer.transform(X)`` instead).
    """
    if reducer.whiten or reducer.l2_normalize_output:
        raise ConfigError(f"{type(reducer).__name__} whitens or L2-normalises its output, so its coordinates and "
                          "the residual have different units; score reducer.transform(X) with residual=False")
    Z = reducer.transform(X)
    return np.ascontiguousarray(np.concatenate([Z, projection_residual(reducer, X)[:, None]], axis=1), np.float32)


NoveltyKind = Literal["knn", "pca-residual", "mahalanobis"]
NOVELTY_KINDS: tuple[NoveltyKind, ...] = ("knn", "pca-residual", "mahalanobis")


def kind_for(reducer: LinearProjection | None, statistics: bool = False) -> tuple[NoveltyKind, bool]:
    """``(kind, residual)`` of the novelty score for a model with this reducer (see module docstring).

    Features with novelty statistics (``statistics``): ``("mahalanobis", False)`` on the statistics. A
    non-whitening linear reducer: ``("knn", True)`` on :func:`novelty_rows`. No reducer, or one whose output is
    whitened or L2-normalised: ``("pca-residual", False)`` on the features."""
    if statistics:
        return "mahalanobis", False
    if reducer is not None and not reducer.whiten and not reducer.l2_normalize_output:
        return "knn", True
    return "pca-residual", False


@register_estimator
class NoveltyScorer(Estimator):
    """A novelty score with a split-conformal threshold (see module docstring).

    Parameters
    ----------
    kind : ``knn`` (distance to the ``k``-th nearest reference), ``pca-residual`` (distance to the
        ``n_components``-dim PCA subspace of the references) or ``mahalanobis`` (Mahalanobis distance to the
        references' mean under their shrunk covariance).
    k : which nearest reference's distance is the score (1 = nearest); ``knn`` only.
    n_reference : reference rows kept (a seeded uniform sample of the fitted rows; bounds the memory,
        ``n_reference * d * 4`` bytes, and the cost per scored row).
    n_calibration : fitted rows held out from the references whose scores set the threshold.
    rate : target false-novel rate of :meth:`predict` (the threshold's calibration level).
    residual : ``knn`` rows are :func:`novelty_rows` (last column = residual norm); references keep that column
        at zero.
    n_components : dimension of the references' PCA subspace: ``pca-residual``'s (capped to ``d // 2``), or
        ``mahalanobis``'s :meth:`space` (whitened principal axes).
    shrinkage : added to every eigenvalue of the references' covariance, as a share of their mean (keeps
        directions the references barely vary in from dominating the distance); ``mahalanobis`` only.
    seed : seed of the sample and of the reference / calibration split.

    Attributes
    ----------
    reference_ : (R, d) float32; calibration_scores_ : (C,) float32, sorted; threshold_ : float;
    mean_ : (d,) and components_ : (q, d) float32: the PCA subspace (``pca-residual``), the whitening map
    ``diag(lambda + s)^(-1/2) V^T`` (``mahalanobis``, q = d), else empty;
    n_features_in_ : d; n_seen_ : fitted rows the sample was drawn from.
    """

    _array_attrs: ClassVar[tuple[str, ...]] = ("reference_", "calibration_scores_", "mean_", "components_")
    _meta_attrs: ClassVar[tuple[str, ...]] = ("n_features_in_", "threshold_", "n_seen_")

    reference_: np.ndarray | None = None
    calibration_scores_: np.ndarray | None = None
    mean_: np.ndarray | None = None
    components_: np.ndarray | None = None
    threshold_: float
    n_seen_: int

    def __init__(self, *, kind: NoveltyKind = "knn", k: int = 20, n_reference: int = 10_000,
                 n_calibration: int = 5_000, rate: float = 0.05, residual: bool = True, n_components: int = 32,
                 shrinkage: float = 1e-3, seed: int = 0) -> None:
        self.kind = kind
        self.k = k
        self.n_reference = n_reference
        self.n_calibration = n_calibration
        self.rate = rate
        self.residual = residual
        self.n_components = n_components
        self.shrinkage = shrinkage
        self.seed = seed
        self._index: Any = None

    def _validate_params(self) -> None:
        if self.kind not in NOVELTY_KINDS:
            raise ConfigError(f"kind must be one of {list(NOVELTY_KINDS)}, got {self.kind!r}")
        if self.kind != "knn" and self.residual:
            raise ConfigError(f"residual=True is for kind='knn'; kind={self.kind!r} scores the rows as they are")
        if not isinstance(self.shrinkage, (int, float)) or not 0.0 < float(self.shrinkage) < 1.0:
            raise ConfigError(f"shrinkage must be in (0, 1) (a share of the mean eigenvalue, e.g. 1e-3); got "
                              f"{self.shrinkage!r}")
        check_int("k", self.k, minimum=1)
        check_int("n_reference", self.n_reference, minimum=1)
        check_int("n_calibration", self.n_calibration, minimum=1)
        check_int("n_components", self.n_components, minimum=1)
        check_int("seed", self.seed, minimum=0)
        _check_rate(self.rate)
        if self.n_reference < self.k:
            raise ConfigError(f"n_reference={self.n_reference} is smaller than k={self.k}; keep at least k references")
        if self.n_calibration < min_calibration_rows(self.rate):
            raise ConfigError(f"n_calibration={self.n_calibration} cannot calibrate rate={self.rate}: it needs at "
                              f"least {min_calibration_rows(self.rate)} rows")

    def fit(self, X: ArrayOrSource) -> NoveltyScorer:
        """Sample ``n_reference + n_calibration`` rows of ``X`` ``(n, d)`` (array or :data:`BatchSource`, one
        pass), split them (seeded) into references and calibration rows, and calibrate the threshold.

        With fewer rows the calibration set keeps its share ``n_calibration / (n_reference + n_calibration)``
        (logged); :class:`ConfigError` when that leaves fewer than ``k`` references or too few calibration rows.
        """
        self._validate_params()
        want = self.n_reference + self.n_calibration
        sample = sample_rows(X, want, self.seed)
        rows = sample.rows
        m = rows.shape[0]
        n_ref, n_cal = split_sizes(m, self.n_reference, self.n_calibration)
        if m < want:
            log.warning("only %d fitted rows: %d references and %d calibration rows instead of %d and %d",
                        m, n_ref, n_cal, self.n_reference, self.n_calibration)
        if n_ref < self.k or n_cal < min_calibration_rows(self.rate):
            raise ConfigError(f"{m} fitted rows give {n_ref} references and {n_cal} calibration rows; k={self.k} and "
                              f"rate={self.rate} need at least {self.k} and {min_calibration_rows(self.rate)}: fit on "
                              "more rows, lower k or raise the rate")
        order = np.random.default_rng(self.seed).permutation(m)
        ref = np.array(rows[order[n_cal : n_cal + n_ref]], dtype=np.float32, order="C")
        d = int(rows.shape[1])
        self.mean_ = np.zeros(0, np.float32)
        self.components_ = np.zeros((0, d), np.float32)
        if self.kind == "knn" and self.residual:
            if d < 2:
                raise ConfigError("residual=True needs rows of novelty_rows(reducer, X) (coordinates + residual)")
            ref[:, -1] = 0.0  # projected references: the residual column of a query adds in quadrature
        elif self.kind == "pca-residual":
            q = min(self.n_components, d // 2, n_ref - 1)
            if q < 1:
                raise ConfigError(f"kind='pca-residual' needs rows of at least 2 features and 2 references; got "
                                  f"{d} features and {n_ref} references")
            if q < self.n_components:
                log.warning("pca-residual novelty: %d components instead of %d (%d features, %d references)",
                            q, self.n_components, d, n_ref)
            mean = ref.astype(np.float64).mean(axis=0)
            _, _, vt = np.linalg.svd(ref.astype(np.float64) - mean, full_matrices=False)
            self.mean_ = mean.astype(np.float32)
            self.components_ = np.ascontiguousarray(vt[:q], np.float32)
        elif self.kind == "mahalanobis":
            self.mean_, self.components_ = _whitening(ref, self.shrinkage)
        self.n_features_in_ = d
        self.n_seen_ = int(sample.n_total)
        self.reference_ = ref
        self._index = None
        cal = np.sort(self.score(rows[order[:n_cal]]))
        self.calibration_scores_ = cal
        self.threshold_ = calibrate(cal, self.rate)
        return self

    @property
    def n_calibration_(self) -> int:
        """Calibration scores the threshold comes from."""
        self._check_fitted("calibration_scores_")
        assert self.calibration_scores_ is not None
        return int(self.calibration_scores_.shape[0])

    def _search_index(self) -> Any:
        if self._index is None:
            import faiss  # imported lazily: loads OpenMP/BLAS, which is not needed to import imgclust

            assert self.reference_ is not None  # checked by the callers' _check_fitted
            self._index = faiss.IndexFlatL2(self.reference_.shape[1])
            self._index.add(self.reference_)
        return self._index

    def score(self, X: np.ndarray) -> np.ndarray:
        """Novelty scores ``(n, d) -> (n,)`` float32, higher = newer: the distance to the ``k``-th nearest
        reference (``knn``) or to the references' PCA subspace (``pca-residual``)."""
        self._check_fitted("reference_", "n_features_in_")
        Xc = self._check_dim(X)
        if Xc.shape[0] == 0:
            return np.zeros(0, np.float32)
        if self.kind == "pca-residual":
            assert self.mean_ is not None and self.components_ is not None
            return _residual_norm(Xc, self.mean_, self.components_)
        if self.kind == "mahalanobis":
            assert self.mean_ is not None and self.components_ is not None
            return np.linalg.norm((Xc - self.mean_) @ self.components_.T, axis=1).astype(np.float32)
        d2, _ = self._search_index().search(Xc, self.k)
        return np.sqrt(np.maximum(d2[:, -1], 0.0)).astype(np.float32)

    def space(self, X: np.ndarray) -> np.ndarray:
        """The coordinates new images are grouped in (:mod:`imgclust.models.candidates`), ``(n, d')``: the rows
        without the residual column (``knn`` with ``residual``); for ``mahalanobis`` the whitened coordinates on
        the references' ``n_components`` principal axes of largest variance (the many low-variance axes the score
        also weighs would drown the groups' density in noise); else as they are. :meth:`reference_space` gives
        the references'."""
        Xc = self._check_dim(X)
        if self.kind == "mahalanobis":
            assert self.mean_ is not None and self.components_ is not None
            axes = self.components_[:self.n_components]
            return np.ascontiguousarray((Xc - self.mean_) @ axes.T, np.float32)
        return np.ascontiguousarray(Xc[:, :-1]) if self.kind == "knn" and self.residual else Xc

    def reference_space(self) -> np.ndarray:
        """The reference rows in the coordinates of :meth:`space` ``(R, d')``."""
        self._check_fitted("reference_")
        assert self.reference_ is not None
        return self.space(self.reference_)

    def threshold_for(self, rate: float) -> float:
        """The conformal threshold of the stored calibration scores at another ``rate`` (no refit)."""
        self._check_fitted()
        assert self.calibration_scores_ is not None
        return calibrate(self.calibration_scores_, rate)

    def shift_pvalue(self, scores: np.ndarray) -> float:
        """:func:`shift_pvalue` of a night's ``scores`` ``(n,)`` against the stored calibration scores."""
        self._check_fitted()
        assert self.calibration_scores_ is not None
        return shift_pvalue(self.calibration_scores_, scores)

    def predict(self, X: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """``is_novel`` ``(n,)`` bool: score above ``threshold`` (default the calibrated :attr:`threshold_`)."""
        self._check_fitted()
        return self.score(X) > (self.threshold_ if threshold is None else threshold)

    def describe(self) -> dict[str, Any]:
        """What ``model.json`` records of the score: kind, parameters, rate, threshold and sample sizes."""
        self._check_fitted()
        assert self.reference_ is not None and self.components_ is not None
        out: dict[str, Any] = {"score": "knn-residual" if self.kind == "knn" and self.residual else self.kind,
                               "rate": self.rate, "threshold": self.threshold_,
                               "n_reference": int(self.reference_.shape[0]), "n_calibration": self.n_calibration_}
        if self.kind == "knn":
            out["k"] = self.k
        elif self.kind == "mahalanobis":
            out["shrinkage"] = self.shrinkage
            out["n_features"] = self.n_features_in_
        else:
            out["n_components"] = int(self.components_.shape[0])
        return out

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray], obj: Any) -> None:
        super()._set_state(meta, arrays, obj)
        self.threshold_ = float(meta["threshold_"])
        self._index = None


def fit_novelty(source: BatchSource, reducer: LinearProjection | None, cluster: ClusterConfig,
                n_rows: int, statistics: BatchSource | None = None) -> NoveltyScorer | None:
    """The calibrated novelty score of a model (see module docstring), fitted on one more pass over the
    features ``(n, D)``, or over their novelty ``statistics`` ``(n, S)`` when given: its kind from the reducer
    and the statistics (:func:`kind_for`), references and calibration rows sampled with
    ``cluster.seed``. None (logged) when ``n_rows`` cannot calibrate ``cluster.novelty_rate``; ``k`` is capped to
    the references there are."""
    kind, residual = kind_for(reducer, statistics=statistics is not None)
    n_ref, n_cal = split_sizes(n_rows, cluster.novelty_references, cluster.novelty_calibration)
    if n_cal < min_calibration_rows(cluster.novelty_rate) or n_ref < 2:
        log.warning("novelty: %d rows give %d calibration rows, too few for a false-novel rate of %s (needs %d); "
                    "the model keeps the per-cluster distance rule (quantile %s)", n_rows, n_cal,
                    cluster.novelty_rate, min_calibration_rows(cluster.novelty_rate), cluster.novelty_quantile)
        return None
    k = min(cluster.novelty_k, n_ref)
    if k < cluster.novelty_k:
        log.warning("novelty: k capped from %d to %d (only %d references)", cluster.novelty_k, k, n_ref)

    def rows() -> Iterator[np.ndarray]:
        for block in (statistics or source)():
            yield novelty_rows(reducer, block) if residual and reducer is not None else block

    scorer = NoveltyScorer(kind=kind, k=k, n_reference=cluster.novelty_references,
                           n_calibration=cluster.novelty_calibration, rate=cluster.novelty_rate, residual=residual,
                           seed=cluster.seed).fit(tracked(rows, "fit: novelty sample pass", n_rows, log))
    log.info("novelty: %s score, threshold %.4g at a false-novel rate of %s (%d references, %d calibration rows)",
             kind, scorer.threshold_, cluster.novelty_rate, scorer.reference_.shape[0]  # type: ignore[union-attr]
             , scorer.n_calibration_)
    return scorer
