"""Clustering of feature matrices ``(n, D)`` into labels ``(n,)``.

- :class:`FaissKMeans`: Lloyd's k-means (Lloyd 1982) with faiss (Johnson, Douze & Jégou,
  "Billion-scale similarity search with GPUs", IEEE TBD 2019), trained on a seeded sample,
  assigning every row by streaming; optionally spherical (cosine) k-means.
- :class:`HDBSCANClusterer`: HDBSCAN (Campello, Moulavi & Sander, PAKDD 2013; McInnes & Healy,
  ICDMW 2017, the ``hdbscan`` package) fitted on a sample, new points via approximate predict.
  Part of the ResNet-50 → UMAP → HDBSCAN pipeline recommended by Kuznetsov, Semenov & Matrosova,
  "Image clustering using pretrained neural networks".
- :class:`AgglomerativeClusterer`: hierarchical clustering (Ward 1963 and other linkages)
  for small sets; new points go to the nearest cluster mean.

:func:`create_clusterer` builds any of them by name.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from imgclust.batches import ArrayOrSource, iter_blocks, sample_rows
from imgclust.estimator import Estimator, register_estimator
from imgclust.exceptions import ConfigError, UnknownNameError
from imgclust.progress import Progress, timed
from imgclust.validation import check_array, check_int, l2_normalize

logger = logging.getLogger(__name__)

__all__ = ["FaissKMeans", "HDBSCANClusterer", "AgglomerativeClusterer", "create_clusterer", "list_clusterers"]

_CHUNK = 65536  # rows per assignment step; bounds temporary memory to O(_CHUNK * max(D, k))
_FAISS_MIN_POINTS_PER_CENTROID = 39  # faiss's own default threshold for its "too few points" warning


def cluster_means(X: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Mean ``(k, D)`` float32 of the rows of ``X`` ``(n, D)`` in each cluster ``0..k-1`` of ``labels`` ``(n,)``
    (summed in float64; rows labelled ``< 0``, noise, are left out; an empty cluster's mean is zeros)."""
    keep = labels >= 0
    sums = np.zeros((k, X.shape[1]), dtype=np.float64)
    np.add.at(sums, labels[keep], X[keep])
    counts = np.bincount(labels[keep], minlength=k)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def _faiss() -> Any:
    import faiss  # imported lazily: loads OpenMP/BLAS, which is not needed to import imgclust

    return faiss


