"""The last stages every encoder-then-cluster method shares: (UMAP) + k-means or a GMM on embeddings.

:class:`EmbeddingClusterer` is the base of :class:`~imgclust.deep.autoencoder.AutoencoderClusterer` and
:class:`~imgclust.deep.contrastive.ContrastiveClusterer`: a subclass trains its encoder in ``fit``, then
calls :meth:`EmbeddingClusterer._fit_clusters` on the training embeddings. With ``umap_components`` and
``clusterer="gmm"`` this is the N2D recipe (McConville, Santos-Rodriguez, Piechocki & Craddock, "N2D: (Not
Too) Deep Clustering via Clustering the Local Manifold of an Autoencoded Embedding", ICPR 2020): UMAP with
``min_dist=0`` to a few dimensions, then a full-covariance Gaussian mixture.
"""
from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from imgclust.cluster import FaissKMeans
from imgclust.deep import DeepEstimator
from imgclust.exceptions import ConfigError
from imgclust.gmm import GaussianMixtureClusterer
from imgclust.reduce import UMAPReducer

logger = logging.getLogger(__name__)

__all__ = ["EmbeddingClusterer", "CLUSTERERS"]

CLUSTERERS = ("kmeans", "gmm")
"""What clusters the (UMAP-mapped) embeddings: FaissKMeans or :class:`~imgclust.gmm.GaussianMixtureClusterer`."""


class EmbeddingClusterer(DeepEstimator):
    """Base: cluster an encoder's embeddings, optionally through UMAP, with k-means or a GMM.

    Subclasses define the parameters ``n_clusters``, ``umap_components`` (``None`` = no UMAP),
    ``umap_neighbors``, ``clusterer`` (one of :data:`CLUSTERERS`), ``kmeans_redo``, ``consensus_runs`` and
    ``seed``, and :meth:`_spherical` (k-means on L2-normalised rows).

    Attributes set by :meth:`_fit_clusters`: ``labels_`` ``(N,)`` int64; ``umap_`` (UMAPReducer | None);
    ``kmeans_`` / ``gmm_`` (whichever ``clusterer`` names; the other is ``None``).
    """

    _sub_estimators: ClassVar[dict[str, str]] = {"kmeans": "kmeans_", "gmm": "gmm_", "umap": "umap_"}

    n_clusters: int
    umap_components: int | None
    umap_neighbors: int
    clusterer: str
    kmeans_redo: int
    consensus_runs: int
    seed: int

    def _spherical(self) -> bool:
        """Whether k-means runs on L2-normalised rows (cosine k-means); ignored by the GMM."""
        return False

    def _fit_clusters(self, emb: np.ndarray) -> None:
        """UMAP (optional) then k-means or a GMM on embeddings ``(N, embed_dim_)``; sets ``labels_``."""
        if not np.isfinite(emb).all():
            raise ConfigError(f"{type(self).__name__} produced NaN/inf embeddings (training diverged); lower lr "
                              "(or input_scale)")
        feats = emb
        self.umap_: UMAPReducer | None = None
        if self.umap_components is not None:
            self.umap_ = UMAPReducer(n_components=self.umap_components, n_neighbors=self.umap_neighbors,
                                     min_dist=0.0, random_state=self.seed, fit_sample=None).fit(emb)
            feats = self.umap_.embedding_
        self.kmeans_: FaissKMeans | None = None
        self.gmm_: GaussianMixtureClusterer | None = None
        if self.clusterer == "gmm":
            self.gmm_ = GaussianMixtureClusterer(n_clusters=self.n_clusters, fit_sample=None, random_state=self.seed,
                                                 consensus_runs=self.consensus_runs).fit(feats)
        else:
            self.kmeans_ = FaissKMeans(n_clusters=self.n_clusters, n_redo=self.kmeans_redo, seed=self.seed,
                                       spherical=self._spherical()).fit(feats)
        self.labels_ = self._final_clusterer().predict(feats)
        logger.info("%s: %s on %s features %s -> %d clusters", type(self).__name__, self.clusterer,
                    "UMAP" if self.umap_ is not None else "embedding", feats.shape, self.n_clusters)

    def _final_clusterer(self) -> FaissKMeans | GaussianMixtureClusterer:
        """The fitted clusterer of the embedding (or UMAP) space: ``gmm_`` or ``kmeans_``."""
        est = getattr(self, "gmm_", None)
        if est is None:
            est = getattr(self, "kmeans_", None)
        if est is None:
            self._check_fitted("kmeans_")  # raises NotFittedError with the usual message
        return est  # type: ignore[return-value]

    @property
    def cluster_centers_(self) -> np.ndarray:
        """``(k, D)`` float32 k-means centroids or GMM means (in UMAP space when ``umap_components`` is set)."""
        return self._final_clusterer().cluster_centers_

    def cluster_features(self, images: Any) -> np.ndarray:
        """The features the clusterer runs on: embeddings ``(N, embed_dim_)``, mapped by the fitted UMAP
        (``(N, umap_components)``, out-of-sample transform) when there is one."""
        emb = self.transform(images)
        return emb if self.umap_ is None else self.umap_.transform(emb)

    def predict(self, images: Any) -> np.ndarray:
        """Cluster ``(N,)`` int64 of each image: nearest k-means centroid (or most probable GMM
        component) of :meth:`cluster_features`."""
        return self._final_clusterer().predict(self.cluster_features(images))
