"""Decode and preprocess batches on the GPU, so the model is not starved by CPU JPEG decoding.

Batched nvJPEG through ``torchvision.io.decode_jpeg(device="cuda")`` decodes many times more JPEGs per
second than libjpeg-turbo on one CPU core (issue 6), so on a GPU worker with few cores, CPU decode is the
bottleneck and the design moves it to the GPU:

1. file bytes are read by threads (I/O only) into 1-D uint8 tensors;
2. complete JPEGs (ending with the EOI marker) whose header (read by PIL without decoding pixels)
   is RGB/gray within the size limits are decoded as one batch on the device (nvJPEG), then turned
   upright by their EXIF orientation (:func:`apply_exif_orientation`; nvJPEG does not apply it); other formats,
   CMYK or oversized JPEGs, and any JPEG nvJPEG rejects go through the CPU decoder of
   :mod:`imgclust.extract.images`, so the bomb check and the quarantine kinds are the same on both paths;
3. each image is resized on the device (the backbone's bilinear or bicubic filter, antialiased, same
   geometry as :func:`imgclust.extract.backbones.preprocessing.preprocess_image`), centre-cropped and normalised;
4. the backbone runs under bf16 autocast with ``channels_last`` (:meth:`Backbone.embed`).

Everything works on the CPU too (torchvision decodes JPEG lists on the CPU), which is how the tests
check it against the PIL path on a machine without a GPU.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from imgclust.exceptions import ConfigError, ImageDecodeError
from imgclust.extract.backbones.base import Backbone
from imgclust.extract.backbones.preprocessing import Preprocessing, crop_offsets, resized_shape
from imgclust.extract.images import DEFAULT_MAX_PIXELS

logger = logging.getLogger(__name__)

__all__ = ["DecodedBatch", "apply_exif_orientation", "auto_batch_size", "decode_batch", "is_jpeg",
           "preprocess_on_device"]

_JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(data: bytes) -> bool:
    """Whether ``data`` starts with the JPEG SOI marker (the extension is not trusted)."""
    return data[:3] == _JPEG_MAGIC


@dataclass
class DecodedBatch:
    """Result of :func:`decode_batch`: per input index, a uint8 ``(C, H, W)`` tensor on the device or
    the :class:`ImageDecodeError` that quarantines it. ``on_device`` counts images nvJPEG decoded."""

    images: dict[int, torch.Tensor] = field(default_factory=dict)
    errors: dict[int, ImageDecodeError] = field(default_factory=dict)
    on_device: int = 0


_EXIF_ORIENTATION = 0x0112


def _gpu_orientation(data: bytes, max_pixels: int) -> int | None:
    """The EXIF orientation (1-8) of a JPEG nvJPEG can take: complete (ends with EOI), RGB/gray, within the
    pixel limit (header only, no pixel decoded); ``None`` for anything else, which takes the CPU decoder
    and is quarantined there with the usual kind."""
    import io

    from PIL import Image, UnidentifiedImageError

    if len(data) <= 3 or not is_jpeg(data) or not data.endswith(b"\xff\xd9"):
        return None  # no end-of-image marker: likely truncated; libjpeg would decode it partially, PIL refuses
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG" or im.mode not in ("RGB", "L") or im.width * im.height > max_pixels:
                return None
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError):
        return None
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def apply_exif_orientation(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn a decoded ``(C, H, W)`` tensor upright for EXIF orientation 1-8, as PIL's ``exif_transpose``.

    torchvision's CUDA ``decode_jpeg`` ignores ``apply_exif_orientation`` (torch 2.11 / torchvision 0.26: a
    rotated photo comes back with height and width swapped), so the rotation is done here, on the device.
    """
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-2, -1)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(img, -1, dims=(-2, -1))
    if orientation == 7:
        return img.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(img, 1, dims=(-2, -1))
    return img


def _cpu_decode(data: bytes, mode: str, device: torch.device, max_pixels: int) -> torch.Tensor:
    from imgclust.extract.images import decode_image

    arr = decode_image(data, mode=mode, max_pixels=max_pixels)  # type: ignore[arg-type]  # (H, W) or (H, W, 3) uint8, or ImageDecodeError
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return t.to(device, non_blocking=True)


