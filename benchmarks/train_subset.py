"""The seeded Fashion-MNIST *train* subset the defaults are chosen on (never the test split that
``benchmarks/quality.py`` scores), and the arguments every choice benchmark shares."""
from __future__ import annotations

import argparse
import logging

import numpy as np


def add_subset_args(p: argparse.ArgumentParser) -> None:
    """``--n`` (subset size) and ``--threads`` (torch intra-op threads)."""
    p.add_argument("--n", type=int, default=10000, help="train-split images (seeded subset)")
    p.add_argument("--threads", type=int, default=2)


def train_subset(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """Set logging and torch's thread count from ``args``; return ``args.n`` train images ``(n, 28, 28)``
    uint8 and labels ``(n,)``, drawn with ``np.random.default_rng(1)`` and kept in file order."""
    import torch

    from imgclust.data.datasets import load_fashion_mnist

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    x, y = load_fashion_mnist("train")
    idx = np.sort(np.random.default_rng(1).choice(len(x), args.n, replace=False))
    return x[idx], y[idx]
