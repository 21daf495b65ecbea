"""The data interface of the algorithms: an in-memory array or a batch source, read in blocks.

Algorithms accept either an in-memory array ``X`` of shape ``(n, D)`` or a :data:`BatchSource`: a
zero-argument callable whose every call starts a fresh pass and yields float32 blocks
``(n_i, D)``. A Parquet-backed feature store provides the latter, :func:`as_batch_source` wraps an
array. Algorithms only need a pass over the blocks (:func:`iter_blocks`) and a seeded row sample
(:func:`sample_rows`), so the two are interchangeable (faiss ``contrib/clustering.py`` codes
k-means against the same small interface).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from imgclust.exceptions import ConfigError
from imgclust.validation import check_array

__all__ = ["BatchSource", "ArrayOrSource", "as_batch_source", "iter_blocks", "RowSample", "sample_rows"]

BatchSource = Callable[[], Iterator[np.ndarray]]
"""Zero-argument callable; each call starts a fresh pass yielding float32 blocks ``(n_i, D)``.
A producer may reuse a block's buffer once the next block is requested; consumers copy what they keep."""

ArrayOrSource = np.ndarray | BatchSource
"""What ``fit`` accepts: an in-memory array ``(n, D)`` or a :data:`BatchSource`."""

def as_batch_source(X: np.ndarray, batch_size: int = 65536) -> BatchSource:
    """Wrap an in-memory array ``(n, D)`` as a :data:`BatchSource` of ``batch_size``-row views."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    arr = check_array(X)

    def source() -> Iterator[np.ndarray]:
        for start in range(0, arr.shape[0], batch_size):
            yield arr[start:start + batch_size]

    return source


def columns_of(source: BatchSource, start: int, stop: int) -> BatchSource:
    """The columns ``start:stop`` of every block ``(n_i, D)`` of ``source``, C-contiguous."""
    def sliced() -> Iterator[np.ndarray]:
        for block in source():
            yield np.ascontiguousarray(block[:, start:stop])

    return sliced


def iter_blocks(data: ArrayOrSource, *, batch_size: int = 65536, n_features: int | None = None) -> Iterator[np.ndarray]:
    """Yield validated float32 blocks ``(n_i, D)`` from an array or a :data:`BatchSource`.

    Every block is checked with :func:`check_array`; all blocks must share ``D`` (and equal
    ``n_features`` when given). Empty blocks are skipped.
    """
    if not callable(data):
        arr = check_array(data, n_features=n_features)
        for start in range(0, arr.shape[0], batch_size):
            yield arr[start:start + batch_size]
        return
    blocks = data()
    if not isinstance(blocks, Iterable):
        raise ConfigError("a BatchSource must return an iterator of arrays when called; got "
                          f"{type(blocks).__name__}. Pass `lambda: iter(blocks)` or use as_batch_source(X)")
    dim = n_features
    for i, block in enumerate(blocks):
        arr = check_array(block, n_features=dim, name=f"block {i} of the batch source")
        dim = arr.shape[1]
        if arr.shape[0]:
            yield arr


@dataclass(frozen=True)
class RowSample:
    """A seeded uniform sample of rows: ``rows`` ``(m, D)`` float32, ``indices`` ``(m,)`` int64
    global row positions (ascending), ``n_total`` rows seen in the pass."""

    rows: np.ndarray
    indices: np.ndarray
    n_total: int


def sample_rows(data: ArrayOrSource, max_rows: int | None, seed: int) -> RowSample:
    """Uniform sample without replacement of at most ``max_rows`` rows, in one pass.

    Bottom-k sampling: every row gets a key from ``np.random.default_rng(seed)`` (drawn in row
    order) and the rows with the ``max_rows`` smallest keys are kept, so the sample is
    deterministic given the seed and identical for an array and for any blocking of the same rows
    into a :data:`BatchSource` (a vectorised reservoir sample). ``max_rows=None`` keeps every row.
    Memory stays at ``O(max_rows * D)`` (at most ``2 * max_rows`` rows are buffered).
    """
    if max_rows is not None and max_rows < 1:
        raise ConfigError(f"the sample size must be >= 1 or None, got {max_rows}")
    rng = np.random.default_rng(seed)
    keys_l: list[np.ndarray] = []
    idx_l: list[np.ndarray] = []
    rows_l: list[np.ndarray] = []
    buffered = 0
    threshold = np.inf  # rows with a key >= the current max_rows-th smallest can never enter
    n_total = 0

    def compact() -> float:
        keys, idx, rows = np.concatenate(keys_l), np.concatenate(idx_l), np.concatenate(rows_l)
        sel = np.argpartition(keys, max_rows - 1)[:max_rows]  # type: ignore[operator]
        keys_l[:], idx_l[:], rows_l[:] = [keys[sel]], [idx[sel]], [rows[sel]]
        return float(keys[sel].max())

    for block in iter_blocks(data):
        n = block.shape[0]
        keys = np.asarray(rng.random(n))
        idx = np.arange(n_total, n_total + n, dtype=np.int64)
        n_total += n
        take = keys < threshold
        keys_l.append(keys[take])
        idx_l.append(idx[take])
        rows_l.append(block[take])  # boolean indexing copies: the source may reuse its buffer
        buffered += int(take.sum())
        if max_rows is not None and buffered >= 2 * max_rows:  # amortised O(1) per row
            threshold, buffered = compact(), max_rows
    if n_total == 0:
        raise ConfigError("the input has no rows; fit needs at least one sample")
    if max_rows is not None and buffered > max_rows:
        compact()
    rows, idx = np.concatenate(rows_l), np.concatenate(idx_l)
    order = np.argsort(idx, kind="stable")
    return RowSample(np.ascontiguousarray(rows[order]), idx[order], n_total)