def squared_distances(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``(n, k)`` float32 between rows of ``X`` ``(n, D)`` and ``centers`` ``(k, D)``."""
    c2 = np.einsum("ij,ij->i", centers, centers)
    out = np.empty((X.shape[0], centers.shape[0]), dtype=np.float32)
    for start in range(0, X.shape[0], _CHUNK):
        x = X[start:start + _CHUNK]
        d = np.einsum("ij,ij->i", x, x)[:, None] + c2[None, :] - 2.0 * (x @ centers.T)
        out[start:start + _CHUNK] = np.maximum(d, 0.0)
    return out


@register_estimator
class FaissKMeans(Estimator):
    """k-means with faiss: sampled training, streaming assignment of all rows.

    ``fit`` draws at most ``max_points_per_centroid * n_clusters`` rows with a seeded uniform
    sample (from an array, or from a :data:`BatchSource` in one pass; identical either way, see
    :func:`imgclust.batches.sample_rows`) and runs ``faiss.Kmeans`` on them ``n_redo`` times,
    keeping the run of lowest inertia on the sample. Prediction assigns any number of rows chunk
    by chunk.

    ``init="k-means++"`` (default) seeds every run with k-means++ (Arthur & Vassilvitskii, SODA
    2007; scikit-learn's greedy variant, run in torch on the CPU: :mod:`imgclust.cluster.seeding`) on the
    training sample, at a cost of ``O(m * k * D * log k)`` in ``k`` sequential steps: at large ``k``
    it can cost more than the Lloyd iterations, notably on the CPU. ``init="random"`` is faiss's own init
    (k random rows), cheaper for very large ``k`` but prone to merging well-separated clusters.

    ``spherical=True`` L2-normalises inputs (training and prediction) and faiss keeps unit-norm
    centroids, so the nearest centroid is the one of highest cosine similarity (Dhillon & Modha 2001).
    ``gpu=True`` trains and assigns on all visible GPUs (needs ``faiss-gpu``); no GPU is a
    :class:`ConfigError`, never a silent CPU fallback.

    Attributes
    ----------
    cluster_centers_ : (k, D) float32
    inertia_ : float, sum of squared distances of the training sample to its nearest final
        centroid (faiss's last ``obj`` is measured before the final centroid update; this is the
        exact value for the returned centroids, on normalised rows when spherical)
    inertia_full_ : float | None, the same over every row, when ``fit`` was given an array
    n_samples_seen_ : int, rows in the input; n_train_samples_ : int, rows trained on
    n_features_in_ : int
    """

    _array_attrs = ("cluster_centers_",)
    _meta_attrs = ("n_features_in_", "inertia_", "inertia_full_", "n_samples_seen_", "n_train_samples_")

    def __init__(self, *, n_clusters: int, n_iter: int = 25, n_redo: int = 1, spherical: bool = False,
                 seed: int = 0, max_points_per_centroid: int = 256,
                 init: Literal["k-means++", "random"] = "k-means++", backend: Literal["faiss"] = "faiss",
                 gpu: bool = False) -> None:
        self._set_common(n_clusters=n_clusters, n_iter=n_iter, n_redo=n_redo, spherical=spherical, seed=seed,
                         max_points_per_centroid=max_points_per_centroid, init=init)
        self.backend = backend
        self.gpu = gpu

    def _set_common(self, *, n_clusters: int, n_iter: int, n_redo: int, spherical: bool, seed: int,
                    max_points_per_centroid: int, init: Literal["k-means++", "random"]) -> None:
        """Store the parameters shared with other k-means backends (imgclust.cluster.kmeans_torch)."""
        self.n_clusters = n_clusters
        self.n_iter = n_iter
        self.n_redo = n_redo
        self.spherical = spherical
        self.seed = seed
        self.max_points_per_centroid = max_points_per_centroid
        self.init = init

    def _validate_common(self) -> None:
        """Checks of the parameters shared with other k-means backends (imgclust.cluster.kmeans_torch)."""
        check_int("n_clusters", self.n_clusters, minimum=1)
        check_int("n_iter", self.n_iter, minimum=1)
        check_int("n_redo", self.n_redo, minimum=1)
        check_int("max_points_per_centroid", self.max_points_per_centroid, minimum=1)
        check_int("seed", self.seed, minimum=0)
        if self.init not in ("k-means++", "random"):
            raise ConfigError(f"init must be 'k-means++' or 'random', got {self.init!r}")

    def _validate_params(self) -> None:
        self._validate_common()
        if self.backend != "faiss":
            raise ConfigError(f"FaissKMeans backend must be 'faiss', got {self.backend!r}")
        if self.gpu and _faiss().get_num_gpus() == 0:
            raise ConfigError("FaissKMeans(gpu=True) but faiss sees no GPU (faiss.get_num_gpus() == 0); install "
                              "faiss-gpu on a CUDA host or pass gpu=False")

    def fit(self, X: ArrayOrSource, *, init_centroids: np.ndarray | None = None) -> FaissKMeans:
        """Train on a seeded sample of ``X`` (array ``(n, D)`` or :data:`BatchSource`).

        ``init_centroids`` ``(k, D)`` warm-starts a single run from given centroids (``n_redo`` and
        ``init`` are then not used): reclustering starts from the previous version's clusters, so
        a refit on slightly changed data converges to the nearby solution instead of a new one.
        """
        self._validate_params()
        k = self.n_clusters
        if init_centroids is not None:
            init_centroids = check_array(init_centroids, name="init_centroids")
            if init_centroids.shape[0] != k:
                raise ConfigError(f"init_centroids has {init_centroids.shape[0]} rows for n_clusters={k}")
        self._warm = init_centroids
        sample = sample_rows(X, self.max_points_per_centroid * k, self.seed)
        if sample.n_total < k:
            raise ConfigError(f"n_clusters={k} exceeds the {sample.n_total} input rows; use at most "
                              f"{sample.n_total} clusters or provide more data")
        train = l2_normalize(sample.rows) if self.spherical else sample.rows
        n, d = train.shape
        if n < _FAISS_MIN_POINTS_PER_CENTROID * k:
            logger.warning("FaissKMeans: training %d points for %d centroids (< %d per centroid); "
                           "centroids may be poorly estimated", n, k, _FAISS_MIN_POINTS_PER_CENTROID)
        self.n_features_in_ = d
        self.n_samples_seen_ = sample.n_total
        self.n_train_samples_ = n
        self.cluster_centers_, self.inertia_ = self._train(train)
        self._warm = None
        self._index = None
        self.inertia_full_: float | None = None
        if not callable(X):
            self.inertia_full_ = float(self.predict_with_distance(X)[1].sum(dtype=np.float64))
        return self

    def _train(self, train: np.ndarray) -> tuple[np.ndarray, float]:
        """Best of ``n_redo`` faiss runs on ``train`` ``(m, D)``: centroids ``(k, D)`` and inertia."""
        faiss = _faiss()
        k, d = self.n_clusters, train.shape[1]
        common = {"niter": self.n_iter, "spherical": self.spherical, "min_points_per_centroid": 1,
                  "max_points_per_centroid": self.max_points_per_centroid, "verbose": False,
                  "gpu": bool(self.gpu)}
        warm = getattr(self, "_warm", None)
        if warm is not None:
            if warm.shape[1] != d:
                raise ConfigError(f"init_centroids have {warm.shape[1]} features, the data {d}")
            km = faiss.Kmeans(d, k, nredo=1, seed=self.seed, **common)
            with timed(f"k-means from the previous centroids (k={k}, {train.shape[0]} rows)", logger):
                km.train(train, init_centroids=np.ascontiguousarray(l2_normalize(warm) if self.spherical else warm))
            runs = [np.ascontiguousarray(km.centroids, dtype=np.float32)]
        elif self.init == "random":  # faiss's own init: k random sample rows, restarts inside faiss
            km = faiss.Kmeans(d, k, nredo=self.n_redo, seed=self.seed, **common)
            with timed(f"k-means, {self.n_redo} restarts inside faiss (k={k}, {train.shape[0]} rows)", logger):
                km.train(train)
            runs = [np.ascontiguousarray(km.centroids, dtype=np.float32)]
        else:
            from imgclust.cluster.seeding import kmeans_plusplus_numpy

            runs = []
            with Progress(f"k-means restarts (k={k}, {train.shape[0]} rows)", self.n_redo, logger, unit="runs",
                          every=0) as progress:
                for redo in range(self.n_redo):
                    init = kmeans_plusplus_numpy(train, k, self.seed + redo)
                    km = faiss.Kmeans(d, k, nredo=1, seed=self.seed + redo, **common)
                    km.train(train, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
                    runs.append(np.ascontiguousarray(km.centroids, dtype=np.float32))
                    progress.advance()
        best: tuple[np.ndarray, float] | None = None
        for centers in runs:
            self.cluster_centers_, self._index = centers, None
            inertia = float(self._assign(train)[1].sum(dtype=np.float64))
            if best is None or inertia < best[1]:
                best = (centers, inertia)
        assert best is not None
        return best

    def _get_index(self) -> Any:
        index = getattr(self, "_index", None)
        if index is None:
            faiss = _faiss()
            index = faiss.IndexFlatL2(self.n_features_in_)
            index.add(self.cluster_centers_)
            if self.gpu:
                if faiss.get_num_gpus() == 0:
                    raise ConfigError("this FaissKMeans was built with gpu=True but faiss sees no GPU; "
                                      "set est.gpu = False to assign on CPU")
                index = faiss.index_cpu_to_all_gpus(index)
            self._index = index
        return index

    def _assign(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid of already-preprocessed rows: (labels int64 (n,), sq_dist float32 (n,))."""
        index = self._get_index()
        labels = np.empty(X.shape[0], dtype=np.int64)
        dist = np.empty(X.shape[0], dtype=np.float32)
        for start in range(0, X.shape[0], _CHUNK):
            D, Ind = index.search(X[start:start + _CHUNK], 1)
            labels[start:start + _CHUNK] = Ind[:, 0]
            dist[start:start + _CHUNK] = np.maximum(D[:, 0], 0.0)
        return labels, dist

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        return l2_normalize(X) if self.spherical else X

    def predict_with_distance(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Labels ``(n,)`` int64 and squared L2 distance to the assigned centroid ``(n,)`` float32."""
        self._check_fitted()
        X = self._check_dim(X)
        labels = np.empty(X.shape[0], dtype=np.int64)
        dist = np.empty(X.shape[0], dtype=np.float32)
        for start in range(0, X.shape[0], _CHUNK):
            stop = start + _CHUNK
            labels[start:stop], dist[start:stop] = self._assign(self._prepare(X[start:stop]))
        return labels, dist

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Index of the nearest centroid for each row of ``X`` ``(n, D)``: ``(n,)`` int64."""
        return self.predict_with_distance(X)[0]

    def predict_source(self, source: ArrayOrSource) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream ``(labels int64 (n_i,), sq_dist float32 (n_i,))`` for each block of ``source``.

        The fitted check happens here, at the call; blocks are read lazily as the result is iterated.
        """
        self._check_fitted()
        blocks = iter_blocks(source, batch_size=_CHUNK, n_features=self.n_features_in_)
        return (self._assign(self._prepare(block)) for block in blocks)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Squared L2 distances ``(n, k)`` float32 to every centroid (same quantity as
        :meth:`predict_with_distance`; on normalised rows when spherical)."""
        self._check_fitted()
        return squared_distances(self._prepare(self._check_dim(X)), self.cluster_centers_)

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray], obj: Any) -> None:
        super()._set_state(meta, arrays, obj)
        self._index = None


@register_estimator
class HDBSCANClusterer(Estimator):
    """HDBSCAN (Campello et al. 2013; McInnes & Healy 2017) fitted on a seeded sample.

    ``fit`` draws at most ``fit_sample`` rows (seeded by ``random_state``; ``None`` uses all rows,
    which for a :data:`BatchSource` means holding them all in memory) and fits
    ``hdbscan.HDBSCAN(prediction_data=True)``; ``cluster_selection_epsilon`` (Malzer & Baum 2020) merges
    clusters split below that distance (0: off). :mod:`imgclust.cluster.density` chooses the parameters for an embedding. Other rows get labels with
    ``hdbscan.approximate_predict``; ``-1`` is noise.

    Attributes
    ----------
    labels_ : (m,) int64 labels of the fitted sample rows, ``-1`` noise
    probabilities_ : (m,) float32 membership strengths of those rows
    sample_indices_ : (m,) int64 positions of the fitted rows in the input
    n_clusters_ : int; n_samples_seen_ : int; n_features_in_ : int
    hdbscan_ : the fitted ``hdbscan.HDBSCAN`` (saved with pickle, sha256-checked on load)
    """

    _array_attrs = ("labels_", "probabilities_", "sample_indices_")
    _meta_attrs = ("n_features_in_", "n_samples_seen_", "n_clusters_")
    _object_attr = "hdbscan_"

    def __init__(self, *, min_cluster_size: int = 50, min_samples: int | None = None,
                 cluster_selection_method: Literal["eom", "leaf"] = "eom", cluster_selection_epsilon: float = 0.0,
                 fit_sample: int | None = 50000, random_state: int = 0) -> None:
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.cluster_selection_method = cluster_selection_method
        self.cluster_selection_epsilon = cluster_selection_epsilon
        self.fit_sample = fit_sample
        self.random_state = random_state

    def fit(self, X: ArrayOrSource) -> HDBSCANClusterer:
        """Fit on a seeded sample of ``X`` (array ``(n, D)`` or :data:`BatchSource`)."""
        check_int("min_cluster_size", self.min_cluster_size, minimum=2)
        check_int("min_samples", self.min_samples, minimum=1, allow_none=True)
        check_int("fit_sample", self.fit_sample, minimum=2, allow_none=True)
        check_int("random_state", self.random_state, minimum=0)
        if self.cluster_selection_method not in ("eom", "leaf"):
            raise ConfigError("cluster_selection_method must be 'eom' (excess of mass) or 'leaf', "
                              f"got {self.cluster_selection_method!r}")
        if not (isinstance(self.cluster_selection_epsilon, (int, float)) and self.cluster_selection_epsilon >= 0):
            raise ConfigError("cluster_selection_epsilon must be a distance >= 0 (0: off), "
                              f"got {self.cluster_selection_epsilon!r}")
        sample = sample_rows(X, self.fit_sample, self.random_state)
        m = sample.rows.shape[0]
        if m < self.min_cluster_size:
            raise ConfigError(f"HDBSCAN got {m} rows, fewer than min_cluster_size={self.min_cluster_size}; "
                              "lower min_cluster_size or provide more data")
        import hdbscan  # heavy import (numba-free but slow); kept out of `import imgclust`

        model = hdbscan.HDBSCAN(min_cluster_size=self.min_cluster_size, min_samples=self.min_samples,
                                cluster_selection_method=self.cluster_selection_method,
                                cluster_selection_epsilon=float(self.cluster_selection_epsilon),
                                prediction_data=True)
        with timed("HDBSCAN fit", logger, f"{m} rows, min_cluster_size={self.min_cluster_size}"):
            model.fit(sample.rows)
        self.hdbscan_ = model
        self.labels_ = np.asarray(model.labels_, dtype=np.int64)
        self.probabilities_ = np.asarray(model.probabilities_, dtype=np.float32)
        self.sample_indices_ = sample.indices
        self.n_clusters_ = int(self.labels_.max()) + 1
        self.n_samples_seen_ = sample.n_total
        self.n_features_in_ = sample.rows.shape[1]
        if self.n_clusters_ == 0:
            logger.warning("HDBSCAN labelled all %d fitted rows as noise; lower min_cluster_size "
                           "(now %d) or min_samples", m, self.min_cluster_size)
        return self

    def predict_with_strength(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Approximate labels ``(n,)`` int64 (``-1`` noise) and strengths ``(n,)`` float32 in [0, 1]."""
        self._check_fitted()
        X = self._check_dim(X)
        import hdbscan

        labels, strengths = hdbscan.approximate_predict(self.hdbscan_, X)
        return np.asarray(labels, dtype=np.int64), np.asarray(strengths, dtype=np.float32)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Approximate labels ``(n,)`` int64 for new rows ``(n, D)``; ``-1`` is noise."""
        return self.predict_with_strength(X)[0]


_LINKAGES = ("ward", "complete", "average", "single")


@register_estimator
class AgglomerativeClusterer(Estimator):
    """Agglomerative clustering (scikit-learn) for small sets, ``O(n^2)`` memory.

    Refuses more than ``max_samples`` rows. New rows go to the nearest cluster mean (squared L2).

    Attributes
    ----------
    labels_ : (n,) int64; cluster_centers_ : (k, D) float32 cluster means
    n_samples_seen_ : int; n_features_in_ : int
    """

    _array_attrs = ("labels_", "cluster_centers_")
    _meta_attrs = ("n_features_in_", "n_samples_seen_")

    def __init__(self, *, n_clusters: int, linkage: Literal["ward", "complete", "average", "single"] = "ward",
                 max_samples: int = 20000) -> None:
        self.n_clusters = n_clusters
        self.linkage = linkage
        self.max_samples = max_samples

    def fit(self, X: ArrayOrSource) -> AgglomerativeClusterer:
        """Cluster every row of ``X`` (array ``(n, D)`` or :data:`BatchSource`, at most ``max_samples``)."""
        check_int("n_clusters", self.n_clusters, minimum=1)
        check_int("max_samples", self.max_samples, minimum=1)
        if self.linkage not in _LINKAGES:
            raise ConfigError(f"linkage must be one of {_LINKAGES}, got {self.linkage!r}")
        blocks: list[np.ndarray] = []
        n = 0
        for block in iter_blocks(X):
            n += block.shape[0]
            if n > self.max_samples:
                raise ConfigError(f"AgglomerativeClusterer is limited to max_samples={self.max_samples} rows "
                                  f"(O(n^2) memory) and got more; use create_clusterer('kmeans', ...) for "
                                  "large sets, or raise max_samples if memory allows")
            blocks.append(block)
        if n < self.n_clusters:
            raise ConfigError(f"n_clusters={self.n_clusters} exceeds the {n} input rows; use fewer clusters")
        data = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
        from sklearn.cluster import AgglomerativeClustering

        with timed("agglomerative fit", logger, f"{n} rows, {self.linkage} linkage"):
            labels = AgglomerativeClustering(n_clusters=self.n_clusters, linkage=self.linkage).fit_predict(data)
        self.labels_ = np.asarray(labels, dtype=np.int64)
        self.cluster_centers_ = cluster_means(data, self.labels_, self.n_clusters)
        self.n_samples_seen_ = n
        self.n_features_in_ = data.shape[1]
        return self

    def predict_with_distance(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest cluster mean ``(n,)`` int64 and its squared L2 distance ``(n,)`` float32."""
        self._check_fitted()
        d = squared_distances(self._check_dim(X), self.cluster_centers_)
        labels = d.argmin(axis=1).astype(np.int64)
        return labels, d[np.arange(d.shape[0]), labels]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Label ``(n,)`` int64 of the nearest cluster mean for each row of ``X`` ``(n, D)``."""
        return self.predict_with_distance(X)[0]


Clusterer = FaissKMeans | HDBSCANClusterer | AgglomerativeClusterer
_CLUSTERERS: dict[str, type[Clusterer]] = {
    "kmeans": FaissKMeans,
    "hdbscan": HDBSCANClusterer,
    "agglomerative": AgglomerativeClusterer,
}


def list_clusterers() -> list[str]:
    """Names accepted by :func:`create_clusterer`."""
    return sorted(_CLUSTERERS)


def create_clusterer(method: str, **params: Any) -> Clusterer:
    """Build a clusterer by name (``kmeans``, ``hdbscan``, ``agglomerative``) with its parameters."""
    if method not in _CLUSTERERS:
        raise UnknownNameError(f"unknown clustering method {method!r}; choose one of {list_clusterers()}")
    cls = _CLUSTERERS[method]
    accepted = cls._param_names()
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"{cls.__name__} ({method!r}) does not accept {unknown}; its parameters are {accepted}")
    try:
        return cls(**params)
    except TypeError as exc:  # a required parameter (n_clusters) is missing
        raise ConfigError(f"{method!r}: {exc}; its parameters are {accepted}") from exc
