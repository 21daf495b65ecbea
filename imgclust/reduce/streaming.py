"""Dimensionality reduction of feature matrices ``(n, D) -> (n, k)``.

- :class:`StreamingPCA`: Incremental PCA (Ross et al., "Incremental Learning for Robust Visual
  Tracking", IJCV 2008, as implemented by scikit-learn's ``IncrementalPCA``) fitted by streaming
  ``partial_fit`` over batches, so data that does not fit in memory can be reduced; components
  by fixed number or by explained-variance target (Kuznetsov, Semenov & Matrosova, "Image clustering
  using pretrained neural networks").
  The exact alternative, PCA from per-shard scatter statistics summed on workers, is
  :class:`imgclust.reduce.pca.ExactPCA`.
- :class:`UMAPReducer`: UMAP (McInnes, Healy & Melville, arXiv:1802.03426, 2018) fitted on a
  seeded sample and applied to the rest with UMAP's out-of-sample ``transform``.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from sklearn.decomposition import IncrementalPCA

from imgclust.batches import ArrayOrSource, iter_blocks, sample_rows
from imgclust.estimator import Estimator, register_estimator
from imgclust.exceptions import ConfigError
from imgclust.progress import timed
from imgclust.reduce.pca import LinearProjection, select_components
from imgclust.validation import check_array, check_int, l2_normalize

logger = logging.getLogger(__name__)

__all__ = ["StreamingPCA", "UMAPReducer"]

_TIMED_TRANSFORM_ROWS = 5000
"""UMAP transforms of at least this many rows (slow enough to be worth reporting) log their start and end."""
_IPCA_ARRAYS = ("components_", "singular_values_", "mean_", "var_", "explained_variance_",
                "explained_variance_ratio_")


def rechunk(blocks: Iterable[np.ndarray], batch_size: int, min_last: int) -> Iterator[np.ndarray]:
    """Re-cut blocks of any sizes into chunks of exactly ``batch_size`` rows, in order.

    The final chunk holds the remainder; if it has fewer than ``min_last`` rows it is merged into
    the chunk before it (as scikit-learn's ``gen_batches(min_batch_size=...)`` does), so every
    chunk has ``>= min_last`` rows unless the whole input is shorter. One chunk is held back to
    make the merge possible; memory is ``O(2 * batch_size * D)``. Rows kept past the arrival of
    the next block are copied, so a source may refill one buffer.
    """
    pieces: list[np.ndarray] = []
    held = 0
    pending: np.ndarray | None = None
    for block in blocks:
        start = 0
        while start < block.shape[0]:
            take = min(batch_size - held, block.shape[0] - start)
            pieces.append(block[start:start + take])
            held += take
            start += take
            if held == batch_size:
                if pending is not None:
                    yield pending
                pending = np.concatenate(pieces)  # a copy: held across the source's next block
                pieces, held = [], 0
        if pieces:  # a partial chunk outlives this block: copy its view of the source's buffer
            pieces[-1] = pieces[-1].copy()
    rest = np.concatenate(pieces) if pieces else None
    if pending is not None and rest is not None and rest.shape[0] < min_last:
        yield np.concatenate([pending, rest])
        return
    if pending is not None:
        yield pending
    if rest is not None:
        yield rest


@register_estimator
class StreamingPCA(LinearProjection):
    """PCA fitted incrementally over batches (IPCA, Ross et al. 2008), input ``(n, D)``.

    Parameters
    ----------
    n_components, variance_target
        Exactly one. ``n_components`` keeps a fixed ``k``. ``variance_target`` in ``(0, 1]`` fits
        ``min(D, max_components)`` components, then keeps the smallest ``k`` whose cumulative
        ``explained_variance_ratio_`` reaches the target. The ratio is relative to the *total*
        variance of all features seen so far (IPCA tracks per-feature variances exactly), not to
        the variance of the fitted components, so it matches full PCA's ratio.
        If ``max_components`` components do not reach the target, all of them are kept, a warning
        is logged and ``variance_target_met_`` is ``False``.
    max_components
        Cap on the number of components fitted when ``variance_target`` is used.
    batch_size
        Rows per ``partial_fit`` call in :meth:`fit`; input blocks of any size are re-cut to it.
        Must be ``>=`` the number of fitted components.
    whiten
        Scale transformed coordinates to unit variance (divide by ``sqrt(explained_variance_)``).
    l2_normalize_input, l2_normalize_output
        L2-normalise rows before fitting/transforming, and/or the transformed rows.

    Attributes
    ----------
    components_ : (k, D) float32      mean_ : (D,) float32
    explained_variance_, explained_variance_ratio_ : (k,) float32
    n_components_ : int   n_samples_seen_ : int   n_features_in_ : int
    variance_target_met_ : bool | None (``None`` with a fixed ``n_components``)

    Sums are accumulated in float64 per batch; stored results and outputs are float32.
    """

    def __init__(self, *, n_components: int | None = None, variance_target: float | None = None,
                 max_components: int = 256, batch_size: int = 4096, whiten: bool = False,
                 l2_normalize_input: bool = False, l2_normalize_output: bool = False) -> None:
        # LinearProjection's parameters with smaller batches: each one costs an SVD of (k + batch_size, D)
        super().__init__(n_components=n_components, variance_target=variance_target, max_components=max_components,
                         batch_size=batch_size, whiten=whiten, l2_normalize_input=l2_normalize_input,
                         l2_normalize_output=l2_normalize_output)

    def _n_fit_components(self, n_features: int) -> int:
        if self.n_components is not None:
            if self.n_components > n_features:
                raise ConfigError(f"n_components={self.n_components} exceeds the {n_features} input "
                                  "features; choose n_components <= n_features")
            return self.n_components
        return min(n_features, self.max_components)

    def fit(self, X: ArrayOrSource) -> StreamingPCA:
        """Fit on an array ``(n, D)`` or a :data:`BatchSource`, one pass, never concatenating it all.

        Blocks are re-cut to ``batch_size`` rows and fed to ``partial_fit`` in order.
        """
        self._validate_params()
        self._ipca: IncrementalPCA | None = None
        self.components_ = None
        self.n_features_in_ = None  # type: ignore[assignment]
        blocks = iter_blocks(X, batch_size=self.batch_size)
        first = next(blocks, None)
        if first is None:
            raise ConfigError("StreamingPCA.fit got no rows; the input array or batch source is empty")
        k_fit = self._n_fit_components(first.shape[1])
        if self.batch_size < k_fit:
            raise ConfigError(f"batch_size={self.batch_size} is smaller than the {k_fit} components to fit; "
                              f"IPCA needs batches of at least {k_fit} rows: raise batch_size")
        for chunk in rechunk(_chain(first, blocks), self.batch_size, min_last=k_fit):
            self._partial_fit_chunk(chunk, k_fit)
        self._finalize()
        return self

    def partial_fit(self, X: np.ndarray) -> StreamingPCA:
        """Update the fit with one batch ``(n_i, D)`` (the first batch needs ``n_i >= k`` rows)."""
        self._validate_params()
        ipca = getattr(self, "_ipca", None)
        X = check_array(X, n_features=self.n_features_in_ if ipca is not None else None)
        k_fit = ipca.n_components if ipca is not None else self._n_fit_components(X.shape[1])
        self._partial_fit_chunk(X, k_fit)
        self._finalize()
        return self

    def _partial_fit_chunk(self, chunk: np.ndarray, k_fit: int) -> None:
        if self.l2_normalize_input:
            chunk = l2_normalize(chunk)
        if getattr(self, "_ipca", None) is None:
            if chunk.shape[0] < k_fit:
                raise ConfigError(f"the first batch has {chunk.shape[0]} rows but {k_fit} components are "
                                  f"fitted; IPCA needs at least {k_fit} rows in it (or fewer components)")
            self._ipca = IncrementalPCA(n_components=k_fit)
        assert self._ipca is not None
        self._ipca.partial_fit(chunk.astype(np.float64))
        self.n_features_in_ = chunk.shape[1]

    def _finalize(self) -> None:
        ipca = self._ipca
        assert ipca is not None
        ratio = ipca.explained_variance_ratio_
        fixed = ipca.n_components_ if self.n_components is not None else None
        k, self.variance_target_met_ = select_components(ratio, fixed, self.variance_target)
        self.n_components_ = int(k)
        self.components_ = ipca.components_[:k].astype(np.float32)
        self.mean_ = ipca.mean_.astype(np.float32)
        self.explained_variance_ = ipca.explained_variance_[:k].astype(np.float32)
        self.explained_variance_ratio_ = ratio[:k].astype(np.float32)
        self.n_samples_seen_ = int(ipca.n_samples_seen_)

    # The IPCA's own running state (float64) is saved too, so partial_fit can resume after load.
    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray], Any]:
        meta, arrays, _ = super()._get_state()
        ipca = self._ipca
        assert ipca is not None
        for name in _IPCA_ARRAYS:
            arrays["ipca_" + name] = np.asarray(getattr(ipca, name))
        meta["ipca_n_components"] = int(ipca.n_components_)
        meta["ipca_noise_variance"] = float(ipca.noise_variance_)
        return meta, arrays, None

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray], obj: Any) -> None:
        super()._set_state(meta, arrays, obj)
        ipca = IncrementalPCA(n_components=int(meta["ipca_n_components"]))
        for name in _IPCA_ARRAYS:
            setattr(ipca, name, arrays["ipca_" + name])
        ipca.n_components_ = int(meta["ipca_n_components"])
        ipca.n_samples_seen_ = int(meta["n_samples_seen_"])
        ipca.noise_variance_ = float(meta["ipca_noise_variance"])
        ipca.n_features_in_ = int(meta["n_features_in_"])
        self._ipca = ipca


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore torch's intra-op thread count after the block.

    numba's OpenMP threading layer (UMAP, pynndescent) resets the process's OpenMP thread count,
    which torch shares: after a UMAP fit, ``torch.set_num_threads(1)`` can read back another count.
    A deep model trained before and after a UMAP step would then run its convolutions with another
    thread count than a run resumed from a checkpoint, and CPU results are only bit-identical for a
    fixed thread count. Nothing is imported when torch is not loaded.
    """
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if torch is not None and before is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)


