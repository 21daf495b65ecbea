"""Tests for imgclust.extract.images: every fixture image is generated here, nothing is committed."""
from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, features

from imgclust.exceptions import ConfigError, ImageDecodeError
from imgclust.extract.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    classify_extension,
    decode_image,
    image_size,
)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def _noise_rgb(seed: int, height: int = 48, width: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


def _smooth_rgb(height: int = 48, width: int = 64) -> Image.Image:
    """A gradient: JPEG keeps it close, so lossy round trips can be compared pixel-wise."""
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), np.full_like(x, 128)], axis=-1)
    return Image.fromarray(arr.astype(np.uint8), mode="RGB")


def _assert_kind(kind: str, data: bytes, **kwargs: object) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, **kwargs)  # type: ignore[arg-type]
    assert info.value.kind == kind, str(info.value)
    return info.value


def _assert_valid(arr: np.ndarray, shape: tuple[int, ...]) -> None:
    assert arr.shape == shape
    assert arr.dtype == np.uint8
    assert arr.flags.c_contiguous
    assert arr.flags.writeable


def _bilevel_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit greyscale PNG, built row by row so memory stays tiny."""

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    rows_per_block = 1000
    idat = b"".join(
        compressor.compress(row * min(rows_per_block, height - start))
        for start in range(0, height, rows_per_block)
    ) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    data = _bilevel_png(20_000, 20_000)  # 400 M pixels, far above PIL's own hard limit too
    assert len(data) < 200_000
    return data


# --- valid images ------------------------------------------------------------------------------


def test_png_round_trip_is_exact() -> None:
    image = _noise_rgb(seed=1)
    arr = decode_image(_encode(image, "PNG"))
    _assert_valid(arr, (48, 64, 3))
    np.testing.assert_array_equal(arr, np.asarray(image))


def test_jpeg_round_trip_shape_and_values() -> None:
    image = _smooth_rgb()
    arr = decode_image(_encode(image, "JPEG", quality=95))
    _assert_valid(arr, (48, 64, 3))
    assert np.abs(arr.astype(int) - np.asarray(image).astype(int)).mean() < 3


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "GIF", "WEBP"])
def test_other_formats_decode(fmt: str) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("PIL built without WebP support")
    arr = decode_image(_encode(Image.new("RGB", (7, 5), RED), fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    _assert_valid(arr, (5, 7, 3))
    assert tuple(arr[2, 3]) == RED


def test_l_mode_output_matches_pil_luma() -> None:
    image = _noise_rgb(seed=2)
    arr = decode_image(_encode(image, "PNG"), mode="L")
    _assert_valid(arr, (48, 64))
    np.testing.assert_array_equal(arr, np.asarray(image.convert("L")))


def test_grey_image_as_rgb_repeats_the_channel() -> None:
    grey = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20, mode="L")
    arr = decode_image(_encode(grey, "PNG"))
    _assert_valid(arr, (3, 4, 3))
    for channel in range(3):
        np.testing.assert_array_equal(arr[..., channel], np.asarray(grey))


def test_one_by_one_decodes() -> None:
    _assert_valid(decode_image(_encode(Image.new("RGB", (1, 1), GREEN), "PNG")), (1, 1, 3))


def test_invalid_mode_argument_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="mode='RGB'"):
        decode_image(_encode(Image.new("RGB", (2, 2)), "PNG"), mode="RGBA")  # type: ignore[arg-type]


# --- broken or hostile bytes -------------------------------------------------------------------


def test_zero_bytes_is_empty() -> None:
    _assert_kind("empty", b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF"])
def test_truncated_file_is_truncated(fmt: str) -> None:
    data = _encode(_noise_rgb(seed=3), fmt)
    _assert_kind("truncated", data[: len(data) // 2])


def test_truncated_webp_is_truncated() -> None:
    if not features.check("webp"):
        pytest.skip("PIL built without WebP support")
    data = _encode(_noise_rgb(seed=4), "WEBP", quality=80)
    _assert_kind("truncated", data[: len(data) // 2])


@pytest.mark.parametrize(
    "data",
    [
        b"this is a plain text file that someone named photo.jpg\n",
        b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body></body></html>",
        b"GIF",  # a signature prefix, too short to be anything
    ],
    ids=["text", "html", "short"],
)
def test_non_image_bytes_are_not_an_image(data: bytes) -> None:
    _assert_kind("not_an_image", data)


def test_random_bytes_are_not_an_image() -> None:
    data = np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    _assert_kind("not_an_image", data)


def test_format_outside_the_allow_list_is_not_an_image() -> None:
    # PIL itself would open a PPM; the pipeline accepts only the formats it names.
    _assert_kind("not_an_image", _encode(Image.new("RGB", (4, 4)), "PPM"))


def test_corrupt_header_is_unreadable_with_original_text() -> None:
    data = bytearray(_encode(Image.new("RGB", (4, 4)), "PNG"))
    data[25] = 9  # IHDR colour type 9 does not exist
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    err = _assert_kind("unreadable", bytes(data))
    assert "SyntaxError" in err.message


def test_unconvertible_mode_is_unsupported_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _encode(Image.new("YCbCr", (3, 2), (128, 128, 128)), "TIFF")
    original = Image.Image.convert

    def refuse_ycbcr(self: Image.Image, mode: str | None = None, *args: object, **kwargs: object) -> Image.Image:
        if self.mode == "YCbCr":
            raise ValueError("conversion from YCbCr to RGB not supported")
        return original(self, mode, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "convert", refuse_ycbcr)
    err = _assert_kind("unsupported_mode", data)
    assert "YCbCr" in err.message


# --- size limits -------------------------------------------------------------------------------


def test_decompression_bomb_is_refused_from_the_header(bomb_png: bytes) -> None:
    assert image_size(bomb_png) == (20_000, 20_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        err = _assert_kind("too_large", bomb_png)
    assert "max_pixels" in err.message  # our check, not PIL's DecompressionBombError


def test_max_pixels_limit() -> None:
    data = _encode(Image.new("RGB", (40, 25)), "PNG")
    _assert_kind("too_large", data, max_pixels=999)
    _assert_valid(decode_image(data, max_pixels=1000), (25, 40, 3))


def test_our_limit_governs_not_pils_global(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL.Image.open would now raise
    data = _encode(Image.new("RGB", (40, 25)), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        _assert_valid(decode_image(data), (25, 40, 3))


def test_max_bytes_limit() -> None:
    data = _encode(Image.new("RGB", (8, 8)), "PNG")
    _assert_kind("too_large", data, max_bytes=len(data) - 1)
    _assert_valid(decode_image(data, max_bytes=len(data)), (8, 8, 3))


def test_min_side() -> None:
    data = _encode(Image.new("RGB", (10, 3)), "PNG")
    _assert_kind("too_small", data, min_side=4)
    _assert_valid(decode_image(data, min_side=3), (3, 10, 3))


def test_defaults_are_exported() -> None:
    assert DEFAULT_MAX_PIXELS == 89_478_485
    assert DEFAULT_MAX_BYTES == 256 * 1024 * 1024
    assert ".jpeg" in IMAGE_EXTENSIONS


# --- modes -------------------------------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (16, 8), (0, 0, 0, 0))  # white
    cmyk.paste((255, 0, 0, 0), (0, 0, 8, 8))  # cyan on the left half
    arr = decode_image(_encode(cmyk, "JPEG", quality=95)).astype(int)
    _assert_valid(arr.astype(np.uint8), (8, 16, 3))
    assert np.abs(arr[4, 2] - (0, 255, 255)).max() <= 8
    assert np.abs(arr[4, 13] - (255, 255, 255)).max() <= 8


@pytest.mark.parametrize("fmt, dtype", [("PNG", "<u2"), ("TIFF", ">u2")])
def test_16_bit_grey_is_scaled_by_bit_depth(fmt: str, dtype: str) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    image = Image.fromarray(values.astype(dtype))
    assert image.mode.startswith("I;16")
    data = _encode(image, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    np.testing.assert_array_equal(decode_image(data, mode="L"), [[0, 1, 128, 255]])
    assert decode_image(data).shape == (1, 4, 3)


def test_signed_32_bit_grey_is_scaled_by_bit_depth() -> None:
    data = _encode(Image.fromarray(np.array([[-5, 0, 2**31 - 1]], dtype=np.int32), mode="I"), "TIFF")
    np.testing.assert_array_equal(decode_image(data, mode="L"), [[0, 0, 255]])


def test_float_grey_is_clipped() -> None:
    values = np.array([[-5.0, 0.4, 100.6, 300.0, np.nan]], dtype=np.float32)
    data = _encode(Image.fromarray(values, mode="F"), "TIFF")
    np.testing.assert_array_equal(decode_image(data, mode="L"), [[0, 0, 101, 255, 0]])


def test_bilevel_becomes_0_or_255() -> None:
    image = Image.new("1", (8, 2), 0)
    image.putpixel((3, 1), 1)
    arr = decode_image(_encode(image, "PNG"), mode="L")
    assert set(np.unique(arr)) == {0, 255}
    assert arr[1, 3] == 255


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_becomes_white(fmt: str) -> None:
    image = Image.new("P", (4, 2), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    image.paste(1, (2, 0, 4, 2))  # right half red, left half index 0 (transparent)
    arr = decode_image(_encode(image, fmt, transparency=0))
    assert tuple(arr[0, 0]) == (255, 255, 255)
    assert tuple(arr[1, 3]) == RED


def test_grey_alpha_is_composited_on_white() -> None:
    image = Image.new("LA", (3, 1))
    image.putpixel((0, 0), (100, 0))
    image.putpixel((1, 0), (100, 255))
    image.putpixel((2, 0), (100, 128))
    data = _encode(image, "PNG")
    grey = decode_image(data, mode="L")
    np.testing.assert_array_equal(grey[0, :2], [255, 100])
    assert abs(int(grey[0, 2]) - round(100 * 128 / 255 + 255 * 127 / 255)) <= 1
    rgb = decode_image(data)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], grey)


def test_rgba_is_composited_on_white() -> None:
    image = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    image.putpixel((1, 0), (0, 0, 255, 255))
    arr = decode_image(_encode(image, "PNG"))
    assert tuple(arr[0, 0]) == (255, 255, 255)
    assert tuple(arr[0, 1]) == BLUE


def test_lab_tiff_is_colour_managed() -> None:
    data = _encode(Image.new("LAB", (2, 2), (255, 128, 128)), "TIFF")  # L=100, a=b=0: white
    assert np.abs(decode_image(data).astype(int) - 255).max() <= 2


def test_ycbcr_tiff_becomes_rgb() -> None:
    data = _encode(Image.new("YCbCr", (2, 2), (128, 128, 128)), "TIFF")
    assert np.abs(decode_image(data).astype(int) - 128).max() <= 1


# --- animation and orientation -----------------------------------------------------------------


def _frames() -> list[Image.Image]:
    return [Image.new("RGB", (6, 4), colour) for colour in (RED, GREEN, BLUE)]


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animation_gives_first_frame(fmt: str) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("PIL built without WebP support")
    first, *rest = _frames()
    extra = {"lossless": True} if fmt == "WEBP" else {}
    data = _encode(first, fmt, save_all=True, append_images=rest, duration=100, loop=0, **extra)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    arr = decode_image(data)
    _assert_valid(arr, (4, 6, 3))
    assert (arr == np.array(RED, dtype=np.uint8)).all()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_6_rotates(fmt: str) -> None:
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    image.paste(RED, (0, 0, 8, 8))  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _encode(image, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    assert image_size(data) == (40, 20)  # stored size, orientation not applied
    arr = decode_image(data)
    _assert_valid(arr, (40, 20, 3))
    assert np.abs(arr[2, -3].astype(int) - RED).max() <= 10  # stored top-left -> displayed top-right


# --- image_size and extensions -----------------------------------------------------------------


def test_image_size_valid() -> None:
    assert image_size(_encode(_noise_rgb(seed=6, height=30, width=50), "JPEG")) == (50, 30)


@pytest.mark.parametrize(
    "data, kind",
    [(b"", "empty"), (b"<html></html>", "not_an_image"), (b"\x89PNG\r\n\x1a\n\x00\x00", "unreadable")],
    ids=["empty", "html", "cut-header"],
)
def test_image_size_invalid(data: bytes, kind: str) -> None:
    with pytest.raises(ImageDecodeError) as info:
        image_size(data)
    assert info.value.kind == kind


@pytest.mark.parametrize(
    "name, expected",
    [("a.jpg", True), ("A.JPEG", True), ("dir/x.tiff", True), ("s3://b/k/y.WebP", True),
     ("notes.txt", False), ("jpg", False), ("archive.jpg.gz", False), ("", False)],
)
def test_classify_extension(name: str, expected: bool) -> None:
    assert classify_extension(name) is expected
