"""Shared by the benchmark scripts: logging, Fashion-MNIST splits, ``--quick`` and the quiet-machine options,
``NAME:IMAGES`` lists and Markdown tables.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and they import it as
``from _common import ...`` (like :mod:`quiet`).
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Sequence

import numpy as np
from quiet import add_quiet_args

__all__ = ["fashion_mnist_splits", "markdown_head", "markdown_row", "markdown_table", "parse_benchmark_args",
           "parse_image_counts", "setup_logging"]


def setup_logging(quiet: Sequence[str] = ("imgclust", "numba", "umap")) -> None:
    """INFO logging with timestamps for the script; the ``quiet`` libraries' loggers only from WARNING on."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)


def fashion_mnist_splits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` of Fashion-MNIST: uint8 images ``(n, 28, 28)`` and int labels ``(n,)``
    (:func:`imgclust.data.datasets.load_fashion_mnist`; 60,000 train and 10,000 test images)."""
    from imgclust.data.datasets import load_fashion_mnist

    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    return x_train, y_train, x_test, y_test


def parse_benchmark_args(parser: argparse.ArgumentParser, argv: list[str] | None, *,
                         quick: str) -> argparse.Namespace:
    """``parser``'s arguments from ``argv``, after adding its last options: ``--quick`` (help
    ``"smoke run: <quick>"``) and the quiet-machine ``--max-busy`` / ``--max-wait`` (:func:`quiet.add_quiet_args`)."""
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {quick}")
    add_quiet_args(parser)
    return parser.parse_args(argv)


def parse_image_counts(parser: argparse.ArgumentParser, spec: str, *, example: str,
                       quick: int | None = None) -> list[tuple[str, int]]:
    """``"NAME:IMAGES,..."`` as ``[(name, images), ...]``; every count is ``quick`` when given (a smoke run).

    A malformed ``spec`` ends the script through ``parser.error`` (exit status 2), showing ``example``.
    """
    items = [b.partition(":") for b in spec.split(",")]
    if any(not name or not n.isdigit() for name, _, n in items):
        parser.error(f"--backbones wants NAME:IMAGES,... (e.g. {example}), got {spec!r}")
    return [(name, quick if quick is not None else int(n)) for name, _, n in items]


def markdown_head(head: Sequence[str]) -> list[str]:
    """The header and separator lines of a Markdown table with columns ``head``."""
    return [markdown_row(head), "|" + "---|" * len(head)]


def markdown_table(head: Sequence[str], rows: Iterable[Iterable[object]]) -> str:
    """A Markdown table: columns ``head``, one line per row of ``rows`` (cells written with ``str``)."""
    return "\n".join([*markdown_head(head), *(markdown_row(cells) for cells in rows)])


def markdown_row(cells: Iterable[object]) -> str:
    """One Markdown table row of ``cells``, each written with ``str``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"
