"""Offline labelled image data: Fashion-MNIST from Debian's ``dataset-fashion-mnist``, digits from scikit-learn.

Used by the demo (as real PNG files on disk), the tests and the quality benchmarks. Nothing is
downloaded: a missing dataset raises ``FileNotFoundError`` naming the package that provides it.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

FASHION_DIR = Path(os.environ.get("IMGCLUST_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle_boot")


def fashion_mnist_available() -> bool:
    return (FASHION_DIR / "t10k-images-idx3-ubyte.gz").exists()


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64; split ``test`` (10k), ``train`` (60k) or ``all`` (70k)."""
    if not fashion_mnist_available():
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {FASHION_DIR}; install it with `apt-get install dataset-fashion-mnist` "
            "or set IMGCLUST_FASHION_MNIST_DIR"
        )
    prefixes = {"test": ["t10k"], "train": ["train"], "all": ["train", "t10k"]}[split]
    xs = [_read_idx(FASHION_DIR / f"{p}-images-idx3-ubyte.gz") for p in prefixes]
    ys = [_read_idx(FASHION_DIR / f"{p}-labels-idx1-ubyte.gz").astype(np.int64) for p in prefixes]
    return np.concatenate(xs), np.concatenate(ys)


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as (N, 8, 8) uint8 (0..16 scaled to 0..255) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target.astype(np.int64)


def write_image_folder(images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...] | list[str],
                       out_dir: str | os.PathLike[str]) -> int:
    """Write ``images`` as PNG files ``out_dir/<class>/<index>.png`` (skips when already complete)."""
    out = Path(out_dir)
    done = out / ".complete.json"
    if done.exists() and json.loads(done.read_text()).get("n") == len(images):
        return len(images)
    for name in class_names:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(img).save(out / class_names[int(y)] / f"{i:06d}.png", optimize=False)
    done.write_text(json.dumps({"n": len(images)}))
    log.info("wrote %d PNG files under %s", len(images), out)
    return len(images)


def build_demo_corpus(out_dir: str | os.PathLike[str], *, limit: int | None = None, seed: int = 0) -> dict[str, object]:
    """Real PNG files for the demo: the Fashion-MNIST test split, else scikit-learn digits (said so)."""
    classes: tuple[str, ...]
    if fashion_mnist_available():
        x, y = load_fashion_mnist("test")
        name, classes = "fashion-mnist-test", tuple(FASHION_CLASSES)
    else:
        log.warning("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); using scikit-learn digits")
        x, y = load_digits_images()
        name, classes = "sklearn-digits", tuple(str(i) for i in range(10))
    if limit is not None and limit < len(x):
        idx = np.sort(np.random.default_rng(seed).choice(len(x), size=limit, replace=False))
        x, y = x[idx], y[idx]
    folder = Path(out_dir) / (name if limit is None else f"{name}-{limit}")
    n = write_image_folder(x, y, classes, folder)
    return {"dataset": name, "images": n, "classes": len(classes), "path": str(folder)}
