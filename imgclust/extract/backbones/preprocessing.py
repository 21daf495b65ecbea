"""What a backbone expects as input, and the one function that turns a decoded image into it.

Every registry entry carries a :class:`Preprocessing` (timm's habit), so no caller builds
transforms by hand: the extract stage calls ``backbone.preprocess(image)`` per image and
``torch.stack``s the results into a batch.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from imgclust.exceptions import ConfigError, ImageDecodeError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

ColorMode = Literal["RGB", "L"]
ResizeMode = Literal["squash", "short_side_center_crop"]
Interpolation = Literal["bilinear", "bicubic"]
Rounding = Literal["nearest", "torchvision"]
_CHANNELS: dict[str, int] = {"RGB": 3, "L": 1}
_PIL_FILTERS: dict[str, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


@dataclass(frozen=True)
class Preprocessing:
    """Input contract of a backbone.

    Attributes:
        input_size: side ``S`` of the square tensor the backbone consumes (224 for ImageNet nets;
            for classic features and raw pixels, the working size).
        mode: colour mode the decoder should produce, ``"RGB"`` (C=3) or ``"L"`` (C=1).
        mean, std: per-channel normalisation in [0, 1] units; ``len == C``.
        resize: ``"squash"`` resizes both sides to ``R`` (aspect ratio not kept);
            ``"short_side_center_crop"`` resizes the short side to ``R`` keeping the aspect
            ratio; both then crop the central ``S x S`` square (a no-op when ``R == S``).
        interpolation: resampling filter, ``"bilinear"`` or ``"bicubic"`` (PIL's, antialiased).
        crop_pct: ``S / R``, timm's convention: ``R = floor(S / crop_pct)``; 1.0 resizes straight
            to ``S`` (e.g. 0.875: resize to 256, crop 224).
        rounding: pixel geometry of a short-side resize and the crop. ``"nearest"`` (imgclust's
            original convention): long side rounded, crop offset rounded down. ``"torchvision"``:
            long side truncated, offset rounded half to even, exactly torchvision's ``Resize(R)`` +
            ``CenterCrop(S)``, which timm's and open_clip's evaluation transforms use. They differ
            by at most one pixel.
    """

    input_size: int
    mode: ColorMode
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: ResizeMode = "squash"
    interpolation: Interpolation = "bilinear"
    crop_pct: float = 1.0
    rounding: Rounding = "nearest"

    def __post_init__(self) -> None:
        if self.mode not in _CHANNELS:
            raise ConfigError(f"Preprocessing.mode must be 'RGB' or 'L', got {self.mode!r}.")
        if self.resize not in ("squash", "short_side_center_crop"):
            raise ConfigError(
                f"Preprocessing.resize must be 'squash' or 'short_side_center_crop', got {self.resize!r}."
            )
        if not isinstance(self.input_size, int) or self.input_size < 1:
            raise ConfigError(f"Preprocessing.input_size must be a positive int, got {self.input_size!r}.")
        channels = _CHANNELS[self.mode]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ConfigError(
                f"Preprocessing mean/std need {channels} value(s) for mode {self.mode!r}, "
                f"got mean={self.mean!r}, std={self.std!r}."
            )
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"Preprocessing.std must be positive, got {self.std!r}.")
        if self.interpolation not in _PIL_FILTERS:
            raise ConfigError(
                f"Preprocessing.interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}."
            )
        if not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"Preprocessing.crop_pct must be in (0, 1], got {self.crop_pct!r}.")
        if self.rounding not in ("nearest", "torchvision"):
            raise ConfigError(f"Preprocessing.rounding must be 'nearest' or 'torchvision', got {self.rounding!r}.")

    @property
    def channels(self) -> int:
        """Number of channels ``C`` of the preprocessed tensor (3 for RGB, 1 for L)."""
        return _CHANNELS[self.mode]

    @property
    def resize_size(self) -> int:
        """``R = floor(S / crop_pct)``: the side (or short side) images are resized to before the crop."""
        return self.input_size if self.crop_pct == 1.0 else math.floor(self.input_size / self.crop_pct)

    def describe(self) -> str:
        """Short human-readable form, e.g. ``"224 RGB short_side_center_crop"`` (+ filter, crop_pct if set)."""
        extra = "" if self.interpolation == "bilinear" else f" {self.interpolation}"
        extra += "" if self.crop_pct == 1.0 else f" crop_pct={self.crop_pct:g}"
        return f"{self.input_size} {self.mode} {self.resize}{extra}"

    def fingerprint_fields(self) -> dict[str, Any]:
        """The fields as a dict for fingerprints; ``interpolation``, ``crop_pct`` and ``rounding`` only when
        not the default (they were added later: leaving defaults out keeps existing stores' fingerprints)."""
        fields = asdict(self)
        for name, default in (("interpolation", "bilinear"), ("crop_pct", 1.0), ("rounding", "nearest")):
            if fields[name] == default:
                del fields[name]
        return fields


def _to_pil(image: np.ndarray, mode: ColorMode) -> Image.Image:
    """uint8 ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` -> PIL image in ``mode``."""
    if not isinstance(image, np.ndarray):
        raise ImageDecodeError("unsupported_mode", f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageDecodeError(
            "unsupported_mode", f"expected a uint8 array from the decoder, got dtype {image.dtype}"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        source = "L"
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        source = "RGB" if image.shape[2] == 3 else "RGBA"
    else:
        raise ImageDecodeError(
            "unsupported_mode", f"expected an (H, W) or (H, W, 3) array, got shape {image.shape}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageDecodeError("too_small", f"image has shape {image.shape}")
    pil = Image.fromarray(np.ascontiguousarray(image))  # infers L / RGB / RGBA from the shape
    # RGBA -> RGB drops alpha; RGB -> L uses ITU-R 601-2 luma; L -> RGB replicates the channel.
    return pil if source == mode else pil.convert(mode)


def resized_shape(height: int, width: int, prep: Preprocessing) -> tuple[int, int]:
    """``(new_h, new_w)`` an ``(height, width)`` image is resized to before the central ``S x S`` crop."""
    side = prep.resize_size
    if prep.resize == "squash":
        return side, side
    short, long = min(width, height), max(width, height)
    if prep.rounding == "torchvision":
        new_long = int(side * long / short)
    else:
        new_long = max(side, round(long * (side / short)))  # the original expression, bit for bit
    return (new_long, side) if width <= height else (side, new_long)  # (new_h, new_w)


def crop_offsets(new_h: int, new_w: int, prep: Preprocessing) -> tuple[int, int]:
    """``(top, left)`` of the central ``S x S`` crop of a ``(new_h, new_w)`` resized image."""
    size = prep.input_size
    if prep.rounding == "torchvision":
        return int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return (new_h - size) // 2, (new_w - size) // 2


def _resize(pil: Image.Image, prep: Preprocessing) -> Image.Image:
    """Resize with PIL's ``prep.interpolation`` filter (antialiased), then crop the central ``S x S``."""
    width, height = pil.size
    size = prep.input_size
    new_h, new_w = resized_shape(height, width, prep)
    if (new_w, new_h) != (width, height):
        pil = pil.resize((new_w, new_h), _PIL_FILTERS[prep.interpolation])
    if (new_w, new_h) == (size, size):
        return pil
    top, left = crop_offsets(new_h, new_w, prep)
    return pil.crop((left, top, left + size, top + size))


def preprocess_image(image: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """Decoded image -> normalised float32 tensor.

    Args:
        image: uint8 array ``(H, W)`` (gray) or ``(H, W, 3)`` (RGB); ``(H, W, 4)`` has its alpha
            dropped. Either mode is converted to ``prep.mode``.
        prep: the backbone's input contract.

    Returns:
        float32 tensor ``(C, S, S)`` with ``C = prep.channels``, ``S = prep.input_size``,
        values ``(x / 255 - mean) / std``.

    Raises:
        ImageDecodeError: ``unsupported_mode`` for a non-uint8 array or an unsupported shape,
            ``too_small`` for an empty image.
    """
    pil = _resize(_to_pil(image, prep.mode), prep)
    array = np.asarray(pil, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    mean = np.asarray(prep.mean, dtype=np.float32) * 255.0
    std = np.asarray(prep.std, dtype=np.float32) * 255.0
    array = (array - mean) / std
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
