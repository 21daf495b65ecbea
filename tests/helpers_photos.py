"""Real and synthetic photos for the photo-corpus tests (nothing is committed).

``requires_photos`` skips a test where Debian's wallpaper packages are absent; ``photo_like`` makes a
seeded, smooth, colourful picture for the tests that must run everywhere.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclust.data.photos import INSTALL_COMMAND, photos_installed

requires_photos = pytest.mark.skipif(
    not photos_installed(),
    reason=f"Debian wallpapers not installed ({INSTALL_COMMAND}, as root); `make test` installs them",
)


def photo_like(seed: int, width: int, height: int) -> Image.Image:
    """An RGB ``width x height`` picture: smooth colour regions plus finer texture, one seed per picture."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height),
                                                                                    Image.Resampling.BICUBIC)
    fine = Image.fromarray(rng.integers(0, 256, (height // 40, width // 40, 3), dtype=np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC)
    return Image.blend(coarse, fine, 0.3)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
