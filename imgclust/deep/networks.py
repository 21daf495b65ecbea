"""Convolutional autoencoders (and a contrastive encoder) for clustering raw images.

- :class:`ASCAE` / :class:`SCAE`: the asymmetric / symmetric strided-conv autoencoders of the
  ASCAE paper ("基于无监督学习视觉特征的深度聚类方法", Deep clustering based on unsupervised learning of visual
  features, 南京航空航天大学学报 / Journal of Nanjing University of Aeronautics & Astronautics 53(5), 2021):
  no pooling, conv strides 3, 2, 1, 1, clustering features F = the 1x1 output of C4.
- :class:`ConvAE`: the conv autoencoder of the neighbour-consistency method (Qian et al., 2025, "Research
  on Image Deep Clustering Algorithm Based on Near Neighbor Consistency Strategy"): 32/64/128/256 channels, stride 2, batch-norm, a linear embedding of size k.
- :class:`ContrastiveNet`: a small VGG-style conv encoder (or ResNet-18, :mod:`imgclust.deep.resnet`) with a SimCLR projection head (Chen et al.,
  ICML 2020), trained by :mod:`imgclust.deep.contrastive`; it has no decoder.

Every network maps ``(N, C, H, W)`` float32 images to ``forward(x) -> (recon (N, C, H, W),
extras)`` and ``encode(x) -> (N, embed_dim)``, and is rebuilt from a JSON spec with
:func:`build_network` (what a saved estimator stores). Transposed convs use per-axis output
padding computed from the encoder's sizes, so any image size the encoder accepts (28x28, 64x64,
non-square) is reconstructed at exactly its input size.
"""
from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from imgclust.exceptions import ConfigError, UnknownNameError

logger = logging.getLogger(__name__)

__all__ = ["ASCAE", "SCAE", "ConvAE", "ContrastiveNet", "MultiViewNet", "build_network", "input_geometry", "ARCHS", "CONTRASTIVE_ENCODERS", "conv_out", "ImageSize"]

ImageSize = int | tuple[int, int]
ARCHS = ("ascae", "scae", "convae")
CONTRASTIVE_ENCODERS = ("small", "resnet18")
"""Encoders of :class:`ContrastiveNet`."""
ASCAE_F_DIM = 50
"""Width of ASCAE's F layer (the 50 C4 filters, 1x1 each): the clustering features."""
CONVAE_CHANNELS = (32, 64, 128, 256)


def _hw(image_size: ImageSize) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        return image_size, image_size
    if (isinstance(image_size, (tuple, list)) and len(image_size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in image_size)):
        return int(image_size[0]), int(image_size[1])
    raise ConfigError(f"image_size must be an int or (height, width), got {image_size!r}")


