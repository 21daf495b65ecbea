"""Benchmark: distributed exact PCA (per-shard statistics on Dask workers) against IncrementalPCA.

A store of ``--rows`` x ``--dim`` float32 feature shards (``--shard-rows`` each; low-rank signal + noise
like CNN features: ``X = Z W + 0.1 N``, ``Z`` (n, 64) with decaying scales) is written once (not
timed). Then, in one run:

* **read**: one pass reading every shard with ``imgclust.models.model.feature_source`` (MB/s of Parquet decoded into
  float32), next to the disk's sequential read rate (``dd`` of a fresh 1 GiB file with
  ``iflag=direct``, bypassing the page cache);
* **ipca**: ``StreamingPCA(n_components=k)`` streamed over the shards in this process;
* **exact, 1 process**: ``ExactPCA(n_components=k)`` over the same stream;
* **exact, Dask**: the ``pca-statistics`` task of the build/recluster flows mapped over shard groups
  on a Dask cluster reached by scheduler address (a ``LocalCluster`` of ``--workers`` processes
  started separately, as a multi-node cluster would be), merged and eigendecomposed in this process.

It prints times, MB/s and the largest principal angle between each subspace and the exact one.

    .venv/bin/python benchmarks/pca_scale.py --rows 1000000 --dim 2048 --ipca-rows 20000  # the issue's size (~8 GB)
    .venv/bin/python benchmarks/pca_scale.py --quick
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from quiet import add_quiet_args, wait_for_quiet

log = logging.getLogger("benchmarks.pca_scale")
KEY = "synthetic-features"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--k", type=int, default=128, help="components (default: %(default)s)")
    p.add_argument("--shard-rows", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2, help="Dask worker processes x 1 thread")
    p.add_argument("--ipca-rows", type=int, default=None,
                   help="fit IncrementalPCA on only the first N rows (whole shards) and also print its time scaled "
                        "to --rows; IPCA's cost is linear in rows (one SVD per batch), and at 1M x 2048 a full "
                        "IPCA fit takes hours on 2 cores (default: all rows)")
    p.add_argument("--work-dir", help="where the store goes (default: a temp folder, removed)")
    p.add_argument("--quick", action="store_true", help="smoke run: 20k x 256, k=16")
    add_quiet_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.dim, args.k, args.shard_rows = 20_000, 256, 16, 2000
    return args


def write_store(root: Path, rows: int, dim: int, shard_rows: int, seed: int = 0) -> list[str]:
    """Feature shards with a 64-d signal of decaying scale plus isotropic noise; returns shard ids."""
    from imgclust.io.features import embeddings_table, feature_path, marker_path
    from imgclust.io.store import Store

    store, rng = Store(root), np.random.default_rng(seed)
    W = rng.standard_normal((64, dim), dtype=np.float32) / np.sqrt(dim)
    scales = (1.0 / np.sqrt(1.0 + np.arange(64))).astype(np.float32) * 4.0
    ids = []
    for s, lo in enumerate(range(0, rows, shard_rows)):
        m = min(shard_rows, rows - lo)
        Z = rng.standard_normal((m, 64), dtype=np.float32) * scales
        X = Z @ W + 0.1 * rng.standard_normal((m, dim), dtype=np.float32)
        sid = f"2026-11-25_bench_{s:05d}"
        store.write_parquet(feature_path(KEY, sid), embeddings_table([f"{lo + i:09d}" for i in range(m)], X))
        store.write_json(marker_path(KEY, sid), {"shard_id": sid})
        ids.append(sid)
    return ids


def disk_read_mb_s(folder: Path) -> float:
    """Sequential read rate of a fresh 1 GiB file with O_DIRECT (page cache bypassed), MB/s."""
    f = folder / "dd.bin"
    subprocess.run(["dd", "if=/dev/urandom", f"of={f}", "bs=16M", "count=64", "status=none"], check=True)
    t0 = time.perf_counter()
    subprocess.run(["dd", f"if={f}", "of=/dev/null", "bs=16M", "iflag=direct", "status=none"], check=True)
    rate = 1024 / (time.perf_counter() - t0) * 1.048576
    f.unlink()
    return rate


def dask_stats(address: str, root: str, shards: list[str], k: int) -> Any:
    """The flows' pca-statistics work on Dask workers; returns the merged statistics."""
    from distributed import Client

    from imgclust.config import ReduceConfig
    from imgclust.io.store import Store
    from imgclust.models.model import write_pca_statistics
    from imgclust.reduce.pca import ScatterStats, merge_all

    reduce = ReduceConfig(method="pca", n_components=k)
    size = -(-len(shards) // 32)
    groups = [shards[i:i + size] for i in range(0, len(shards), size)]
    with Client(address) as client:
        futures = client.map(lambda g: write_pca_statistics(Store(root), KEY, g, reduce), groups, pure=False)
        paths = client.gather(futures)
    store = Store(root)
    stats = merge_all(ScatterStats.from_bytes(store.read_bytes(p)) for p in paths)
    for p in paths:
        store.remove(p)
    return stats


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from distributed import LocalCluster
    from scipy.linalg import subspace_angles

    from imgclust.io.store import Store
    from imgclust.models.model import feature_source
    from imgclust.reduce.pca import ExactPCA
    from imgclust.reduce.streaming import StreamingPCA

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="imgclust-bench-pca-", dir="/work" if
                                                  os.path.isdir("/work") else None))
    try:
        t0 = time.perf_counter()
        shards = write_store(work / "store", args.rows, args.dim, args.shard_rows)
        log.info("wrote %d shards in %.1fs", len(shards), time.perf_counter() - t0)
        store = Store(work / "store")
        mb = args.rows * args.dim * 4 / 1e6
        source = feature_source(store, KEY, shards)  # what the fit and the statistics tasks read

        rows: list[tuple[str, float, float, Any, float]] = []
        busy = wait_for_quiet(args.max_busy, args.max_wait)
        disk = disk_read_mb_s(work)
        t0 = time.perf_counter()
        n = sum(len(X) for X in source())
        read_s = time.perf_counter() - t0
        assert n == args.rows, (n, args.rows)
        rows.append(("read every shard (Parquet -> float32)", read_s, busy, None, 0.0))

        busy = wait_for_quiet(args.max_busy, args.max_wait)
        t0 = time.perf_counter()
        exact = ExactPCA(n_components=args.k).fit(source)
        rows.append(("exact PCA, 1 process", time.perf_counter() - t0, busy, exact.components_, 0.0))

        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster:
            busy = wait_for_quiet(args.max_busy, args.max_wait)
            t0 = time.perf_counter()
            stats = dask_stats(cluster.scheduler_address, str(work / "store"), shards, args.k)
            dist = ExactPCA(n_components=args.k).fit_stats(stats)
            rows.append((f"exact PCA, Dask {args.workers} workers by address", time.perf_counter() - t0, busy,
                         dist.components_, 0.0))

        busy = wait_for_quiet(args.max_busy, args.max_wait)
        t0 = time.perf_counter()
        ipca_shards = shards if not args.ipca_rows else shards[:max(1, -(-args.ipca_rows // args.shard_rows))]
        ipca_rows = min(args.rows, len(ipca_shards) * args.shard_rows)
        ipca = StreamingPCA(n_components=args.k).fit(feature_source(store, KEY, ipca_shards))
        ipca_s = time.perf_counter() - t0
        if ipca_rows == args.rows:
            rows.append(("IncrementalPCA, 1 process", ipca_s, busy, ipca.components_, 0.0))
        else:
            rows.append((f"IncrementalPCA, 1 process, first {ipca_rows:,} rows only (measured)", ipca_s, busy,
                         ipca.components_, ipca_rows / args.rows))
            rows.append((f"IncrementalPCA, 1 process, all rows (extrapolated: measured x {args.rows / ipca_rows:g})",
                         ipca_s * args.rows / ipca_rows, busy, None, 0.0))

        ref = exact.components_.T.astype(np.float64)
        print(f"{args.rows:,} x {args.dim} float32 ({mb:,.0f} MB) in {len(shards)} Parquet shards, k={args.k}; "
              f"{platform.machine()}, {os.cpu_count()} cores; disk sequential read (O_DIRECT): {disk:,.0f} MB/s\n")
        print("| step | time s | MB/s of features | time / exact 1 process | max principal angle vs exact (deg) "
              "| angle of the 10 leading axes (deg) | others' CPU % |")
        print("|---|---|---|---|---|---|---|")
        exact_s = rows[1][1]
        for name, sec, b, comps, frac in rows:
            data_mb = mb * frac if frac else mb
            if comps is None:
                angle = lead = "-"
            else:
                C = comps.T.astype(np.float64)
                angle = f"{np.degrees(np.max(subspace_angles(C, ref))):.3f}"
                lead = f"{np.degrees(np.max(subspace_angles(C[:, :10], ref[:, :10]))):.3f}"
            print(f"| {name} | {sec:.1f} | {data_mb / sec:,.0f} | {sec / exact_s:.2f} | {angle} | {lead} | {b:.0f} |")
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
