"""Autoencoder + k-means image clustering (ASCAE / SCAE, the ConvAE of neighbour consistency; N2D as an option).

:class:`AutoencoderClusterer` trains a convolutional autoencoder on the images, embeds them with
the encoder and clusters the embeddings with :class:`~imgclust.cluster.classic.FaissKMeans`:

- ``arch="ascae"`` / ``"scae"``: the asymmetric / symmetric strided conv AEs of the ASCAE paper
  ("基于无监督学习视觉特征的深度聚类方法" (Deep clustering based on unsupervised learning of visual features), Journal of Nanjing University of Aeronautics & Astronautics 53(5), 2021), trained
  with the paper's J = reconstruction + λ·||F - D3||² (:func:`~imgclust.deep.losses.ascae_loss`);
  clustering features are the 50-d F layer.
- ``arch="convae"``: the conv AE of stage 1 of Qian et al., 2025, "Research on Image Deep Clustering
  Algorithm Based on Near Neighbor Consistency Strategy" (MSE, Adam 1e-3, random rotation / translation /
  crop augmentation, embedding size k).
- ``umap_components``: UMAP on the embeddings before clustering, and ``clusterer="gmm"``: a
  full-covariance Gaussian mixture instead of k-means; together the N2D recipe (McConville, Santos-
  Rodriguez, Piechocki & Craddock, "N2D: (Not Too) Deep Clustering via Clustering the Local
  Manifold of an Autoencoded Embedding", ICPR 2020).

Training is seeded and checkpointed with exact resume (:mod:`imgclust.deep.training`).
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from imgclust.deep.embedding import EmbeddingClusterer
from imgclust.deep.losses import ascae_loss
from imgclust.deep.networks import ARCHS, input_geometry
from imgclust.deep.training import TrainingConfig, random_affine
from imgclust.exceptions import ConfigError
from imgclust.validation import check_int

__all__ = ["AutoencoderClusterer", "ARCH_DEFAULTS"]

ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "ascae": {"input_scale": 1.0, "augment": False, "spherical": True},
    "scae": {"input_scale": 1.0, "augment": False, "spherical": True},
    "convae": {"input_scale": 1 / 255, "augment": True, "spherical": False},
}
"""What ``input_scale=None`` / ``augment=None`` / ``spherical=None`` mean for each arch. Scale and
augmentation are what its paper does: ASCAE/SCAE train on raw 0..255 pixels without augmentation
(the ASCAE paper's λ = 20 of J balances the two terms at that scale; with [0, 1] pixels the F term
dominates); ConvAE on [0, 1] pixels with rotation/translation/crop augmentation (Qian et al., 2025).
``spherical`` is ours: ASCAE/SCAE's F layer is a ReLU output with dead units and a few large ones, which
dominate plain Euclidean k-means; k-means on L2-normalised F (cosine k-means, as DeepCluster normalises its
features) clusters by direction instead. ConvAE's linear k-d embedding keeps plain k-means."""


