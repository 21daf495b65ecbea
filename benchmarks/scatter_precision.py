"""Benchmark: the cost and the rounding of the PCA scatter ``C^T C`` in float32 and in float64.

Issue 22 asked what "exact" PCA promises: accumulate the scatter in float64, or keep the float32 GEMM and
state its precision. This script measures both side by side in one run over ``--rows`` x ``--dim`` rows
(synthetic CNN-like features, ``X = Z W + 0.1 N``, generated in ``--batch``-row batches as the feature
shards arrive; generation is timed separately and not counted):

* **float32, one GEMM per batch** (the code before issue 22): float32 rounding accumulates over a whole
  batch (65,536 rows by default);
* **float32, GEMM_ROWS pieces** (``ScatterStats.of`` now): the same float32 GEMMs over at most
  ``imgclust.reduce.pca.GEMM_ROWS`` rows, summed in float64;
* **float64 GEMM**: the centred rows in float64.

For each it prints seconds, rows/s, the time ratio to the current code, and, on the first batch, the
largest error of an entry relative to ``(|C|^T |C|)_jk`` against a float64 reference, next to the bound
``gamma(b + 2)`` of the module docstring.

    .venv/bin/python benchmarks/scatter_precision.py --rows 1000000 --dim 2048   # the issue's size
    .venv/bin/python benchmarks/scatter_precision.py --quick
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator

import numpy as np
from _common import parse_benchmark_args
from quiet import wait_for_quiet

from imgclust.reduce.pca import GEMM_ROWS, ScatterStats, float32_scatter_bound

log = logging.getLogger("benchmarks.scatter_precision")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=262_144)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--batch", type=int, default=65_536, help="rows per block handed to ScatterStats.of")
    args = parse_benchmark_args(p, argv, quick="32,768 x 256")
    if args.quick:
        args.rows, args.dim, args.batch = 32_768, 256, 16_384
    return args


def batches(rows: int, dim: int, batch: int) -> Iterator[np.ndarray]:
    """Seeded low-rank + noise float32 blocks ``(batch, dim)``, like CNN features (non-negative mean)."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((64, dim)).astype(np.float32) / 8
    scales = (np.geomspace(4.0, 0.1, 64)).astype(np.float32)
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        Z = rng.standard_normal((n, 64)).astype(np.float32) * scales
        yield np.abs(Z @ W + 0.1 * rng.standard_normal((n, dim)).astype(np.float32)) + 0.5


def one_gemm_float32(X: np.ndarray) -> np.ndarray:
    mean = X.mean(axis=0, dtype=np.float64)
    C = (X - mean).astype(np.float32)
    return (C.T @ C).astype(np.float64)


def pieces_float32(X: np.ndarray) -> np.ndarray:
    return ScatterStats.of(X).scatter


def gemm_float64(X: np.ndarray) -> np.ndarray:
    C = X - X.mean(axis=0, dtype=np.float64)  # float64
    return C.T @ C


VARIANTS: list[tuple[str, Callable[[np.ndarray], np.ndarray], int | None]] = [
    ("float32, one GEMM per batch (before)", one_gemm_float32, None),
    (f"float32, {GEMM_ROWS:,}-row GEMMs summed in float64 (now)", pieces_float32, GEMM_ROWS),
    ("float64 GEMM", gemm_float64, 0),
]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    busy = wait_for_quiet(args.max_busy, args.max_wait)
    seconds = dict.fromkeys((v[0] for v in VARIANTS), 0.0)
    errors: dict[str, float] = {}
    gen_s = 0.0
    t = time.perf_counter()
    for i, X in enumerate(batches(args.rows, args.dim, args.batch)):
        gen_s += time.perf_counter() - t
        if i == 0:
            C = X.astype(np.float64) - X.mean(axis=0, dtype=np.float64)
            exact, scale = C.T @ C, np.abs(C).T @ np.abs(C)
        for name, fn, _ in VARIANTS:  # interleaved, so a busy spell hits every variant alike
            t = time.perf_counter()
            S = fn(X)
            seconds[name] += time.perf_counter() - t
            if i == 0:
                errors[name] = float(np.max(np.abs(S - exact) / np.maximum(scale, 1e-300)))
        log.info("batch %d of %d done", i + 1, -(-args.rows // args.batch))
        t = time.perf_counter()
    now = seconds[VARIANTS[1][0]]
    b0 = min(args.batch, args.rows)
    print(f"\nscatter of {args.rows:,} x {args.dim} float32 rows in {args.batch:,}-row batches; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, other load {busy:.0f}% "
          f"(data generation {gen_s:.1f} s, not counted)")
    print(f"{'variant':<52} {'seconds':>8} {'rows/s':>10} {'vs now':>7} {'max rel err':>12} {'bound':>10}")
    for name, _, acc in VARIANTS:
        terms = b0 if acc is None else min(acc, b0)
        bound = f"{float32_scatter_bound(terms):.2e}" if acc != 0 else "~1e-16 n"
        print(f"{name:<52} {seconds[name]:>8.1f} {args.rows / seconds[name]:>10,.0f} "
              f"{seconds[name] / now:>7.2f} {errors[name]:>12.2e} {bound:>10}")


if __name__ == "__main__":
    main()
