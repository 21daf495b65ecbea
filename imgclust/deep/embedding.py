"""What every train-an-encoder-then-cluster method shares: the training run and the last stages.

:class:`EmbeddingClusterer` is the base of :class:`~imgclust.deep.autoencoder.AutoencoderClusterer` and
:class:`~imgclust.deep.contrastive.ContrastiveClusterer`. Its ``fit`` builds the subclass's network from
its spec, trains it with Adam in the exact-resume loop of :mod:`imgclust.deep.training` (the subclass
gives the loss of one batch), embeds every image and clusters the embeddings with
:meth:`EmbeddingClusterer._fit_clusters`. With ``umap_components`` and
``clusterer="gmm"`` this is the N2D recipe (McConville, Santos-Rodriguez, Piechocki & Craddock, "N2D: (Not
Too) Deep Clustering via Clustering the Local Manifold of an Autoencoded Embedding", ICPR 2020): UMAP with
``min_dist=0`` to a few dimensions, then a full-covariance Gaussian mixture.
"""
from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import torch
from torch import nn

from imgclust.cluster.classic import FaissKMeans
from imgclust.cluster.gmm import GaussianMixtureClusterer
from imgclust.cluster.registry import clusterer_spec
from imgclust.cluster.scan import ScanClusterer
from imgclust.config import AUTO_K, ClusterConfig, Recipe, ReduceConfig, fixed_k
from imgclust.deep.base import DeepEstimator
from imgclust.deep.networks import build_network
from imgclust.deep.training import encode_batched, optimise, to_float_images
from imgclust.devices import mixed_precision
from imgclust.exceptions import ConfigError
from imgclust.models.capping import FitSizes, cap_embedding_fit
from imgclust.models.recipe import fit_clusters, fit_umap
from imgclust.reduce.streaming import UMAPReducer
from imgclust.validation import check_int

logger = logging.getLogger(__name__)

__all__ = ["EmbeddingClusterer", "CLUSTERERS"]

E = TypeVar("E", bound="EmbeddingClusterer")
CLUSTERERS = ("kmeans", "gmm", "scan")
"""What clusters the (UMAP-mapped) embeddings: FaissKMeans, :class:`~imgclust.cluster.gmm.GaussianMixtureClusterer`, or
(embeddings only, no UMAP) :class:`~imgclust.cluster.scan.ScanClusterer`, SCAN's neighbour-consistency head."""