class AutoencoderClusterer(EmbeddingClusterer):
    """Conv autoencoder (ASCAE / SCAE / ConvAE) + optional UMAP + k-means or a GMM on the embeddings.

    Parameters
    ----------
    arch : ``"convae"`` (Qian et al., 2025), ``"ascae"`` or ``"scae"`` (the ASCAE paper).
    n_clusters : k; also the D2 width of ASCAE/SCAE. ``"auto"`` (ConvAE with ``embed_dim`` set, whose network does not
        depend on k): the last stage chooses k by the sweep of :mod:`imgclust.cluster.choose_k`.
    embed_dim : ConvAE embedding size; ``None`` = ``n_clusters`` (as in Qian et al., 2025). ASCAE/SCAE
        always cluster their 50-d F layer.
    lam : λ of the ASCAE loss (20 in the paper, for raw 0..255 pixels); ignored by ConvAE.
    input_scale : pixels are multiplied by this before training; ``None`` (default) picks
        :data:`ARCH_DEFAULTS`: ``1/255`` ([0, 1]) for ConvAE, ``1.0`` (raw 0..255, as the ASCAE
        paper does: it argues normalising grey images hides contrast) for ASCAE/SCAE, because λ's
        balance in J depends on the scale.
    init : ASCAE/SCAE weight init, ``"paper"`` = N(0, 0.1²) (the ASCAE paper's algorithm 1) or
        ``"torch"`` (PyTorch's Kaiming-uniform default). ConvAE always uses PyTorch's default.
    augment : random rotation (±15°), translation (±10 %) and crop (≥ 85 %) of each training
        batch (Qian et al., 2025, stage 1); the reconstruction target is the augmented image. ``None``
        (default): on for ConvAE, off for ASCAE/SCAE (:data:`ARCH_DEFAULTS`).
    umap_components : ``None`` (k-means on the embeddings) or the UMAP output size (N2D uses k).
    umap_neighbors : UMAP ``n_neighbors`` (N2D uses 20).
    clusterer : ``"kmeans"`` (default; the ASCAE and Qian et al. papers) or ``"gmm"`` (full-covariance Gaussian
        mixture, N2D's last stage; meant for UMAP coordinates, see :mod:`imgclust.cluster.gmm`) or ``"scan"``
        (SCAN's neighbour-consistency head on the embeddings, :mod:`imgclust.cluster.scan`; needs ``umap_components=None``).
    kmeans_redo : k-means restarts (k-means++ init), the lowest inertia wins (the paper: 50).
    spherical : k-means on L2-normalised embeddings (cosine k-means; rows are normalised for
        training and prediction). ``None`` (default): :data:`ARCH_DEFAULTS` (on for ASCAE/SCAE, whose
        paper clusters raw F: pass ``False`` for that). Ignored by the GMM.
    consensus_runs : GMM only: EM runs combined by evidence accumulation into the final mixture
        (:class:`~imgclust.cluster.gmm.GaussianMixtureClusterer`); 1 = plain EM.
    training : :class:`~imgclust.deep.training.TrainingConfig`: ``epochs`` (default 50; Qian et al. train
        500, the default is sized for a CPU), ``batch_size`` (256), ``lr`` (Adam, 1e-3), ``seed``, ``device``,
        ``checkpoint_dir`` / ``checkpoint_every`` (exact-resume checkpoints every that many steps and at the
        end; a directory written under other trajectory-relevant parameters or other data is refused).

    Attributes
    ----------
    network_ : the trained module (eval mode); network_spec_ : its JSON spec
    labels_ : (N,) int64 cluster of each training image; n_clusters_ : k fitted (chosen when ``n_clusters="auto"``,
        whose sweep is ``k_sweep_``); cluster_centers_ : (k, D) float32 in the
        space the clusterer ran in (embeddings, or UMAP coordinates): centroids, or GMM means
    kmeans_ : FaissKMeans | None (clusterer="kmeans"); gmm_ : GaussianMixtureClusterer | None
        (clusterer="gmm"); umap_ : UMAPReducer | None
    history_ : list of ``{"epoch", "step", "loss", "seconds"}``; resumed_from_step_ : int | None
    embed_dim_ : embedding width; input_shape_ : per-image shape; input_scale_ : float
    """

    _training_defaults: ClassVar[dict[str, Any]] = {**EmbeddingClusterer._training_defaults, "epochs": 50}

    def __init__(self, *, arch: Literal["ascae", "scae", "convae"] = "convae", n_clusters: int | Literal["auto"] = 10,
                 embed_dim: int | None = None, lam: float = 20.0, input_scale: float | None = None, init: Literal["paper", "torch"] = "paper",
                 augment: bool | None = None, umap_components: int | None = None, umap_neighbors: int = 20,
                 clusterer: Literal["kmeans", "gmm", "scan"] = "kmeans", kmeans_redo: int = 10, spherical: bool | None = None,
                 consensus_runs: int = 1, training: TrainingConfig | None = None) -> None:
        self.arch = arch
        self.n_clusters = n_clusters
        self.embed_dim = embed_dim
        self.lam = lam
        self.input_scale = input_scale
        self.init = init
        self.augment = augment
        self.umap_components = umap_components
        self.umap_neighbors = umap_neighbors
        self.clusterer = clusterer
        self.kmeans_redo = kmeans_redo
        self.spherical = spherical
        self.consensus_runs = consensus_runs
        self._set_training(training)

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {list(ARCHS)}, got {self.arch!r}")
        self._validate_n_clusters(auto=self.arch == "convae" and self.embed_dim is not None)
        check_int("embed_dim", self.embed_dim, minimum=1, allow_none=True)
        check_int("kmeans_redo", self.kmeans_redo, minimum=1)
        check_int("consensus_runs", self.consensus_runs, minimum=1)
        check_int("umap_components", self.umap_components, minimum=1, allow_none=True)
        check_int("umap_neighbors", self.umap_neighbors, minimum=2)
        if not self._input_scale() > 0 or not self.lam >= 0:
            raise ConfigError(f"input_scale must be > 0 and lam >= 0; got input_scale={self.input_scale}, "
                              f"lam={self.lam}")
        self._validate_clusterer()
        if self.init not in ("paper", "torch"):
            raise ConfigError(f"init must be 'paper' or 'torch', got {self.init!r}")

    def _input_scale(self) -> float:
        return float(ARCH_DEFAULTS[self.arch]["input_scale"] if self.input_scale is None else self.input_scale)

    def _spherical(self) -> bool:
        return bool(ARCH_DEFAULTS[self.arch]["spherical"] if self.spherical is None else self.spherical)

    def _augment(self) -> bool:
        return bool(ARCH_DEFAULTS[self.arch]["augment"] if self.augment is None else self.augment)

    def network_spec(self, images: np.ndarray | torch.Tensor) -> dict[str, Any]:
        """The JSON network spec for images ``(N, H, W[, C])`` under the current parameters."""
        spec: dict[str, Any] = {"arch": self.arch, **input_geometry(images)}
        if self.arch == "convae":
            spec["embed_dim"] = self.embed_dim or self.n_clusters
        else:
            spec.update(k=self.n_clusters, init=self.init)
        return spec

    def reconstruction_loss(self, x: torch.Tensor, recon: torch.Tensor, extras: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of this architecture for a batch ``x`` ``(B, C, H, W)`` (scalar):
        ASCAE/SCAE's J with ``lam`` (the ASCAE paper's eq. 2), ConvAE's per-element MSE (Qian et al., 2025).
        IDEC reuses it as its reconstruction term."""
        if self.arch == "convae":
            return F.mse_loss(recon, x)
        return ascae_loss(x, recon, extras["f"], extras["d3"], self.lam)

    def _fingerprint_params(self) -> dict[str, Any]:
        return {**super()._fingerprint_params(), "input_scale": self._input_scale(),
                "augment": self._augment()}  # resolved, not None

    def _loop_name(self) -> str:
        return f"AE[{self.arch}]"

    def _batch_loss(self, net: nn.Module, x: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Reconstruction loss of the (augmented, when ``augment``) batch: the target is the augmented image."""
        xb = x[idx].to(device)
        if self._augment():
            xb = random_affine(xb)
        recon, extras = net(xb)
        return self.reconstruction_loss(xb, recon, extras)
