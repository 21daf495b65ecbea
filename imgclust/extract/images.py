"""Decode untrusted image bytes into uint8 arrays, or say precisely why not.

Every failure is an :class:`~imgclust.exceptions.ImageDecodeError` whose ``kind`` becomes the
quarantine ``error_kind`` (``empty``, ``not_an_image``, ``truncated``, ``unreadable``,
``too_large``, ``too_small``, ``unsupported_mode``), so one bad file never kills a shard.

Output conventions (one place, so every backbone sees the same pixels):

* shape ``(H, W, 3)`` for ``mode="RGB"``, ``(H, W)`` for ``mode="L"``; C-contiguous, writable uint8;
* EXIF orientation is applied, so ``H``/``W`` may be swapped relative to :func:`image_size`;
* animated GIF/WebP/APNG: the first frame;
* transparency (RGBA, LA, P/L/RGB with a transparent colour) is composited onto **white**;
* 16/32-bit integer grey is scaled by its bit depth (``65535 -> 255``), never clipped;
* float (``F``) grey is clipped to ``[0, 255]`` (NaN -> 0), not min-max stretched: the same
  value maps to the same grey in every image, as in PIL's own ``F -> L`` conversion;
* with ``target_side`` (the caller's working size), a JPEG at least twice that size is decoded at
  1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling (``Image.draft``), never below ``target_side``:
  a fraction of the memory and time of a full decode when the caller shrinks the image anyway.

Only the formats named in :data:`DECODE_FORMATS` are accepted. Others that PIL could open (EPS,
which runs Ghostscript; PSD; ICO; ...) are ``not_an_image`` on purpose: this decodes untrusted input.
"""
from __future__ import annotations

import functools
import io
import logging
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps

from imgclust.exceptions import ConfigError, ImageDecodeError

if TYPE_CHECKING:
    from PIL.ImageCms import ImageCmsTransform

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS: int = 89_478_485
DEFAULT_MAX_BYTES: int = 256 * 1024 * 1024
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: PIL format ids tried, in order, when identifying bytes (JPEG also covers MPO, PNG covers APNG).
DECODE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")

