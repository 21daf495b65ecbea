"""``simclr``: a contrastively trained conv encoder, then N2D's UMAP + Gaussian-mixture stages.

Reconstruction objectives (ASCAE/SCAE, ConvAE) spend their capacity on what makes images *look* alike
(silhouette, brightness); Fashion-MNIST's upper-body garments (T-shirt / pullover / coat / shirt) share
those, and the autoencoder recipes here merge or split them differently from seed to seed. :class:`ContrastiveClusterer` instead trains :class:`~imgclust.deep.networks.ContrastiveNet`
so that two random augmentations of one image map close together and away from the other images of the
batch (SimCLR: Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020; loss :func:`~imgclust.deep.losses.nt_xent`). The augmentations are those
that suit small grey product photos: a random resized crop (area ``min_crop_area``..1, aspect 3/4..4/3),
a horizontal flip, contrast / brightness jitter, and a random tone curve per view, the grey-level stand-in for
SimCLR's colour distortion (:func:`contrastive_view` says why).
The L2-normalised pooled representation (not the projection head, as in SimCLR) is then mapped by UMAP
(``n_clusters`` dims, 20 neighbours, min_dist 0) and clustered with the GMM consensus, the N2D recipe
(McConville et al., ICPR 2020) of ``n2d`` / ``n2d-scae``.

Training is seeded and checkpointed with exact resume (:mod:`imgclust.deep.training`): the augmentation
draws from the global torch RNG, which every checkpoint saves.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from imgclust.deep.embedding import EmbeddingClusterer
from imgclust.deep.losses import nt_xent
from imgclust.deep.networks import CONTRASTIVE_ENCODERS, input_geometry
from imgclust.deep.training import TrainingConfig
from imgclust.exceptions import ConfigError
from imgclust.validation import check_int

__all__ = ["ContrastiveClusterer", "contrastive_view", "tone_curve_knots", "apply_tone_curve", "TONE_CURVES"]

_FOREGROUND = 0.02
"""Pixels above this intensity (of 1) get the brightness shift; the black background of centred product
photos stays black, so brightness cannot be read off the background."""


TONE_CURVES = ("none", "monotone", "random")
"""Kinds of per-view random tone curve (:func:`tone_curve_knots`)."""


def tone_curve_knots(n: int, kind: str = "monotone", segments: int = 4) -> torch.Tensor:
    """Knots ``(n, segments + 1)`` of ``n`` random piecewise-linear tone curves on ``[0, 1]``.

    Knot ``j`` is the output at input ``j / segments``; knot 0 is 0 (black stays black). ``kind``:

    - ``"monotone"``: the curve rises from 0 to 1 with Dirichlet(1, ..., 1) increments (a random
      histogram remap that keeps the order of intensities);
    - ``"random"``: knots ``1..segments`` uniform in ``[0.2, 1]``, independently (the order of
      intensities is not kept; every foreground band stays visible, at least 20 % intensity at its knot).

    Draws come from the global torch CPU RNG (so they are part of
    :func:`~imgclust.deep.training.rng_state` and a resumed run draws the same curves).
    """
    if kind not in TONE_CURVES or kind == "none":
        raise ConfigError(f"tone curve kind must be 'monotone' or 'random', got {kind!r}")
    check_int("segments", segments, minimum=1)
    if kind == "monotone":
        inc = -torch.log(torch.rand(n, segments).clamp_min(1e-12))  # Exp(1) draws: normalised, Dirichlet(1..1)
        rest = torch.cumsum(inc, dim=1) / inc.sum(dim=1, keepdim=True)
        rest[:, -1] = 1.0  # the cumulative sum can round one step past 1
    else:
        rest = 0.2 + 0.8 * torch.rand(n, segments)
    return torch.cat([torch.zeros(n, 1), rest], dim=1)


def apply_tone_curve(x: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Map images ``(N, C, H, W)`` in [0, 1] through their curves ``knots`` ``(N, S + 1)`` (one per image,
    output at inputs ``0, 1/S, ..., 1``; linear in between) -> same shape, in [0, 1]."""
    if x.ndim != 4 or knots.ndim != 2:
        raise ConfigError(f"apply_tone_curve takes images (N, C, H, W) and knots (N, S + 1); got shapes "
                          f"{tuple(x.shape)} and {tuple(knots.shape)}")
    n, s1 = knots.shape
    if n != x.shape[0] or s1 < 2:
        raise ConfigError(f"knots must be (N, S + 1) with N = {x.shape[0]} images and S >= 1; got {tuple(knots.shape)}")
    segments = s1 - 1
    pos = x.clamp(0, 1) * segments
    lo = pos.floor().clamp(max=segments - 1)
    frac = pos - lo
    k = knots.to(x.device, x.dtype).view(n, 1, 1, s1).expand(n, x.shape[1], x.shape[2] * x.shape[3], s1)
    idx = lo.long().flatten(2).unsqueeze(-1)
    y0 = torch.gather(k, 3, idx).squeeze(-1)
    y1 = torch.gather(k, 3, idx + 1).squeeze(-1)
    return (y0 + frac.flatten(2) * (y1 - y0)).view_as(x).clamp(0, 1)  # rounding can step an ulp past 1


