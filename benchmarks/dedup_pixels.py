"""Is a grey-pixel space a near-duplicate space? Copies vs distinct images in ``pixels-28-L`` on Fashion-MNIST.

The nightly near-duplicate flags of a promoted ``simclr`` model search the pixel space of the model it refined
(:func:`imgclust.models.dedup.near_duplicate_search_space`), with the one default threshold (cosine 0.98) that was
calibrated for the ``layout`` descriptor on photos. This script measures what that threshold means in the pixel
space of 28-px grey garments: for every test image, the cosine similarity to its nearest *other* test image
(distinct pictures; Fashion-MNIST's products repeat, so some are versions of one picture), and for a seeded
sample, the similarity of a copy to its original, per kind of copy (JPEG re-encodes, brightness and contrast
changes, a half-size round trip, a one-pixel shift). Rows: the share at or above each threshold.

    PYTHONPATH=. .venv/bin/python benchmarks/dedup_pixels.py
"""
from __future__ import annotations

import argparse
import io
import logging
from collections.abc import Callable

import numpy as np
from _common import fashion_mnist_splits, markdown_table, setup_logging
from PIL import Image, ImageEnhance

log = logging.getLogger("benchmarks.dedup_pixels")
THRESHOLDS = (0.95, 0.98, 0.99, 0.995, 0.998)


def _jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def copy(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return Image.open(buf).convert("L")
    return copy


COPIES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg q90": _jpeg(90), "jpeg q60": _jpeg(60), "jpeg q35": _jpeg(35),
    "brightness x1.1": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
    "contrast x0.9": lambda im: ImageEnhance.Contrast(im).enhance(0.9),
    "half size and back": lambda im: im.resize((14, 14), Image.Resampling.BILINEAR).resize(
        (28, 28), Image.Resampling.BILINEAR),
    "shifted 1 px": lambda im: Image.fromarray(np.roll(np.asarray(im), 1, axis=1)),
}


def unit_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 ``(n, 28, 28)`` -> ``(n, 784)`` float32 rows of unit length (the ``pixels`` extractor's space up to scale)."""
    X = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> None:
    import faiss

    setup_logging()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--copies", type=int, default=500, help="originals copied per kind (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    _, _, x, _ = fashion_mnist_splits()
    X = unit_pixels(x)
    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    sims, _ = index.search(X, 2)
    rows = [["nearest other test image (10,000)", *(f"{(sims[:, 1] >= t).mean():.1%}" for t in THRESHOLDS),
             f"{np.median(sims[:, 1]):.4f}"]]
    pick = np.random.default_rng(args.seed).choice(len(x), args.copies, replace=False)
    for name, copy in COPIES.items():
        C = unit_pixels(np.stack([np.asarray(copy(Image.fromarray(x[j]))) for j in pick]))
        s = np.einsum("ij,ij->i", C, X[pick])
        rows.append([f"{name} copy vs its original ({args.copies})", *(f"{(s >= t).mean():.1%}" for t in THRESHOLDS),
                     f"{np.median(s):.4f}"])
    log.info("Fashion-MNIST test split, pixels / 255 as unit vectors (cosine similarity), seed %d\n%s", args.seed,
             markdown_table(["pairs", *(f">= {t}" for t in THRESHOLDS), "median"], rows))


if __name__ == "__main__":
    main()
