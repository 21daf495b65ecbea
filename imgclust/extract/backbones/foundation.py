"""Shared parts of the timm and open_clip entries: optional import, embedding head, checkpoint loading.

timm and open_clip are an optional extra (``pip install 'imgclust[foundation]'``): they are imported
inside the factories, so listing backbones or using the torchvision ones never needs them.
"""
from __future__ import annotations

import importlib
import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from imgclust.exceptions import ConfigError
from imgclust.extract.backbones.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

FOUNDATION_EXTRA = "foundation"
INSTALL_HINT = "pip install 'imgclust[foundation]'"


def import_optional(module: str, distribution: str, *, name: str) -> ModuleType:
    """``import module`` or a ConfigError saying which extra installs it.

    Raises:
        ConfigError: the package is not installed (or fails to import).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"backbone {name!r} needs the {distribution!r} package, which is not installed ({exc}). "
            f"Install the foundation-model extra: {INSTALL_HINT}"
        ) from exc


class EmbeddingHead(nn.Module):
    """``net(x)`` as the embedding ``(N, D)``; L2-normalised over ``D`` in float32 when ``l2``.

    CLIP / SigLIP image embeddings are compared by cosine (Radford et al., ICML 2021; Zhai et al.,
    ICCV 2023), so their entries set ``l2``; DINOv2 CLS tokens and CNN pooled features are not.
    """

    def __init__(self, net: nn.Module, *, l2: bool) -> None:
        super().__init__()
        self.net = net
        self.l2 = l2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return F.normalize(out.float(), dim=-1) if self.l2 else out


def preprocessing_from(
    *,
    name: str,
    input_size: int | tuple[int, ...],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    interpolation: str,
    crop_pct: float,
    crop_mode: str,
) -> Preprocessing:
    """A library's eval-transform settings as a :class:`Preprocessing` (RGB, torchvision pixel rounding).

    Args:
        input_size: ``S``, ``(S, S)`` or timm's ``(C, S, S)``; only square inputs are supported.
        interpolation: ``"bilinear"`` or ``"bicubic"``.
        crop_pct: timm's crop fraction (resize to ``floor(S / crop_pct)``, crop ``S``).
        crop_mode: ``"center"`` / ``"shortest"`` (short side, then central crop) or ``"squash"``.

    Raises:
        ConfigError: a non-square input, another filter, or a crop mode that pads (``"border"``,
            ``"longest"``): refused rather than approximated.
    """
    sizes = (input_size,) if isinstance(input_size, int) else tuple(input_size)
    spatial = sizes[-2:] if len(sizes) >= 2 else sizes
    if len(set(spatial)) != 1:
        raise ConfigError(f"{name!r}: only square inputs are supported, the model wants {input_size!r}.")
    if interpolation not in ("bilinear", "bicubic"):
        raise ConfigError(f"{name!r}: interpolation {interpolation!r} is not supported (bilinear or bicubic).")
    resize_modes = {"center": "short_side_center_crop", "shortest": "short_side_center_crop", "squash": "squash"}
    if crop_mode not in resize_modes:
        raise ConfigError(f"{name!r}: crop mode {crop_mode!r} is not supported (center/shortest or squash).")
    return Preprocessing(
        input_size=int(spatial[0]),
        mode="RGB",
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        resize=resize_modes[crop_mode],  # type: ignore[arg-type]
        interpolation=interpolation,  # type: ignore[arg-type]
        crop_pct=float(crop_pct),
        rounding="torchvision",  # timm and open_clip use torchvision's Resize + CenterCrop
    )


def load_with_library(load: Callable[[], nn.Module], path: Path, *, name: str, library: str,
                      sha256: str) -> nn.Module:
    """Run ``library``'s own checkpoint loader for ``path``; its failures become a ConfigError naming the file.

    ``sha256`` is the hash the caller identified (and, for published weights, verified) the file by; the file
    is hashed again right before loading, so the weights id always names the bytes that were loaded (a file
    replaced in between is refused, not unpickled).

    Raises:
        ConfigError: the file changed since it was hashed, or is not a checkpoint of this architecture
            (missing / unexpected keys, shape mismatches, not a torch or safetensors file).
    """
    from imgclust.extract.backbones.weights import file_sha256

    now = file_sha256(path)
    if now != sha256:
        raise ConfigError(f"{path} changed while {name!r} was being built (sha256 {sha256[:12]}... when identified, "
                          f"{now[:12]}... now); is another process writing it? Run again once it is complete.")
    try:
        return load()
    except (RuntimeError, KeyError, ValueError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise ConfigError(
            f"{path} could not be loaded into {name!r} by {library}: {exc.__class__.__name__}: "
            f"{str(exc)[:600]}. Pass a checkpoint saved from this architecture, or --weights random."
        ) from exc


def package_version(distribution: str) -> str:
    """Installed version of ``distribution`` from package metadata, or ``"not installed"``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"