class EmbeddingClusterer(DeepEstimator):
    """Base: cluster an encoder's embeddings, optionally through UMAP, with k-means or a GMM.

    Subclasses define the parameters ``n_clusters`` (an int, or ``"auto"`` where the network does not depend on it:
    the last stage then chooses k by the sweep of :mod:`imgclust.cluster.choose_k`), ``umap_components`` (``None`` = no UMAP),
    ``umap_neighbors``, ``clusterer`` (one of :data:`CLUSTERERS`), ``kmeans_redo``, ``consensus_runs`` and
    ``training`` (:class:`~imgclust.deep.training.TrainingConfig`, counted in epochs), and the hooks :meth:`_validate_params`, :meth:`network_spec`, :meth:`_input_scale`, :meth:`_batch_loss`
    (and optionally :meth:`_spherical`, :meth:`_fingerprint_params`, :meth:`_optimizer`).

    Attributes set by ``fit``: ``network_`` (eval mode), ``network_spec_``, ``history_`` (one row per
    epoch), ``resumed_from_step_``, ``input_shape_``, ``input_scale_``, ``embed_dim_``; by
    :meth:`_fit_clusters`: ``labels_`` ``(N,)`` int64, ``n_clusters_`` (the number of clusters fitted: ``n_clusters``,
    or the chosen one), ``k_sweep_`` (``n_clusters="auto"``: the sweep as
    :meth:`~imgclust.cluster.choose_k.KSweep.to_json` writes it, else ``None``), ``umap_`` (UMAPReducer | None),
    ``kmeans_`` / ``gmm_`` / ``scan_`` (whichever ``clusterer`` names; the others are ``None``).
    """

    _sub_estimators: ClassVar[dict[str, str]] = {"kmeans": "kmeans_", "gmm": "gmm_", "scan": "scan_", "umap": "umap_"}

    _meta_attrs = (*DeepEstimator._meta_attrs, "history_", "n_clusters_", "k_sweep_")
    _tensor_attrs = ("labels_",)
    _resumable_params: ClassVar[tuple[str, ...]] = (
        *DeepEstimator._resumable_params, "kmeans_redo", "umap_components", "umap_neighbors", "clusterer",
        "consensus_runs", "spherical")
    """The clustering stages do not change the training trajectory either."""

    n_clusters: int | Literal["auto"]
    umap_components: int | None
    umap_neighbors: int
    clusterer: str
    kmeans_redo: int
    consensus_runs: int

    # -- subclass hooks
    def network_spec(self, images: np.ndarray | torch.Tensor) -> dict[str, Any]:
        """The JSON network spec (:func:`~imgclust.deep.networks.build_network`) for images ``(N, H, W[, C])``."""
        raise NotImplementedError

    def _input_scale(self) -> float:
        """What uint8 pixels are multiplied by before the network sees them."""
        raise NotImplementedError

    def _batch_loss(self, net: nn.Module, x: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The scalar training loss of the batch ``x[idx]`` (``x`` all images ``(N, C, H, W)``, CPU; ``idx``
        ``(b,)``), augmentation included; it runs under :func:`~imgclust.devices.mixed_precision`."""
        raise NotImplementedError

    def _validate_n_clusters(self, *, auto: bool) -> None:
        """ConfigError unless ``n_clusters`` is an int >= 1, or ``"auto"`` when ``auto`` (the network does not
        depend on it)."""
        if self.n_clusters == AUTO_K and not auto:
            raise ConfigError(f"{type(self).__name__}: n_clusters='auto' needs a network that does not depend on k "
                              "(simclr, or ConvAE with embed_dim set); give k, or choose it first with "
                              "imgclust.cluster.choose_k.choose_k on another representation")
        if self.n_clusters != AUTO_K:
            check_int("n_clusters", self.n_clusters, minimum=1)

    def _validate_clusterer(self) -> None:
        """ConfigError unless ``clusterer`` is one of :data:`CLUSTERERS` and fits ``umap_components``."""
        if self.clusterer not in CLUSTERERS:
            raise ConfigError(f"clusterer must be one of {list(CLUSTERERS)}, got {self.clusterer!r}")
        if not clusterer_spec(self.clusterer).accepts_umap and self.umap_components is not None:
            raise ConfigError("clusterer='scan' clusters the embedding itself (neighbours of its whitened, "
                              "L2-normalised rows), not UMAP coordinates: set umap_components=None "
                              f"(got {self.umap_components})")

    def _optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(net.parameters(), lr=self.lr)

    def _loop_name(self) -> str:
        """How the training loop's progress log lines name this model."""
        return type(self).__name__

    def _spherical(self) -> bool:
        """Whether k-means runs on L2-normalised rows (cosine k-means); ignored by the GMM."""
        return False

    def _check_training_images(self, arr: np.ndarray | torch.Tensor) -> None:
        """Refuse images this method cannot train on (after the generic checks)."""

    # -- training
    def fit(self: E, images: Any, y: Any = None) -> E:
        """Train the encoder on images ``(N, H, W)`` or ``(N, H, W, C)`` (uint8 0..255), then cluster the
        embeddings of every image. ``y`` is ignored (API symmetry). Returns ``self``."""
        arr = self._begin_fit(images)
        self._check_training_images(arr)
        x = to_float_images(arr, scale=self._input_scale())
        device, gen = self._seeded_device()
        spec = self.network_spec(arr)
        net = build_network(spec).to(device)
        opt = self._optimizer(net)
        net.train()

        def step_fn(idx: torch.Tensor, step: int) -> float:
            with mixed_precision(device):
                loss = self._batch_loss(net, x, idx, device)
            return optimise(loss, opt)

        self._train(name=self._loop_name(), n=x.shape[0], generator=gen, stateful={"network": net, "optimizer": opt},
                    step_fn=step_fn, spec=spec, data=(arr,))
        self._set_network(net, spec, arr.shape[1:], self._input_scale(), net.embed_dim)  # type: ignore[arg-type]
        self._fit_clusters(encode_batched(net, x, batch_size=self._inference_batch(), device=device))
        return self

    # -- clustering

    def recipe(self) -> Recipe:
        """The last stage as a :class:`~imgclust.config.Recipe`: the embeddings as they are (no PCA), UMAP with
        ``umap_components`` / ``umap_neighbors`` when set, then ``clusterer`` into ``n_clusters`` (SCAN in the
        whitened space). Built without the pipeline's validation: these parameters are validated by the estimator
        (:meth:`_validate_clusterer`; one cluster is allowed here)."""
        reduce = ReduceConfig.model_construct(method="none", n_components=None, umap_components=self.umap_components,
                                              umap_neighbors=self.umap_neighbors)
        cluster = ClusterConfig.model_construct(method=self.clusterer, k=self.n_clusters, n_redo=self.kmeans_redo,
                                                spherical=self._spherical(), consensus_runs=self.consensus_runs,
                                                scan_whiten=True, seed=self.seed)
        return Recipe.model_construct(reduce=reduce, cluster=cluster)

    def _fit_clusters(self, emb: np.ndarray) -> None:
        """:meth:`recipe` on embeddings ``(N, embed_dim_)``, by the pipeline's implementation of its stages
        (:mod:`imgclust.models.recipe`; UMAP fitted on every row); sets ``labels_``."""
        if not np.isfinite(emb).all():
            raise ConfigError(f"{type(self).__name__} produced NaN/inf embeddings (training diverged); lower lr "
                              "(or input_scale)")
        recipe, sizes = self.recipe(), self._sizes(emb)
        self.umap_: UMAPReducer | None = fit_umap(emb, recipe, sizes, fit_sample=None)
        feats = emb if self.umap_ is None else self.umap_.embedding_
        self.kmeans_: FaissKMeans | None = None
        self.gmm_: GaussianMixtureClusterer | None = None
        self.scan_: ScanClusterer | None = None
        stage = fit_clusters(feats, recipe, sizes)
        setattr(self, f"{self.clusterer}_", stage.fitted.estimator)
        self.n_clusters_: int = int(fixed_k(stage.cluster) or 0)
        self.k_sweep_: dict[str, Any] | None = None if stage.sweep is None else stage.sweep.to_json()
        self.labels_ = self._final_clusterer().predict(feats)
        logger.info("%s: %s on %s features %s -> %d clusters%s", type(self).__name__, self.clusterer,
                    "UMAP" if self.umap_ is not None else "embedding", feats.shape, self.n_clusters_,
                    "" if stage.sweep is None else f" (k=auto: {stage.sweep.reason})")

    def _sizes(self, emb: np.ndarray) -> FitSizes:
        """UMAP and SCAN sizes for the ``(N, D)`` embeddings and :meth:`recipe`, capped to what N rows support
        (:func:`imgclust.models.capping.cap_to_data`, one warning when something is capped); fewer rows than
        ``n_clusters`` raise :class:`ConfigError`."""
        sizes = cap_embedding_fit(emb.shape[0], emb.shape[1], self.recipe())
        if sizes.capped:
            logger.warning("%s: %s", type(self).__name__, sizes.describe())
        return sizes

    def _final_clusterer(self) -> FaissKMeans | GaussianMixtureClusterer | ScanClusterer:
        """The fitted clusterer of the embedding (or UMAP) space: ``gmm_``, ``scan_`` or ``kmeans_``."""
        for attr in ("gmm_", "scan_", "kmeans_"):
            est = getattr(self, attr, None)
            if est is not None:
                return est  # type: ignore[no-any-return]
        self._check_fitted("kmeans_")  # raises NotFittedError with the usual message
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def cluster_centers_(self) -> np.ndarray:
        """``(k, D)`` float32 k-means centroids, GMM means (in UMAP space when ``umap_components`` is set) or the
        mean unit embedding of each SCAN cluster."""
        return self._final_clusterer().cluster_centers_

    def cluster_features(self, images: Any) -> np.ndarray:
        """The features the clusterer runs on: embeddings ``(N, embed_dim_)``, mapped by the fitted UMAP
        (``(N, umap_components)``, out-of-sample transform) when there is one."""
        emb = self.transform(images)
        return emb if self.umap_ is None else self.umap_.transform(emb)

    def predict(self, images: Any) -> np.ndarray:
        """Cluster ``(N,)`` int64 of each image: nearest k-means centroid (most probable GMM component, SCAN's
        neighbour vote) of :meth:`cluster_features`."""
        return self._final_clusterer().predict(self.cluster_features(images))