@register_estimator
class UMAPReducer(Estimator):
    """UMAP embedding (McInnes et al. 2018) fitted on a seeded sample, input ``(n, D)``.

    ``fit`` draws at most ``fit_sample`` rows uniformly (seeded by ``random_state``, see
    :func:`imgclust.batches.sample_rows`; ``None`` uses every row) and fits ``umap.UMAP`` on
    them; other rows are mapped with UMAP's out-of-sample ``transform``. UMAP's graph
    construction is super-linear in memory and time, which is why only a sample is fitted
    (the scale-out path). With an integer ``random_state`` UMAP runs single-threaded
    and the fitted sample is fixed by the seed. Bit-identical coordinates are still not guaranteed:
    UMAP's SGD can turn a one-ulp input change into another layout, and a second same-seed fit in the
    same process can land elsewhere.

    Attributes
    ----------
    embedding_ : (m, n_components) float32, the fitted sample's coordinates
    sample_indices_ : (m,) int64, positions of the fitted rows in the input
    n_samples_seen_ : int, rows in the input pass; n_features_in_ : int
    umap_ : the fitted ``umap.UMAP`` (saved with pickle, sha256-checked on load)
    """

    _array_attrs = ("embedding_", "sample_indices_")
    _meta_attrs = ("n_features_in_", "n_samples_seen_")
    _object_attr = "umap_"

    def __init__(self, *, n_components: int = 10, n_neighbors: int = 15, min_dist: float = 0.0,
                 metric: str = "euclidean", random_state: int | None = 0,
                 fit_sample: int | None = 50000) -> None:
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.random_state = random_state
        self.fit_sample = fit_sample

    def fit(self, X: ArrayOrSource) -> UMAPReducer:
        """Fit UMAP on a seeded sample of ``X`` (array ``(n, D)`` or :data:`BatchSource`)."""
        check_int("n_components", self.n_components, minimum=1)
        check_int("n_neighbors", self.n_neighbors, minimum=2)
        check_int("fit_sample", self.fit_sample, minimum=2, allow_none=True)
        check_int("random_state", self.random_state, minimum=0, allow_none=True)
        if not self.min_dist >= 0:
            raise ConfigError(f"min_dist must be >= 0, got {self.min_dist}")
        sample = sample_rows(X, self.fit_sample, 0 if self.random_state is None else self.random_state)
        m = sample.rows.shape[0]
        if m <= self.n_neighbors:
            raise ConfigError(f"UMAP needs more rows than n_neighbors={self.n_neighbors}; the fit sample "
                              f"has {m}. Lower n_neighbors or provide more data")
        with keep_torch_threads(), timed("UMAP fit", logger, f"{m} rows x {sample.rows.shape[1]} dims -> "
                                         f"{self.n_components} dims, {self.n_neighbors} neighbours"):
            self._fit_sample(sample)
        return self

    def _fit_sample(self, sample: Any) -> None:
        import umap  # slow import (numba); kept out of `import imgclust`

        model = umap.UMAP(n_components=self.n_components, n_neighbors=self.n_neighbors,
                          min_dist=self.min_dist, metric=self.metric, random_state=self.random_state,
                          n_jobs=1 if self.random_state is not None else -1)
        self.embedding_ = np.asarray(model.fit_transform(sample.rows), dtype=np.float32)
        self.umap_ = model
        self.sample_indices_ = sample.indices
        self.n_samples_seen_ = sample.n_total
        self.n_features_in_ = sample.rows.shape[1]

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Embed new rows ``(n, D) -> (n, n_components)`` float32 with UMAP's ``transform``."""
        self._check_fitted("umap_", "n_features_in_")
        X = self._check_dim(X)
        with keep_torch_threads(), (timed("UMAP transform", logger, f"{X.shape[0]} rows")
                                    if X.shape[0] >= _TIMED_TRANSFORM_ROWS else contextlib.nullcontext()):
            return np.ascontiguousarray(self.umap_.transform(X), dtype=np.float32)