def decode_batch(datas: list[bytes], mode: str, device: torch.device | str,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedBatch:
    """Decode encoded images: JPEGs as one nvJPEG batch on ``device``, the rest (and rejects) on the CPU.

    Args:
        datas: encoded files.
        mode: ``"RGB"`` (C=3) or ``"L"`` (C=1).
        device: where the decoded tensors live (``cuda`` uses nvJPEG; ``cpu`` uses libjpeg).

    Returns:
        :class:`DecodedBatch` with one entry per input index, in ``images`` or in ``errors``.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if mode not in ("RGB", "L"):
        raise ConfigError(f"mode must be 'RGB' or 'L', got {mode!r}")
    device = torch.device(device)
    read_mode = ImageReadMode.RGB if mode == "RGB" else ImageReadMode.GRAY
    out = DecodedBatch()
    orientation = {i: o for i, d in enumerate(datas) if (o := _gpu_orientation(d, max_pixels)) is not None}
    jpeg_idx = sorted(orientation)
    rest = sorted(set(range(len(datas))) - set(jpeg_idx))
    if jpeg_idx:
        tensors = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in jpeg_idx]
        try:
            decoded = decode_jpeg(tensors, mode=read_mode, device=device)
            out.images.update((i, apply_exif_orientation(t, orientation[i]))
                              for i, t in zip(jpeg_idx, decoded, strict=True))
            out.on_device += len(jpeg_idx) if device.type == "cuda" else 0
        except RuntimeError as exc:  # one bad file fails the batch: retry one by one, then CPU path
            logger.debug("batched JPEG decode failed (%s); decoding %d files one by one", exc, len(jpeg_idx))
            for i, t in zip(jpeg_idx, tensors, strict=True):
                try:
                    out.images[i] = apply_exif_orientation(decode_jpeg(t, mode=read_mode, device=device),
                                                           orientation[i])
                    out.on_device += device.type == "cuda"
                except RuntimeError:
                    rest.append(i)  # truncated / CMYK / progressive oddities: the CPU decoder decides
    for i in sorted(rest):
        try:
            out.images[i] = _cpu_decode(datas[i], mode, device, max_pixels)
        except ImageDecodeError as exc:
            out.errors[i] = exc
    return out


def _resize_group(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 ``(n, C, H, W)`` (one shape) -> float32 ``(n, C, S, S)`` in [0, 255], PIL-like antialiased
    ``prep.interpolation``: resized to :func:`resized_shape` (``squash`` or short side), centre cropped
    (:func:`crop_offsets`): the same geometry as the PIL path.
    Bicubic overshoot is clamped to [0, 255], as PIL's uint8 output is."""
    h, w = x.shape[-2:]
    size = prep.input_size
    x = x.float()
    new_h, new_w = resized_shape(int(h), int(w), prep)
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode=prep.interpolation, antialias=True, align_corners=False)
        if prep.interpolation == "bicubic":
            x = x.clamp_(0.0, 255.0)
    top, left = crop_offsets(new_h, new_w, prep)
    return x[:, :, top:top + size, left:left + size]


def preprocess_on_device(images: list[torch.Tensor], prep: Preprocessing) -> torch.Tensor:
    """Decoded uint8 ``(C, H, W)`` tensors (one device) -> normalised float32 batch ``(N, C, S, S)``.

    Same contract as :func:`imgclust.extract.backbones.preprocessing.preprocess_image` (resize policy, mean/std
    in [0, 1] units); gray and RGB inputs are converted to ``prep.mode`` (luma ITU-R 601-2 for RGB -> L).
    Images of one shape are resized as one stacked batch (a handful of kernel launches per shape, not
    per image: per-image launches would cap end-to-end extraction throughput).
    """
    if not images:
        raise ConfigError("preprocess_on_device got no images")
    device = images[0].device
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        if img.ndim != 3 or img.shape[0] not in (1, 3):
            raise ConfigError(f"expected (C, H, W) uint8 with C in (1, 3), got {tuple(img.shape)}")
        groups.setdefault(tuple(img.shape), []).append(i)
    mean = torch.tensor(prep.mean, device=device).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(prep.std, device=device).view(1, -1, 1, 1) * 255.0
    luma = torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)
    out = torch.empty((len(images), prep.channels, prep.input_size, prep.input_size), device=device)
    for (c, _, _), idx in groups.items():
        x = _resize_group(torch.stack([images[i] for i in idx]), prep)
        if prep.channels == 3 and c == 1:
            x = x.expand(-1, 3, -1, -1)
        elif prep.channels == 1 and c == 3:
            x = (x * luma).sum(dim=1, keepdim=True)
        out[torch.tensor(idx, device=device)] = (x - mean) / std
    return out


def auto_batch_size(backbone: Backbone, *, max_batch: int = 1024, memory_fraction: float = 0.6,
                    probe: int = 8) -> int:
    """Largest power-of-two batch whose activations fit in ``memory_fraction`` of free GPU memory.

    Runs one probe batch of ``probe`` images to measure peak memory per image under the same
    autocast/channels_last settings as :meth:`Backbone.embed`. On the CPU it returns ``min(64, max_batch)``.
    """
    if not 0.0 < memory_fraction <= 1.0:
        raise ConfigError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    if backbone.device.type != "cuda":
        return min(64, max_batch)
    prep = backbone.preprocessing
    x = torch.zeros((probe, prep.channels, prep.input_size, prep.input_size))
    torch.cuda.synchronize(backbone.device)
    torch.cuda.reset_peak_memory_stats(backbone.device)
    base = torch.cuda.memory_allocated(backbone.device)
    backbone.embed(x)
    per_image = max(1, (torch.cuda.max_memory_allocated(backbone.device) - base) // probe)
    free, _ = torch.cuda.mem_get_info(backbone.device)
    fit = int(free * memory_fraction // per_image)
    size = 1 << max(0, min(fit, max_batch).bit_length() - 1)
    logger.info("%s: %.1f MB per image at peak, %.1f GB free -> batch %d", backbone.name, per_image / 1e6,
                free / 1e9, size)
    return size