_TRUNCATION_MARKERS = ("truncated", "broken data stream")
_INT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def classify_extension(name: str) -> bool:
    """Return whether ``name`` ends in one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def image_size(data: bytes) -> tuple[int, int]:
    """Return ``(width, height)`` as stored in the header, without decoding pixels.

    EXIF orientation is *not* applied: for orientations 5-8 :func:`decode_image` returns an array of
    shape ``(width, height, ...)``. Raises :class:`ImageDecodeError` (``empty``, ``not_an_image``,
    ``truncated``, ``unreadable``, ``too_large`` only if PIL's own plugin checks refuse the header).
    """
    width, height = _open_header(data).size
    return int(width), int(height)


def decode_image(
    data: bytes,
    *,
    mode: Literal["RGB", "L"] = "RGB",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    min_side: int = 1,
    target_side: int | None = None,
) -> np.ndarray:
    """Decode image bytes to a uint8 array of shape ``(H, W, 3)`` (RGB) or ``(H, W)`` (L).

    Size limits are checked on the header *before* any pixel is decompressed: ``width * height >
    max_pixels`` or ``len(data) > max_bytes`` is ``too_large``; a side shorter than ``min_side`` is
    ``too_small``. See the module docstring for mode, alpha and animation handling.

    ``target_side``: the smallest side the caller needs (e.g. a backbone's input size before its own
    resize). A JPEG whose sides are both at least ``2 * target_side`` is then decoded at a reduced
    scale (1/2, 1/4 or 1/8, the smallest keeping both sides ``>= target_side``), so ``H``/``W`` are
    smaller than the header's; other formats, and ``None`` (default), decode at full size.

    Raises:
        ImageDecodeError: the image cannot be used; ``.kind`` says why (quarantine ``error_kind``).
        ConfigError: an argument is invalid (a caller bug, not a bad image).
    """
    if mode not in ("RGB", "L"):
        raise ConfigError(f"decode_image(mode={mode!r}) is not supported; use mode='RGB' or mode='L'.")
    if min(max_pixels, max_bytes, min_side, 1 if target_side is None else target_side) < 1:
        raise ConfigError(
            f"decode_image limits must be >= 1, got max_pixels={max_pixels}, max_bytes={max_bytes}, "
            f"min_side={min_side}, target_side={target_side}."
        )
    if len(data) > max_bytes:
        raise ImageDecodeError(
            "too_large",
            f"{len(data)} bytes exceeds max_bytes={max_bytes}; raise max_bytes if such files are expected.",
        )
    image = _open_header(data)
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too_large",
            f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels} (possible "
            "decompression bomb); raise max_pixels only for trusted sources.",
        )
    if min(width, height) < min_side:
        raise ImageDecodeError("too_small", f"{width}x{height} has a side shorter than min_side={min_side}.")
    try:
        # An ImageFile opens on its first frame, so load() decodes frame 0 of an animation. We do
        # not seek to count frames: that would decode every frame of an untrusted file.
        if target_side is not None:
            _reduce_scale(image, target_side)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        canonical = _to_rgb_or_l(image)
        if canonical.mode != mode:
            canonical = canonical.convert(mode)
        return np.ascontiguousarray(np.array(canonical, dtype=np.uint8))
    except (ImageDecodeError, MemoryError):
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb_error(exc) from exc
    except Exception as exc:  # the boundary: every decoder failure becomes a quarantine record
        raise _decode_failure(exc, data, "decode the pixels") from exc


def _reduce_scale(image: ImageFile.ImageFile, target_side: int) -> None:
    """Let libjpeg decode ``image`` (header parsed, pixels not yet) at 1/2, 1/4 or 1/8 scale.

    ``Image.draft`` picks the largest scale ``s`` with ``side // s >= target_side`` on both sides and
    keeps the colour mode (``mode=None``: any RGB -> L conversion stays PIL's, as without draft).
    """
    if image.format in ("JPEG", "MPO") and min(image.size) >= 2 * target_side:
        image.draft(None, (target_side, target_side))


def _open_header(data: bytes) -> ImageFile.ImageFile:
    """Identify ``data`` among :data:`DECODE_FORMATS` and parse its header; pixels stay undecoded.

    Why not ``PIL.Image.open``: it runs PIL's process-global bomb check (``Image.MAX_IMAGE_PIXELS``)
    before we can run ours, warning above that limit and raising ``DecompressionBombError`` above
    twice it, so a caller's larger ``max_pixels`` would be overridden and a smaller one would see
    PIL's warning first. Changing the global (or filtering warnings with ``catch_warnings``) per
    call is not thread-safe and would weaken other users of PIL in the process. So we call the
    registered format openers ourselves (what ``Image.open`` does, minus the global check) and
    leave ``MAX_IMAGE_PIXELS`` untouched: checks inside plugins (GIF frames, TIFF tiles) still
    apply and are reported as ``too_large``.
    """
    if not data:
        raise ImageDecodeError("empty", "0 bytes; the source file is empty, re-fetch or drop it.")
    Image.init()  # registers every plugin once; idempotent
    prefix = data[:16]
    for fmt in DECODE_FORMATS:
        opener = Image.OPEN.get(fmt)
        if opener is None:  # plugin not built into this PIL (e.g. no libwebp)
            continue
        factory, accept = opener
        verdict = accept(prefix) if accept is not None else True
        if not verdict or isinstance(verdict, str):  # a str means "looks like it, but unsupported"
            continue
        try:
            return factory(io.BytesIO(data), "")
        except MemoryError:
            raise
        except Image.DecompressionBombError as exc:
            raise _bomb_error(exc) from exc
        except Exception as exc:  # signature matched, header did not parse
            raise _decode_failure(exc, data, f"parse the {fmt} header") from exc
    raise ImageDecodeError(
        "not_an_image",
        f"no {'/'.join(DECODE_FORMATS)} signature in the first bytes {prefix[:8]!r} ({len(data)} bytes); "
        "the file is not an image or is in a format this pipeline does not accept.",
    )


def _decode_failure(exc: Exception, data: bytes, action: str) -> ImageDecodeError:
    """Map a PIL/OS error to ``truncated`` (data ends early) or ``unreadable`` (anything else)."""
    text = f"{type(exc).__name__}: {exc}"
    lowered = str(exc).lower()
    riff_short = data[:4] == b"RIFF" and len(data) < int.from_bytes(data[4:8], "little") + 8
    if isinstance(exc, EOFError) or riff_short or any(m in lowered for m in _TRUNCATION_MARKERS):
        return ImageDecodeError(
            "truncated", f"could not {action}: the data ends early ({text}); re-fetch the file."
        )
    return ImageDecodeError("unreadable", f"could not {action} ({text}).")


def _bomb_error(exc: Exception) -> ImageDecodeError:
    return ImageDecodeError(
        "too_large",
        f"PIL's own decompression-bomb limit refused it ({exc}); PIL.Image.MAX_IMAGE_PIXELS="
        f"{Image.MAX_IMAGE_PIXELS} is process-wide and also bounds frames and tiles inside a file.",
    )


def _to_rgb_or_l(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to ``RGB`` or ``L`` (whichever loses nothing), or raise ``unsupported_mode``."""
    mode = image.mode
    has_key_colour = "transparency" in image.info
    if mode in ("RGB", "L") and not has_key_colour:
        return image
    if mode in _INT16_MODES or mode == "I":
        return Image.fromarray(_scale_integer_grey(image), mode="L")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        return Image.fromarray(np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8), mode="L")
    if mode == "1":
        return image.convert("L")
    if mode in ("LA", "La") or (mode == "L" and has_key_colour):
        return _flatten_on_white(image, "LA")
    if mode in ("RGBA", "RGBa", "P", "PA") or has_key_colour:
        # Palette images always go via RGBA so a transparent palette index becomes white.
        return _flatten_on_white(image, "RGBA")
    if mode == "LAB":
        return _lab_to_rgb(image)
    try:  # CMYK (PIL applies Adobe inversion when decoding), YCbCr, HSV, RGBX, ...
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageDecodeError(
            "unsupported_mode", f"PIL mode {mode!r} cannot be converted to RGB ({exc})."
        ) from exc


def _flatten_on_white(image: Image.Image, alpha_mode: Literal["LA", "RGBA"]) -> Image.Image:
    """Composite onto an opaque white background; returns ``L`` for ``LA``, ``RGB`` for ``RGBA``."""
    foreground = image.convert(alpha_mode)
    background = Image.new(alpha_mode, image.size, (255,) * len(alpha_mode))
    background.alpha_composite(foreground)
    return background.convert(alpha_mode[:-1])


def _scale_integer_grey(image: Image.Image) -> np.ndarray:
    """Scale 16/32-bit integer grey ``(H, W)`` to uint8 ``(H, W)`` by its bit depth, rounding.

    ``v -> round(v * 255 / (2**bits - 1))``, so for 16 bits ``65535 -> 255`` and ``257 -> 1``.
    ``bits`` is the TIFF BitsPerSample tag when present, else 16 for ``I;16*``. Mode ``I`` without
    a declared depth is assumed 16-bit (what older PIL gave for 16-bit PNG), with a warning.
    A signed sample's depth excludes the sign bit (int32 max ``2**31 - 1 -> 255``); negatives become 0.
    """
    declared = _declared_bits(image)
    if image.mode == "I" and declared is None:
        logger.warning("mode 'I' image without a declared bit depth; assuming 16 bits per sample")
    bits = declared if declared is not None and 1 < declared <= 32 else 16
    top = (1 << bits) - 1
    work = np.uint32 if bits <= 24 else np.uint64  # v * 255 must not overflow
    values = np.minimum(np.maximum(np.asarray(image), 0).astype(work), top)
    return ((values * 255 + top // 2) // top).astype(np.uint8)


def _declared_bits(image: Image.Image) -> int | None:
    """Magnitude bits per sample from TIFF tags (a signed sample has one bit fewer), or None."""
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return None
    bits, sample_format = tags.get(258), tags.get(339)  # BitsPerSample, SampleFormat (2 = signed)
    bits = bits[0] if isinstance(bits, tuple) and bits else bits
    sample_format = sample_format[0] if isinstance(sample_format, tuple) and sample_format else sample_format
    if not isinstance(bits, int):
        return None
    return bits - 1 if sample_format == 2 else bits


def _lab_to_rgb(image: Image.Image) -> Image.Image:
    """CIELAB -> sRGB through littlecms; PIL's plain ``convert('RGB')`` treats LAB as if it were RGB."""
    try:
        from PIL import ImageCms
    except ImportError as exc:
        raise ImageDecodeError(
            "unsupported_mode", f"mode 'LAB' needs PIL built with littlecms2 ({exc})."
        ) from exc
    converted = ImageCms.applyTransform(image, _lab_transform())
    if converted is None:  # only returned for inPlace=True; keeps the type checker honest
        raise ImageDecodeError("unsupported_mode", "littlecms returned no image for mode 'LAB'.")
    return converted


@functools.lru_cache(maxsize=1)
def _lab_transform() -> ImageCmsTransform:
    from PIL import ImageCms

    return ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )
