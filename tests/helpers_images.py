"""Image corpora generated on the fly for store / manifest / extract tests (nothing is committed).

Import with ``from helpers_images import ...`` (pytest puts ``tests/`` on ``sys.path``) or as
``tests.helpers_images`` when ``tests`` is a package.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

#: A file whose ``read()`` fails with EIO even as root: /proc/self/mem is a regular file, and
#: offset 0 of a process's address space is never mapped.
UNREADABLE_TARGET = "/proc/self/mem"


def gray_array(seed: int, side: int = 28) -> np.ndarray:
    """``(side, side)`` uint8 noise, one seed per image."""
    return np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(seed: int, width: int = 40, height: int = 30) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def truncated_jpeg_bytes(seed: int) -> bytes:
    """A JPEG whose header parses but whose scan data stops half-way."""
    data = jpeg_bytes(seed, 64, 48)
    return data[: len(data) // 2]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def unreadable_works(tmp: Path) -> bool:
    """Whether a symlink to :data:`UNREADABLE_TARGET` is listed as a file and fails to read here."""
    probe = tmp / "probe-unreadable.jpg"
    try:
        os.symlink(UNREADABLE_TARGET, probe)
        if not probe.is_file():
            return False
        with open(probe, "rb") as f:
            f.read()
    except OSError:
        return probe.is_file()
    finally:
        if probe.is_symlink():
            probe.unlink()
    return False


def make_corpus(folder: Path, *, n_png: int = 40, n_jpeg: int = 10, seed: int = 0,
                with_unreadable: bool = False) -> dict[str, str]:
    """Write good and bad images under ``folder``; returns ``{file name: expected outcome}``.

    Outcomes: ``"ok"`` (28x28 grey PNG: raw pixels are an exact oracle), ``"ok-jpeg"`` (RGB
    JPEG) or the quarantine ``error_kind`` expected for a bad file (``empty``, ``not_an_image``,
    ``truncated``, ``too_large`` when extracted with ``max_pixels < 100 * 100``, ``io_error``).
    """
    expected: dict[str, str] = {}
    for i in range(n_png):
        sub = "a" if i % 2 else "b/c"
        write(folder / sub / f"img {i:03d}.png", png_bytes(gray_array(seed * 10_000 + i)))
        expected[f"img {i:03d}.png"] = "ok"
    for i in range(n_jpeg):
        write(folder / "jpegs" / f"photo_{i:02d}.JPG", jpeg_bytes(seed * 10_000 + 5000 + i))
        expected[f"photo_{i:02d}.JPG"] = "ok-jpeg"
    for i in range(3):
        write(folder / "bad" / f"zero_{i}.jpg", b"")
        expected[f"zero_{i}.jpg"] = "empty"
        write(folder / "bad" / f"text_{i}.jpg", f"this is not a jpeg, it is text number {i}\n".encode())
        expected[f"text_{i}.jpg"] = "not_an_image"
        write(folder / "bad" / f"trunc_{i}.jpg", truncated_jpeg_bytes(seed * 10_000 + 9000 + i))
        expected[f"trunc_{i}.jpg"] = "truncated"
    big = np.random.default_rng(seed + 77).integers(0, 256, (100, 100), dtype=np.uint8)
    write(folder / "bad" / "big.png", png_bytes(big))
    expected["big.png"] = "too_large"
    if with_unreadable:
        os.symlink(UNREADABLE_TARGET, folder / "bad" / "unreadable.jpg")
        expected["unreadable.jpg"] = "io_error"
    return expected