def conv_out(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    """Output length of a convolution along one axis (PyTorch's floor formula)."""
    return (size + 2 * padding - kernel) // stride + 1


def _output_padding(target: int, size_in: int, kernel: int, stride: int, padding: int = 0) -> int:
    """The ``output_padding`` that makes a transposed conv map ``size_in`` back to ``target``."""
    op = target - ((size_in - 1) * stride - 2 * padding + kernel)
    if not 0 <= op < stride and not (op == 0 and stride == 1):
        raise ConfigError(f"cannot invert a conv (kernel {kernel}, stride {stride}) from {size_in} to {target}")
    return op


class ASCAE(nn.Module):
    """Asymmetric strided convolutional autoencoder (the ASCAE paper, Fig. 2).

    Encoder: C1 25 filters 3x3 stride 3 (non-overlapping patches), C2 50 3x3 stride 2, C3 50 3x3
    stride 1, C4 50 filters whose kernel is C3's remaining spatial size (so C4 is 1x1), no
    pooling; F = flattened C4 ``(N, 50)``; D1 (50 units, ASCAE only), D2 (``k`` units, ReLU, not
    softmax: softmax collapsed the clustering in the paper). Decoder: D3 (50 units, reconstructs F)
    -> T4 (inverse of C4) -> T3 -> T2 (50 -> 25) -> T1 (25 -> C) back to ``(N, C, H, W)``. Every
    hidden layer uses ReLU (the paper); the output layer is linear, so raw 0..255 input works.

    ``init="paper"`` draws every weight from N(0, 0.1²) with zero biases (algorithm 1 of the
    paper); ``init="torch"`` keeps PyTorch's default (Kaiming-uniform) init.
    Sizes for 28x28: 28 -> 9 -> 4 -> 2 -> 1; for 64x64: 64 -> 21 -> 10 -> 8 -> 1.

    ``forward`` returns ``recon`` and ``extras = {"f": (N, 50), "d2": (N, k), "d3": (N, 50)}``:
    ``f`` and ``d3`` are ``b`` and ``g`` of the loss (:func:`imgclust.deep.losses.ascae_loss`).
    """

    symmetric: bool = False

    def __init__(self, in_channels: int, image_size: ImageSize, k: int, *, d1_units: int = ASCAE_F_DIM,
                 init: Literal["paper", "torch"] = "paper") -> None:
        super().__init__()
        h, w = _hw(image_size)
        s1 = (conv_out(h, 3, 3), conv_out(w, 3, 3))
        s2 = (conv_out(s1[0], 3, 2), conv_out(s1[1], 3, 2))
        s3 = (conv_out(s2[0], 3, 1), conv_out(s2[1], 3, 1))
        if min(s3) < 1:
            raise ConfigError(f"ASCAE needs images of at least 21x21 pixels (28x28 in the paper); got {h}x{w}. Upscale smaller images first")
        if in_channels < 1 or k < 1:
            raise ConfigError(f"in_channels and k must be >= 1, got {in_channels} and {k}")
        self.in_channels, self.image_size, self.k = in_channels, (h, w), k
        self.embed_dim = ASCAE_F_DIM
        self.c1 = nn.Conv2d(in_channels, 25, 3, stride=3)
        self.c2 = nn.Conv2d(25, 50, 3, stride=2)
        self.c3 = nn.Conv2d(50, 50, 3, stride=1)
        self.c4 = nn.Conv2d(50, ASCAE_F_DIM, s3, stride=1)
        self.d1 = None if self.symmetric else nn.Linear(ASCAE_F_DIM, d1_units)
        self.d2 = nn.Linear(ASCAE_F_DIM if self.symmetric else d1_units, k)
        self.d3 = nn.Linear(k, ASCAE_F_DIM)
        self.t4 = nn.ConvTranspose2d(ASCAE_F_DIM, 50, s3, stride=1)
        self.t3 = nn.ConvTranspose2d(50, 50, 3, stride=1)
        self.t2 = nn.ConvTranspose2d(50, 25, 3, stride=2, output_padding=(
            _output_padding(s1[0], s2[0], 3, 2), _output_padding(s1[1], s2[1], 3, 2)))
        self.t1 = nn.ConvTranspose2d(25, in_channels, 3, stride=3, output_padding=(
            _output_padding(h, s1[0], 3, 3), _output_padding(w, s1[1], 3, 3)))
        if init == "paper":
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                    nn.init.normal_(module.weight, mean=0.0, std=0.1)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        elif init != "torch":
            raise ConfigError(f"init must be 'paper' or 'torch', got {init!r}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, H, W)`` -> F features ``(N, 50)`` (the paper clusters these, not D2)."""
        h = F.relu(self.c1(x))
        h = F.relu(self.c2(h))
        h = F.relu(self.c3(h))
        return F.relu(self.c4(h)).flatten(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(N, C, H, W)`` -> ``(recon (N, C, H, W), {"f": (N, 50), "d2": (N, k), "d3": (N, 50)})``."""
        f = self.encode(x)
        h = f if self.d1 is None else F.relu(self.d1(f))
        d2 = F.relu(self.d2(h))
        d3 = F.relu(self.d3(d2))
        h = F.relu(self.t4(d3[:, :, None, None]))
        h = F.relu(self.t3(h))
        h = F.relu(self.t2(h))
        return self.t1(h), {"f": f, "d2": d2, "d3": d3}


class SCAE(ASCAE):
    """The symmetric variant of :class:`ASCAE` (the ASCAE paper, §2.3): identical but without D1, so F -> D2 -> D3."""

    symmetric = True


class ConvAE(nn.Module):
    """Conv autoencoder of Qian et al., 2025, "Research on Image Deep Clustering Algorithm Based on Near Neighbor
    Consistency Strategy", stage 1.

    Encoder: four 3x3 stride-2 convs (32, 64, 128, 256 channels, padding 1), each followed by
    BatchNorm and ReLU, then a linear layer to ``embed_dim`` (= k in the paper) with no activation.
    Decoder: the mirror image (linear + ReLU, three transposed convs with BatchNorm + ReLU, a final
    linear transposed conv to ``in_channels``).

    Deviation from the paper: it also max-pools after every conv, but stride 2 plus 2x2 pooling
    shrinks 28x28 to 0x0 after the third block (28 -> 7 -> 2 -> 0), so the pools are dropped and
    the stride-2 convs alone downsample (28 -> 14 -> 7 -> 4 -> 2; 64 -> 32 -> 16 -> 8 -> 4).

    ``forward`` returns ``recon (N, C, H, W)`` and ``{"z": (N, embed_dim)}``.
    """

    def __init__(self, in_channels: int, image_size: ImageSize, embed_dim: int,
                 channels: tuple[int, ...] = CONVAE_CHANNELS) -> None:
        super().__init__()
        h, w = _hw(image_size)
        if in_channels < 1 or embed_dim < 1:
            raise ConfigError(f"in_channels and embed_dim must be >= 1, got {in_channels} and {embed_dim}")
        if min(h, w) < 2:
            raise ConfigError(f"ConvAE needs images of at least 2x2 pixels; got {h}x{w}")
        self.in_channels, self.image_size, self.embed_dim = in_channels, (h, w), embed_dim
        sizes = [(h, w)]
        enc: list[nn.Module] = []
        c_in = in_channels
        for c_out in channels:
            enc += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            sizes.append((conv_out(sizes[-1][0], 3, 2, 1), conv_out(sizes[-1][1], 3, 2, 1)))
            c_in = c_out
        self.encoder = nn.Sequential(*enc)
        self._bottleneck = (channels[-1], *sizes[-1])
        flat = channels[-1] * sizes[-1][0] * sizes[-1][1]
        self.embed = nn.Linear(flat, embed_dim)
        self.unembed = nn.Linear(embed_dim, flat)
        dec: list[nn.Module] = []
        outs = [*reversed(channels[:-1]), in_channels]
        for i, c_out in enumerate(outs):
            (ti, tj), (si, sj) = sizes[-2 - i], sizes[-1 - i]
            dec.append(nn.ConvTranspose2d(channels[-1 - i], c_out, 3, stride=2, padding=1, output_padding=(
                _output_padding(ti, si, 3, 2, 1), _output_padding(tj, sj, 3, 2, 1))))
            if i < len(outs) - 1:
                dec += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, H, W)`` -> embeddings ``(N, embed_dim)``."""
        return self.embed(self.encoder(x).flatten(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(N, C, H, W)`` -> ``(recon (N, C, H, W), {"z": (N, embed_dim)})``."""
        z = self.encode(x)
        h = F.relu(self.unembed(z)).view(-1, *self._bottleneck)
        return self.decoder(h), {"z": z}


def extractor_method(net: nn.Module) -> str:
    """The method of ``net`` whose output the ``deep:`` extractor stores: ``encode_with_statistics`` for a network
    with novelty statistics (``statistics_dim > 0``, :class:`ContrastiveNet`), else ``encode``."""
    return "encode_with_statistics" if getattr(net, "statistics_dim", 0) else "encode"


class ContrastiveNet(nn.Module):
    """Conv encoder + projection head for contrastive training (SimCLR: Chen, Kornblith, Norouzi & Hinton,
    "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020).

    Encoder ``"small"`` (the default): 3x3 conv + BatchNorm + ReLU blocks of ``width``, 2x2 max-pool,
    ``2·width``, 2x2 max-pool, then two blocks of ``4·width`` and a global average pool, a ``4·width``
    representation. Encoder ``"resnet18"``: ResNet-18 with SimCLR's CIFAR stem
    (:func:`~imgclust.deep.resnet.resnet18_encoder`), an ``8·width`` representation (``width=64`` is the
    published net). ``encode(x)`` is the representation L2-normalised (what is clustered; the loss compares
    directions too). Head (training only, discarded for clustering as SimCLR does): Linear
    ``embed_dim -> embed_dim``, ReLU, Linear ``-> proj_dim``; ``forward(x)`` returns ``(N, proj_dim)``.
    Any image of at least 4x4 pixels works (the pooling is global).
    """

    def __init__(self, in_channels: int, image_size: ImageSize, *, width: int = 32, proj_dim: int = 64,
                 encoder: str = "small") -> None:
        super().__init__()
        h, w = _hw(image_size)
        if in_channels < 1 or width < 1 or proj_dim < 1:
            raise ConfigError(f"in_channels, width and proj_dim must be >= 1, got {in_channels}, {width}, {proj_dim}")
        if min(h, w) < 4:
            raise ConfigError(f"ContrastiveNet needs images of at least 4x4 pixels (two 2x2 pools); got {h}x{w}")
        if encoder not in CONTRASTIVE_ENCODERS:
            raise ConfigError(f"ContrastiveNet encoder must be one of {list(CONTRASTIVE_ENCODERS)}, got {encoder!r}")

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        if encoder == "resnet18":
            from imgclust.deep.resnet import resnet18_encoder

            self.encoder = resnet18_encoder(in_channels, width)
            self.embed_dim = 8 * width
        else:
            self.encoder = nn.Sequential(*block(in_channels, width), nn.MaxPool2d(2), *block(width, 2 * width),
                                         nn.MaxPool2d(2), *block(2 * width, 4 * width), *block(4 * width, 4 * width),
                                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.embed_dim = 4 * width
        d = self.embed_dim
        self.statistics_dim = 2 * d  # columns encode_with_statistics adds after the representation
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, proj_dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, H, W)`` -> unit-norm representations ``(N, embed_dim)``."""
        return F.normalize(self.encoder(x), dim=1)

    def encode_with_statistics(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, H, W)`` -> ``(N, embed_dim + statistics_dim)``: :meth:`encode`, then the last feature map's
        per-channel mean (the pooled representation before normalisation) and spatial standard deviation.

        The statistics are what the L2 normalisation and the average pool discard; a Gaussian on them scores
        novelty (Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution Samples
        and Adversarial Attacks", NeurIPS 2018). The first ``embed_dim`` columns equal :meth:`encode`'s.
        """
        *body, pool, flatten = self.encoder
        fmap = nn.Sequential(*body)(x)
        h = flatten(pool(fmap))  # the same modules as encoder(x), so encode's columns are unchanged
        spread = fmap.float().std(dim=(2, 3), unbiased=False)  # float32 also under a GPU's bfloat16 autocast
        return torch.cat([F.normalize(h, dim=1).float(), h.float(), spread], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, H, W)`` -> projections ``(N, proj_dim)`` (the contrastive loss's input)."""
        return self.head(self.encoder(x))  # type: ignore[no-any-return]


class MultiViewNet(nn.Module):
    """Several views of an image side by side (the encoder of ``n2d-ensemble``, :mod:`imgclust.deep.ensemble`).

    View 0 (when ``pixel_components > 0``): the pixels projected on their principal axes, a frozen linear
    map ``(x - mean) @ components.T`` held in buffers (set from a fitted PCA). Views 1..: the F layers
    of ``members`` independently trained :class:`SCAE` encoders. Each view is divided by its ``scales``
    buffer (its mean training-row norm, so concatenated views weigh alike).

    ``encode(x)``: ``(N, C, H, W)`` -> ``(N, pixel_components + 50 * members)``, views in that order
    (``view_dims``). There is no joint ``forward``: each member trains on its own (the ASCAE paper's loss).
    """

    pca_mean: torch.Tensor
    pca_components: torch.Tensor
    scales: torch.Tensor

    def __init__(self, in_channels: int, image_size: ImageSize, k: int, *, members: int, pixel_components: int,
                 init: Literal["paper", "torch"] = "paper") -> None:
        super().__init__()
        h, w = _hw(image_size)
        if members < 1 or pixel_components < 0:
            raise ConfigError(f"a multi-view net needs members >= 1 and pixel_components >= 0, got {members} "
                              f"and {pixel_components}")
        self.members = nn.ModuleList([SCAE(in_channels, (h, w), k, init=init) for _ in range(members)])
        self.pixel_components = pixel_components
        self.register_buffer("pca_mean", torch.zeros(in_channels * h * w))
        self.register_buffer("pca_components", torch.zeros(pixel_components, in_channels * h * w))
        self.view_dims = ([pixel_components] if pixel_components else []) + [ASCAE_F_DIM] * members
        self.register_buffer("scales", torch.ones(len(self.view_dims)))
        self.embed_dim = sum(self.view_dims)

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unscaled views of images ``(N, C, H, W)``: ``[(N, view_dims[i])]``."""
        out = [(x.flatten(1) - self.pca_mean) @ self.pca_components.T] if self.pixel_components else []
        return out + [m.encode(x) for m in self.members]  # type: ignore[operator]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, H, W)`` -> the scaled views concatenated ``(N, embed_dim)``."""
        return torch.cat([v / s for v, s in zip(self.views(x), self.scales, strict=True)], dim=1)


def input_geometry(images: Any) -> dict[str, Any]:
    """The ``in_channels`` and ``image_size`` entries of a network spec for images ``(N, H, W)`` (1 channel) or
    ``(N, H, W, C)``, as JSON values."""
    return {"in_channels": 1 if images.ndim == 3 else int(images.shape[3]),
            "image_size": [int(images.shape[1]), int(images.shape[2])]}


def build_network(spec: dict[str, Any]) -> nn.Module:
    """Build a network from its JSON spec ``{"arch", "in_channels", "image_size", ...}``.

    ``arch`` ``"ascae"`` / ``"scae"`` need ``k`` (D2 units) and take ``init``; ``"convae"`` needs
    ``embed_dim``; ``"contrastive"`` ``width`` and ``proj_dim`` and takes ``encoder``; ``"multiview"`` ``k``, ``members`` and
    ``pixel_components``. Estimators store this spec so :meth:`load` rebuilds the same module.
    """
    arch = spec.get("arch")
    try:
        size = spec["image_size"]
        size = tuple(size) if isinstance(size, list) else size
        if arch in ("ascae", "scae"):
            cls = ASCAE if arch == "ascae" else SCAE
            return cls(int(spec["in_channels"]), size, int(spec["k"]), init=spec.get("init", "paper"))
        if arch == "convae":
            return ConvAE(int(spec["in_channels"]), size, int(spec["embed_dim"]))
        if arch == "contrastive":
            return ContrastiveNet(int(spec["in_channels"]), size, width=int(spec["width"]),
                                  proj_dim=int(spec["proj_dim"]), encoder=spec.get("encoder", "small"))
        if arch == "multiview":
            return MultiViewNet(int(spec["in_channels"]), size, int(spec["k"]), members=int(spec["members"]),
                                pixel_components=int(spec["pixel_components"]), init=spec.get("init", "paper"))
    except KeyError as exc:
        raise ConfigError(f"network spec {spec} lacks {exc}; it needs in_channels, image_size and k "
                          "(ascae/scae), embed_dim (convae), width and proj_dim (contrastive), or k, members and "
                          "pixel_components (multiview)") from exc
    raise UnknownNameError(f"unknown network arch {arch!r}; known: {[*ARCHS, 'contrastive', 'multiview']}")
