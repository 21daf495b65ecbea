"""Non-neural features: raw pixels, HOG, a colour histogram and a near-duplicate layout descriptor
(weights id ``"none"``).

All are batched torch code on the backbone's device (CPU by default), with no AMP. Their
preprocessing uses mean 0 / std 1, so a preprocessed batch holds intensities in [0, 1].
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from imgclust.exceptions import ConfigError
from imgclust.extract.backbones.base import Backbone
from imgclust.extract.backbones.preprocessing import ColorMode, Preprocessing, ResizeMode
from imgclust.extract.backbones.registry import register_backbone
from imgclust.extract.backbones.weights import WeightsSpec


def _plain(size: int, mode: ColorMode, resize: ResizeMode = "squash") -> Preprocessing:
    channels = 3 if mode == "RGB" else 1
    return Preprocessing(size, mode, (0.0,) * channels, (1.0,) * channels, resize)


class ClassicBackbone(Backbone):
    """Base of weight-free features: key ``<name>-<size>-<mode>``, e.g. ``"pixels-28-L"``."""

    uses_amp = False

    def key(self) -> str:
        return f"{self.name}-{self.preprocessing.input_size}-{self.preprocessing.mode}"

    def _intensities(self, batch: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation: ``(N, C, S, S)`` -> values in [0, 1]."""
        prep = self.preprocessing
        mean = torch.tensor(prep.mean, device=batch.device, dtype=batch.dtype).view(1, -1, 1, 1)
        std = torch.tensor(prep.std, device=batch.device, dtype=batch.dtype).view(1, -1, 1, 1)
        return batch * std + mean


class PixelsBackbone(ClassicBackbone):
    """Raw pixels: squash-resize to ``S x S``, flatten -> ``D = S * S * C`` values in [0, 1]."""

    def __init__(self, *, name: str, size: int, mode: ColorMode, device: torch.device) -> None:
        prep = _plain(size, mode)
        super().__init__(
            name=name, dim=size * size * prep.channels, preprocessing=prep, weights_id="none", device=device
        )

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self._intensities(batch).flatten(1)


class HOGBackbone(ClassicBackbone):
    """Histogram of oriented gradients (Dalal & Triggs, CVPR 2005) on a 64x64 gray image.

    Centred ``[-1, 0, 1]`` gradients; unsigned orientation in [0, 180) split into 9 bins with
    linear vote interpolation between neighbouring bins, weighted by gradient magnitude; 8x8-pixel
    cells (8x8 cells); 2x2-cell blocks with a 1-cell stride (7x7 blocks), each L2-Hys normalised
    (L2, clip at 0.2, L2 again). ``D = 7 * 7 * 2 * 2 * 9 = 1764``, same layout as skimage's
    ``hog(pixels_per_cell=(8, 8), cells_per_block=(2, 2))`` up to interpolation details.
    """

    size, cell, block, bins, clip = 64, 8, 2, 9, 0.2

    def __init__(self, *, name: str, device: torch.device) -> None:
        cells = self.size // self.cell
        blocks = cells - self.block + 1
        super().__init__(
            name=name,
            dim=blocks * blocks * self.block * self.block * self.bins,
            preprocessing=_plain(self.size, "L"),
            weights_id="none",
            device=device,
        )

    def _fingerprint_extra(self) -> dict[str, Any]:
        return {"cell": self.cell, "block": self.block, "bins": self.bins, "norm": f"L2-Hys {self.clip}"}

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = self._intensities(batch)  # (N, 1, S, S)
        n = x.shape[0]
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        gx = padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2]
        gy = padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1]
        magnitude = torch.sqrt(gx * gx + gy * gy)
        angle = torch.remainder(torch.atan2(gy, gx), math.pi)  # unsigned, [0, pi)
        position = angle / (math.pi / self.bins) - 0.5  # bin centres at (k + 0.5) * 20 degrees
        lower = torch.floor(position)
        upper_weight = position - lower
        lower_bin = torch.remainder(lower, self.bins).long()
        upper_bin = torch.remainder(lower + 1, self.bins).long()
        votes = torch.zeros(n, self.bins, self.size, self.size, device=x.device, dtype=x.dtype)
        votes.scatter_add_(1, lower_bin, magnitude * (1 - upper_weight))
        votes.scatter_add_(1, upper_bin, magnitude * upper_weight)
        cells = F.avg_pool2d(votes, self.cell) * (self.cell * self.cell)  # (N, 9, 8, 8) sums
        # 2x2-cell blocks, stride 1: (N, 9, 7, 7, 2, 2) -> (N, 7, 7, 2, 2, 9) -> (N, 49, 36)
        blocks = cells.unfold(2, self.block, 1).unfold(3, self.block, 1)
        blocks = blocks.permute(0, 2, 3, 4, 5, 1).reshape(n, -1, self.block * self.block * self.bins)
        eps = 1e-6
        blocks = blocks / torch.sqrt((blocks * blocks).sum(-1, keepdim=True) + eps * eps)
        blocks = blocks.clamp(max=self.clip)
        blocks = blocks / torch.sqrt((blocks * blocks).sum(-1, keepdim=True) + eps * eps)
        return blocks.reshape(n, -1)


