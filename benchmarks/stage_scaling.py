"""How each pipeline stage's cost grows with the corpus: library stages timed at 3+ sizes, log-log slopes.

Per size ``n`` (``--sizes``), a fresh store and a folder of ``n`` real PNG files (Fashion-MNIST
train+test images; beyond 70,000 each repeat gets one pixel changed so every file is distinct
content) go through the library functions the flows call, in this process, sequentially:

* **ingest**: list + hash + manifest part (``imgclust.io.manifest.ingest``);
* **extract**: every shard with ``extract_shard`` (``--extractor``, default ``pixels``; 1,000 per shard);
* **pca statistics**: ``write_pca_statistics`` over all shards (what the Dask workers do, summed);
* **fit**: merge + ``ExactPCA(50)`` + k-means 10 on a sample (``fit_from_store``);
* **label**: ``label_shard`` for every shard.

Printed: seconds per stage and size, images/s, and the slope of ``log(time)`` against ``log(n)``
(least squares): 1.0 = linear, ~0 = independent of the corpus. ``docs/scaling.md`` projects from it.

    .venv/bin/python benchmarks/stage_scaling.py                     # 10k, 30k, 100k images
    .venv/bin/python benchmarks/stage_scaling.py --sizes 2000,4000,8000   # smoke run
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from quiet import add_quiet_args, wait_for_quiet

log = logging.getLogger("benchmarks.stage_scaling")
STAGES = ("ingest", "extract", "pca statistics", "fit", "label")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,30000,100000")
    p.add_argument("--extractor", default="pixels")
    p.add_argument("--work-dir", help="where corpora and stores go (default: a temp folder, removed)")
    add_quiet_args(p)
    return p.parse_args(argv)


def write_corpus(folder: Path, n: int) -> None:
    """``n`` distinct PNG files from Fashion-MNIST (all 70k images, then copies with one pixel changed)."""
    from imgclust.data.datasets import load_fashion_mnist

    x, _ = load_fashion_mnist("all")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = x[i % len(x)].copy()
        if i >= len(x):
            img[0, 0] = (int(img[0, 0]) + 1 + i // len(x)) % 256
        sub = folder / f"{i // 10_000:03d}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(img).save(sub / f"{i:07d}.png")


def run_size(root: Path, n: int, extractor: str) -> dict[str, float]:
    from imgclust.config import ClusterConfig, ExtractConfig, Recipe, ReduceConfig
    from imgclust.extract.shard import extract_shard
    from imgclust.io.manifest import ingest, plan_shards
    from imgclust.io.store import Store
    from imgclust.models.labels import label_shard
    from imgclust.models.model import fit_from_store, write_pca_statistics

    store, t = Store(root / "store"), {}
    cfg = ExtractConfig(extractor=extractor, shard_size=1000)
    reduce = ReduceConfig(method="pca", n_components=50)
    t0 = time.perf_counter()
    summary = ingest(store, str(root / "images"), date=dt.date(2026, 11, 25))
    t["ingest"] = time.perf_counter() - t0
    specs = plan_shards(store, shard_size=cfg.shard_size, parts=[summary.part])
    t0 = time.perf_counter()
    done = [extract_shard(store, spec, cfg) for spec in specs]
    t["extract"] = time.perf_counter() - t0
    key, shard_ids = done[0]["extractor_key"], [d["shard_id"] for d in done]
    t0 = time.perf_counter()
    paths = [write_pca_statistics(store, key, [sid], reduce) for sid in shard_ids]
    t["pca statistics"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = fit_from_store(store, key, recipe=Recipe(reduce=reduce,
                                                     cluster=ClusterConfig(k=10, n_redo=1)), extract=cfg,
                           shard_ids=shard_ids, pca_statistics=paths)
    t["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    labeled = sum(label_shard(store, model.model_id, key, sid)["n"] for sid in shard_ids)
    t["label"] = time.perf_counter() - t0
    if labeled != n:
        raise RuntimeError(f"{n} images but {labeled} labels: the run lost images")
    return t


def slope(sizes: list[int], times: list[float]) -> float:
    """Least-squares slope of log(time) on log(size)."""
    return float(np.polyfit(np.log(sizes), np.log(np.maximum(times, 1e-6)), 1)[0])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sizes = sorted(int(s) for s in args.sizes.split(","))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="imgclust-bench-scaling-"))
    try:
        results, busy = {}, {}
        write_corpus(work / "warmup" / "images", 1000)
        run_size(work / "warmup", 1000, args.extractor)  # imports, faiss/BLAS start-up: not in the table
        for n in sizes:
            root = work / f"n{n}"
            write_corpus(root / "images", n)
            busy[n] = wait_for_quiet(args.max_busy, args.max_wait)
            results[n] = run_size(root, n, args.extractor)
            log.info("%d images: %s", n, {k: round(v, 2) for k, v in results[n].items()})
            shutil.rmtree(root, ignore_errors=True)
        print(f"extractor {args.extractor}, shards of 1,000, exact PCA 50 + k-means 10; {platform.machine()}, "
              f"{os.cpu_count()} cores, one process\n")
        print("| stage | " + " | ".join(f"{n:,} images: s (img/s)" for n in sizes) + " | log-log slope |")
        print("|---|" + "---|" * (len(sizes) + 1))
        for stage in STAGES:
            cells = [f"{results[n][stage]:.2f} ({n / results[n][stage]:,.0f})" for n in sizes]
            print(f"| {stage} | " + " | ".join(cells) + f" | {slope(sizes, [results[n][stage] for n in sizes]):.2f} |")
        print("\nothers' CPU % before each size: " + ", ".join(f"{n:,}: {busy[n]:.0f}" for n in sizes))
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