def contrastive_view(x: torch.Tensor, *, min_crop_area: float = 0.3, jitter: float = 0.4,
                     tone_curve: str = "monotone", tone_segments: int = 4) -> torch.Tensor:
    """One random augmentation of each image of a batch ``(N, C, H, W)`` in [0, 1] -> same shape, in [0, 1].

    Per image (parameters from the global torch CPU RNG, so reproducible and part of
    :func:`~imgclust.deep.training.rng_state`): a crop of area fraction in ``[min_crop_area, 1]`` and aspect
    ratio in ``[3/4, 4/3]`` (clipped to the image) at a random position, resized back (bilinear, SimCLR's
    random resized crop); a horizontal flip with probability 1/2; contrast ``× U(1 - jitter, 1 + jitter)``
    and a brightness shift ``U(-jitter/2, jitter/2)`` of the foreground pixels (> 2 % intensity); then,
    unless ``tone_curve="none"``, a random tone curve of ``tone_segments`` linear pieces
    (:func:`tone_curve_knots`, :func:`apply_tone_curve`).

    Why the tone curve: SimCLR's colour distortion exists so that two crops cannot be matched by their
    colour histogram alone (Chen et al. 2020, §3); grey product photos have no colour, but two crops of one
    image still share its grey levels and texture, which contrast / brightness jitter shifts and scales
    but does not reshape. A tone curve per view reshapes the histogram (``"monotone"`` keeps the order of the
    grey levels, ``"random"`` does not), which takes that shortcut away and leaves the shape to match.
    """
    n = x.shape[0]
    area = min_crop_area + torch.rand(n) * (1 - min_crop_area)
    aspect = torch.exp((torch.rand(n) * 2 - 1) * math.log(4 / 3))
    sx, sy = torch.sqrt(area * aspect).clamp(max=1), torch.sqrt(area / aspect).clamp(max=1)
    tx, ty = (torch.rand(n) * 2 - 1) * (1 - sx), (torch.rand(n) * 2 - 1) * (1 - sy)
    flip = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
    zero = torch.zeros(n)
    theta = torch.stack([torch.stack([sx * flip, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    # a crop samples up to half a pixel past the outer pixel centres: clamp there, do not fade to black
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = (1 - jitter + 2 * jitter * torch.rand(n, 1, 1, 1)).to(x.device, x.dtype)
    brightness = ((torch.rand(n, 1, 1, 1) - 0.5) * jitter).to(x.device, x.dtype)
    out = (out * contrast + brightness * (out > _FOREGROUND)).clamp(0, 1)
    if tone_curve == "none":
        return out
    return apply_tone_curve(out, tone_curve_knots(n, tone_curve, tone_segments))


class ContrastiveClusterer(EmbeddingClusterer):
    """SimCLR-trained :class:`~imgclust.deep.networks.ContrastiveNet` + UMAP + GMM consensus (method ``simclr``).

    Parameters
    ----------
    n_clusters : k, or ``"auto"``: training does not depend on k, and the last stage chooses it on the UMAP
        coordinates by the sweep of :mod:`imgclust.cluster.choose_k` (``n_clusters_`` and ``k_sweep_`` say what it chose)
    width : encoder width (``"small"``: channels ``width, 2·width, 4·width``, representation ``4·width``;
        ``"resnet18"``: stages ``width .. 8·width``, representation ``8·width``)
    encoder : ``"small"`` (default; the encoder the other defaults were chosen with) or ``"resnet18"``,
        ResNet-18 with SimCLR's CIFAR stem (:mod:`imgclust.deep.resnet`; ``width=64`` is the published net),
        7.8x (``width`` 32) or 31x (``width`` 64) the FLOPs per 28x28 image of the small encoder at ``width`` 32:
        meant for a GPU
    proj_dim : projection head output (the loss's space; discarded afterwards)
    weight_decay : Adam's weight decay (``training.lr`` its learning rate)
    temperature : τ of NT-Xent (0.5, SimCLR's CIFAR-10 setting)
    min_crop_area, jitter : augmentation strength (:func:`contrastive_view`)
    tone_curve, tone_segments : the per-view random tone curve of :func:`contrastive_view` (one of
        :data:`TONE_CURVES`; ``"none"`` = the augmentation before it was added). ``"monotone"`` (default) was
        chosen on a Fashion-MNIST *train* subset: against ``"none"`` it raised the kNN label agreement of the
        representation and the NMI of the labels, at a slightly lower accuracy; ``"random"`` raised the
        agreement most but lost more accuracy (it splits bags by shape and keeps the pullover / coat / shirt
        group whole)
    umap_components : UMAP output size; ``None`` = k-means / GMM on the representation itself
    umap_neighbors, clusterer, consensus_runs, kmeans_redo : the clustering stages
        (:class:`~imgclust.deep.embedding.EmbeddingClusterer`; default the N2D recipe of ``n2d``).
        ``clusterer="scan"`` with ``umap_components=None``: SCAN's neighbour-consistency head on the
        representation itself (:mod:`imgclust.cluster.scan`; Van Gansbeke et al., 2020, "SCAN: Learning to Classify
        Images without Labels"). On a Fashion-MNIST *train* subset it beat UMAP + GMM with the ResNet-18 encoder
        but not with the small one, so the default stays UMAP + GMM
    training : :class:`~imgclust.deep.training.TrainingConfig` (defaults: 20 epochs, batch 256 (at least 2),
        lr 1e-3); each step sees ``batch_size`` images twice (two views), so a batch has ``2·batch_size - 2``
        negatives per anchor. The default of 20 epochs was chosen on a Fashion-MNIST *train* subset, before the
        tone curve existed

    Attributes
    ----------
    network_, network_spec_, labels_ ``(N,)``, n_clusters_, k_sweep_, umap_, gmm_ / kmeans_ / scan_, history_ (one row per epoch),
    resumed_from_step_, embed_dim_ (``4·width``, or ``8·width`` for ResNet-18), input_shape_, input_scale_ (1/255)
    """

    _params_added: ClassVar[dict[str, Any]] = {"tone_curve": "none", "tone_segments": 4}
    """A ``simclr`` model saved before the tone curve existed was trained without one."""
    _min_batch = 2

    def __init__(self, *, n_clusters: int | Literal["auto"] = 10, width: int = 32, encoder: str = "small", proj_dim: int = 64,
                 weight_decay: float = 1e-6, temperature: float = 0.5,
                 min_crop_area: float = 0.3, jitter: float = 0.4, tone_curve: str = "monotone", tone_segments: int = 4,
                 umap_components: int | None = 10,
                 umap_neighbors: int = 20, clusterer: Literal["kmeans", "gmm", "scan"] = "gmm", consensus_runs: int = 8,
                 kmeans_redo: int = 10, training: TrainingConfig | None = None) -> None:
        self.n_clusters = n_clusters
        self.width = width
        self.encoder = encoder
        self.proj_dim = proj_dim
        self.weight_decay = weight_decay
        self.temperature = temperature
        self.min_crop_area = min_crop_area
        self.jitter = jitter
        self.tone_curve = tone_curve
        self.tone_segments = tone_segments
        self.umap_components = umap_components
        self.umap_neighbors = umap_neighbors
        self.clusterer = clusterer
        self.consensus_runs = consensus_runs
        self.kmeans_redo = kmeans_redo
        self._set_training(training)

    def _validate_params(self) -> None:
        super()._validate_params()
        self._validate_n_clusters(auto=True)
        for name, minimum in (("width", 1), ("proj_dim", 1), ("umap_neighbors", 2),
                              ("consensus_runs", 1), ("kmeans_redo", 1), ("tone_segments", 1)):
            check_int(name, getattr(self, name), minimum=minimum)
        check_int("umap_components", self.umap_components, minimum=1, allow_none=True)
        if not (self.temperature > 0 and self.weight_decay >= 0):
            raise ConfigError(f"temperature must be > 0 and weight_decay >= 0; got temperature={self.temperature}, "
                              f"weight_decay={self.weight_decay}")
        if not (0 < self.min_crop_area <= 1 and 0 <= self.jitter < 1):
            raise ConfigError(f"min_crop_area must be in (0, 1] and jitter in [0, 1); got {self.min_crop_area} "
                              f"and {self.jitter}")
        if self.encoder not in CONTRASTIVE_ENCODERS:
            raise ConfigError(f"encoder must be one of {list(CONTRASTIVE_ENCODERS)}, got {self.encoder!r}")
        if self.tone_curve not in TONE_CURVES:
            raise ConfigError(f"tone_curve must be one of {list(TONE_CURVES)}, got {self.tone_curve!r}")
        self._validate_clusterer()

    def _spherical(self) -> bool:
        return True  # the representation is L2-normalised; k-means on it is cosine k-means

    def _input_scale(self) -> float:
        return 1 / 255

    def _loop_name(self) -> str:
        return "SimCLR"

    def network_spec(self, images: np.ndarray | torch.Tensor) -> dict[str, Any]:
        """The JSON network spec for images ``(N, H, W[, C])`` under the current parameters."""
        return {"arch": "contrastive", **input_geometry(images), "width": self.width, "proj_dim": self.proj_dim,
                "encoder": self.encoder}

    def _optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def _check_training_images(self, arr: np.ndarray | torch.Tensor) -> None:
        if arr.shape[0] < 2:
            raise ConfigError("contrastive training needs at least 2 images (the other images are the negatives)")

    def _batch_loss(self, net: nn.Module, x: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        """NT-Xent between two random views of each image of the batch."""
        if idx.numel() < 2:  # a last batch of one image has no negative: pair it with the next image
            idx = torch.cat([idx, (idx + 1) % x.shape[0]])
        xb = x[idx].to(device)
        v1, v2 = (contrastive_view(xb, min_crop_area=self.min_crop_area, jitter=self.jitter, tone_curve=self.tone_curve,
                                   tone_segments=self.tone_segments) for _ in range(2))
        return nt_xent(net(v1), net(v2), self.temperature)
