"""Benchmark: peak memory of ``StreamingPCA`` streamed over Parquet feature shards, 100k vs 1M rows.

For each size a temporary store under ``--tmp`` gets ``features/<key>/shard-*.parquet`` files of
``--shard-rows`` rows x 512 float32 (written with ``embeddings_table`` + ``Store.write_parquet``,
generated shard by shard, so generation never holds all rows). A fresh child process (this script
with ``--child``) then imports everything, records its baseline RSS, fits
``StreamingPCA(n_components=50)`` on a :data:`BatchSource` over ``iter_feature_batches`` and
reports its peak RSS two ways: ``getrusage(RUSAGE_SELF).ru_maxrss`` (whole life of the process) and
the maximum of psutil RSS sampled every 5 ms in a thread (from which the delta over the baseline is
taken). A warm-up fit on the first shard runs before the timed fit (excluded from the time, not from
the peak). If memory is flat in the number of rows, the peak deltas at 1M and 100k are about equal.
Each store is deleted after its child finishes (1M rows is ~2 GB on disk).

    .venv/bin/python benchmarks/ipca_memory.py            # 100k and 1M rows
    .venv/bin/python benchmarks/ipca_memory.py --quick    # 20k and 100k rows
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from quiet import add_quiet_args, wait_for_quiet

log = logging.getLogger("benchmarks.ipca_memory")
KEY = "bench-512"
DIM = 512
MB = 1024 * 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated row counts (default: %(default)s)")
    p.add_argument("--shard-rows", type=int, default=10_000)
    p.add_argument("--components", type=int, default=50)
    p.add_argument("--read-batch", type=int, default=8192, help="rows per iter_feature_batches block")
    p.add_argument("--fit-batch", type=int, default=4096, help="StreamingPCA batch_size (rows per partial_fit)")
    p.add_argument("--blas-threads", type=int, help="limit BLAS/OpenMP threads of the fit (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default="/tmp", help="where the temporary stores go (default: /tmp)")
    p.add_argument("--quick", action="store_true", help="smoke run: 20k and 100k rows")
    add_quiet_args(p)
    p.add_argument("--child", help=argparse.SUPPRESS)  # store root: fit only, print JSON
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = "20000,100000"
    return args


def write_store(root: Path, rows: int, shard_rows: int, seed: int) -> None:
    """Low-rank (rank 64) signal + noise, float32 (rows, 512), written one shard at a time."""
    from imgclust.io.features import embeddings_table, feature_path
    from imgclust.io.store import Store

    store = Store(root)
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((64, DIM), dtype=np.float32)
    for i, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        emb = rng.standard_normal((n, 64), dtype=np.float32) @ basis
        emb += 0.1 * rng.standard_normal((n, DIM), dtype=np.float32)
        ids = [f"{j:09d}" for j in range(start, start + n)]
        store.write_parquet(feature_path(KEY, f"{i:05d}"), embeddings_table(ids, emb))


def child(args: argparse.Namespace) -> None:
    """Fit only; print one JSON line with times and memory (bytes)."""
    import psutil
    from threadpoolctl import threadpool_limits

    from imgclust.io.features import iter_feature_batches
    from imgclust.io.store import Store
    from imgclust.reduce.streaming import StreamingPCA

    store = Store(args.child)
    shards = [p.rsplit("/shard-", 1)[1].removesuffix(".parquet") for p in store.glob(f"features/{KEY}/shard-*.parquet")]

    def source(ids: list[str]) -> Any:
        return lambda: (emb for _, emb in iter_feature_batches(store, KEY, ids, batch_size=args.read_batch))

    proc = psutil.Process()
    baseline = proc.memory_info().rss
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    limits = threadpool_limits(args.blas_threads)  # None: leave the libraries' defaults
    StreamingPCA(n_components=args.components, batch_size=args.fit_batch).fit(source(shards[:1]))  # warm-up
    t0 = time.perf_counter()
    pca = StreamingPCA(n_components=args.components, batch_size=args.fit_batch).fit(source(shards))
    seconds = time.perf_counter() - t0
    limits.restore_original_limits()
    stop.set()
    sampler.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    print(json.dumps({"seconds": seconds, "rows": pca.n_samples_seen_, "baseline": baseline, "peak_sampled": peak[0],
                      "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # KiB on Linux
                      "explained": float(pca.explained_variance_ratio_.sum())}))


def measure(rows: int, args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"imgclust-ipca-{rows}-", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        write_store(root, rows, args.shard_rows, args.seed)
        disk = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        log.info("%d rows: wrote %.0f MB in %.1fs; fitting in a child process", rows, disk / MB,
                 time.perf_counter() - t0)
        cmd = [sys.executable, __file__, "--child", str(root), "--components", str(args.components),
               "--read-batch", str(args.read_batch), "--fit-batch", str(args.fit_batch)]
        cmd += ["--blas-threads", str(args.blas_threads)] if args.blas_threads else []
        busy = wait_for_quiet(args.max_busy, args.max_wait)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if result["rows"] != rows:
        raise RuntimeError(f"the child fitted {result['rows']} rows, expected {rows}")
    log.info("%d rows: %s", rows, result)
    return {**result, "disk": disk, "busy": busy}


def render(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    ref = results[0]["peak_sampled"] - results[0]["baseline"]
    threads = str(args.blas_threads or f"default ({os.cpu_count()})")
    head = ["rows", "BLAS threads", "on disk MB", "in RAM if loaded MB (rows x 512 x 4)", "fit s", "rows/s",
            "peak RSS MB (ru_maxrss)", "baseline RSS MB (after imports)", "peak delta MB (psutil, 5 ms)",
            f"delta / delta at {results[0]['rows']:,} rows", "others' CPU % before"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        delta = r["peak_sampled"] - r["baseline"]
        cells = [f"{r['rows']:,}", threads, f"{r['disk'] / MB:.0f}", f"{r['rows'] * DIM * 4 / MB:.0f}", f"{r['seconds']:.1f}",
                 f"{r['rows'] / r['seconds']:,.0f}", f"{r['ru_maxrss'] / MB:.0f}", f"{r['baseline'] / MB:.0f}",
                 f"{delta / MB:.0f}", f"{delta / ref:.2f}", f"{r['busy']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.info("StreamingPCA(n_components=%d, batch_size=%d), read batches of %d rows, shards of %d rows, "
             "BLAS threads %s", args.components, args.fit_batch, args.read_batch, args.shard_rows,
             args.blas_threads or "default")
    results = [measure(int(n), args) for n in args.sizes.split(",")]
    print(render(results, args))


if __name__ == "__main__":
    main()