class ColorHistBackbone(ClassicBackbone):
    """Joint RGB histogram, 8x8x8 bins (uint8 value // 32 per channel) -> 512-d, L1-normalised.

    Computed on the image squash-resized to 64x64 (the histogram ignores layout; the resize only
    bounds the cost).
    """

    size, levels = 64, 8

    def __init__(self, *, name: str, device: torch.device) -> None:
        super().__init__(
            name=name, dim=self.levels**3, preprocessing=_plain(self.size, "RGB"), weights_id="none",
            device=device,
        )

    def _fingerprint_extra(self) -> dict[str, Any]:
        return {"levels": self.levels, "norm": "L1"}

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        values = torch.round(self._intensities(batch) * 255).clamp(0, 255).long()
        q = values // (256 // self.levels)  # (N, 3, S, S) in [0, levels)
        index = (q[:, 0] * self.levels + q[:, 1]) * self.levels + q[:, 2]
        n = batch.shape[0]
        hist = torch.zeros(n, self.dim, device=batch.device, dtype=torch.float32)
        hist.scatter_add_(1, index.reshape(n, -1), torch.ones_like(index, dtype=torch.float32).reshape(n, -1))
        return hist / hist.sum(1, keepdim=True).clamp(min=1)


class LayoutBackbone(ClassicBackbone):
    """Near-duplicate descriptor: colour and edge layout on a coarse, centre-weighted grid (``"layout"``).

    Made to be moved little by what copies of one picture undergo (rescales, re-encodes, brightness and
    contrast changes, crops to ~85 % of the area, small rotations) while telling distinct pictures apart.
    It follows the MPEG-7 Color Layout and Edge Histogram descriptors (Kasutani & Yamada, ICIP 2001;
    Manjunath et al., IEEE TCSVT 2001), compared by cosine like tiny images (Torralba et al., PAMI 2008):

    1. The image squash-resized to 64x64 RGB in [0, 1] -> luma and two chroma channels (ITU-R 601 Y,
       Cb, Cr without offset) -> a 9x9 box blur (replicate padding) -> 6x6 grid of cell means.
    2. 4 edge energies of the unblurred luma (``|gx|``, ``|gy|`` and both diagonals of centred
       differences) -> 6x6 grid of cell means, divided by their total (contrast invariance).
    3. Each channel's grid minus its mean over the grid (brightness offset), times a centre weight
       ``exp(-r^2 / (2 * 0.6^2))`` (r in [-1, 1] per axis, so the border, which crops and rotations change
       most, counts less); then luma, chroma and edges each L2-normalised (gain, saturation and contrast
       changes cancel) and weighted 1, 0.5, 0.5, and the whole L2-normalised: ``v``, 252-d.
    4. Calibration: ``out = [sqrt(a) * v, sqrt(1 - a)]`` with ``a = 1/8`` (unit norm), so that
       ``cos(out1, out2) = 1 - a * (1 - cos(v1, v2))``: the near-duplicate threshold 0.98
       (:class:`imgclust.models.dedup.DedupConfig`) is a descriptor cosine of 0.84. The constant component
       changes no Euclidean distance, so clustering and PCA on these rows see only ``v``.

    ``D = 3 * 36 + 4 * 36 + 1 = 253``. Mirror images are not matched (the layout is not symmetric).
    """

    size, grid, blur, sigma, chroma_weight, edge_weight, alpha = 64, 6, 9, 0.6, 0.5, 0.5, 0.125

    def __init__(self, *, name: str, device: torch.device) -> None:
        super().__init__(
            name=name, dim=7 * self.grid * self.grid + 1, preprocessing=_plain(self.size, "RGB"),
            weights_id="none", device=device,
        )

    def _fingerprint_extra(self) -> dict[str, Any]:
        return {"grid": self.grid, "blur": self.blur, "sigma": self.sigma, "chroma": self.chroma_weight,
                "edges": self.edge_weight, "alpha": self.alpha}

    def _centre_weight(self, device: torch.device) -> torch.Tensor:
        """``(G, G)`` separable Gaussian window over cell centres at [-1, 1]."""
        t = torch.linspace(-1.0, 1.0, self.grid, device=device)
        w = torch.exp(-0.5 * (t / self.sigma) ** 2)
        return w[:, None] * w[None, :]

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, S, S)`` -> ``(N, C * G * G)``: grid means, minus their mean, centre-weighted."""
        cells = F.adaptive_avg_pool2d(x, self.grid)
        cells = cells - cells.mean((2, 3), keepdim=True)
        return (cells * self._centre_weight(x.device)).flatten(1)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        rgb = self._intensities(batch)  # (N, 3, 64, 64) in [0, 1]
        r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        luma = 0.299 * r + 0.587 * g + 0.114 * b
        ycc = torch.stack([luma, 0.564 * (b - luma), 0.713 * (r - luma)], 1)
        half = self.blur // 2
        smooth = F.avg_pool2d(F.pad(ycc, (half, half, half, half), mode="replicate"), self.blur, stride=1)
        colour = self._layout(smooth)  # (N, 3 * G * G), luma cells first
        y = luma[:, None]
        gx = (y[..., :, 2:] - y[..., :, :-2])[..., 1:-1, :]
        gy = (y[..., 2:, :] - y[..., :-2, :])[..., :, 1:-1]
        edges = torch.cat([gx.abs(), gy.abs(), (gx + gy).abs(), (gx - gy).abs()], 1)  # (N, 4, S-2, S-2)
        cell_edges = F.adaptive_avg_pool2d(edges, self.grid)
        cell_edges = cell_edges / cell_edges.flatten(1).sum(1).clamp(min=1e-6)[:, None, None, None]
        edge = self._layout(cell_edges)
        cells = self.grid * self.grid
        parts = [F.normalize(colour[:, :cells], dim=1), self.chroma_weight * F.normalize(colour[:, cells:], dim=1),
                 self.edge_weight * F.normalize(edge, dim=1)]
        v = F.normalize(torch.cat(parts, 1), dim=1)
        one = torch.full((v.shape[0], 1), math.sqrt(1.0 - self.alpha), device=v.device, dtype=v.dtype)
        return torch.cat([math.sqrt(self.alpha) * v, one], 1)


def _no_weights(name: str, weights: WeightsSpec) -> None:
    if weights.kind != "none":
        raise ConfigError(f"{name!r} is a classic feature without weights; pass weights=None or 'none', not {weights}.")


def build_classic_backbone(*, name: str, weights: WeightsSpec, device: torch.device, seed: int) -> Backbone:
    """Registry factory for ``pixels``, ``pixels-rgb32``, ``hog``, ``colorhist`` and ``layout`` (seed unused)."""
    _no_weights(name, weights)
    if name == "pixels":
        return PixelsBackbone(name=name, size=28, mode="L", device=device)
    if name == "pixels-rgb32":
        return PixelsBackbone(name=name, size=32, mode="RGB", device=device)
    if name == "hog":
        return HOGBackbone(name=name, device=device)
    if name == "colorhist":
        return ColorHistBackbone(name=name, device=device)
    if name == "layout":
        return LayoutBackbone(name=name, device=device)
    raise ConfigError(f"build_classic_backbone does not know {name!r}.")


def _register() -> None:
    entries = {  # name: (description, dim, input size)
        "pixels": ("raw pixels: 28x28 gray, flattened to 784-d in [0, 1]", 784, 28),
        "pixels-rgb32": ("raw pixels: 32x32 RGB, flattened to 3072-d in [0, 1]", 3072, 32),
        "hog": ("HOG (Dalal & Triggs, CVPR 2005): 64x64 gray, 9 bins, 8px cells, 2x2 L2-Hys blocks -> 1764-d",
                1764, 64),
        "colorhist": ("joint RGB colour histogram 8x8x8 -> 512-d, L1-normalised (64x64 working size)", 512, 64),
        "layout": ("near-duplicate descriptor (MPEG-7 colour + edge layout): 64x64 RGB, centre-weighted 6x6 grid of "
                   "YCbCr means and 4 edge energies, mean-centred, L2 per part, calibrated for cosine 0.98 -> 253-d",
                   253, 64),
    }
    for name, (description, dim, size) in entries.items():
        register_backbone(name, build_classic_backbone, description=description, default_weights="none",
                          dim=dim, input_size=size, weights_source="none (no weights)")


_register()
