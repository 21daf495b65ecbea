"""Benchmark: images/s of the ``extract_features`` flow against the same backbone without the pipeline.

Three ways to embed the same PNG corpus (Fashion-MNIST test images written as real files), in one run:

* **bare**: ``backbone.embed`` on tensors decoded and preprocessed beforehand (no IO, no decode):
  the ceiling set by the model alone, torch with its default thread count in this process.
* **library**: ``imgclust.extract.shard.extract_shard`` over the same shards, sequentially in this process
  (read + decode + preprocess + embed + Parquet write, no Prefect/Dask).
* **flow**: the Prefect flow on a local Dask cluster of ``--workers`` processes (1 thread each),
  inside an embedded Prefect API. "wall" includes cluster start-up and Prefect bookkeeping;
  "steady" is sum(n_input) / sum(shard wall) from the shards' done-markers, times the number of
  busy workers: throughput once the cluster is up.

Every timed run writes to a fresh store, so no shard is skipped. A warm-up (a few batches for bare,
one small shard for library, a flow run on a small corpus for flow) is excluded from the timings.
Random weights are used for neural backbones: speed does not depend on the weight values.

    .venv/bin/python benchmarks/extract.py            # pixels:5000, tinycnn:5000, resnet18:1000
    .venv/bin/python benchmarks/extract.py --quick    # smoke run
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import markdown_table, parse_image_counts
from quiet import add_quiet_args, wait_for_quiet

log = logging.getLogger("benchmarks.extract")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="pixels:5000,tinycnn:5000,resnet18:1000",
                   help="comma-separated NAME:IMAGES (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="Dask worker processes for the flow (default: 2)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=500)
    p.add_argument("--weights", default="random", help="weights for neural backbones (default: random)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus sample and of random weights")
    p.add_argument("--work-dir", help="where corpora and stores go (default: a temporary folder, removed)")
    p.add_argument("--quick", action="store_true", help="smoke run: 200 images per backbone, shard size 50")
    add_quiet_args(p)
    args = p.parse_args(argv)
    args.backbones = parse_image_counts(p, args.backbones, example="pixels:5000,resnet18:1000",
                                        quick=200 if args.quick else None)
    if args.quick:
        args.shard_size = 50
    return args


def fresh_store(work: Path, name: str, corpus: str) -> Path:
    """An empty store with the corpus ingested (not timed)."""
    from imgclust.io.manifest import ingest
    from imgclust.io.store import Store

    root = work / "stores" / name
    if root.exists():
        raise FileExistsError(f"{root} exists; every timed run needs a fresh store (use a new --work-dir)")
    ingest(Store(root), corpus)
    return root


def load_batches(backbone: Any, corpus: str, batch_size: int) -> list[Any]:
    """Decode and preprocess every image of ``corpus`` (not timed); batches of ``(B, C, S, S)``."""
    import torch

    from imgclust.extract.images import decode_image

    files = sorted(Path(corpus).rglob("*.png"))
    mode = backbone.preprocessing.mode
    tensors = [backbone.preprocess(decode_image(f.read_bytes(), mode=mode)) for f in files]
    return [torch.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]


def bench_bare(backbone: Any, batches: list[Any], quiet: Callable[[], float]) -> tuple[float, float]:
    for batch in batches[:4]:  # warm-up
        backbone.embed(batch)
    busy = quiet()
    t0 = time.perf_counter()
    n = sum(backbone.embed(batch).shape[0] for batch in batches)
    return n / (time.perf_counter() - t0), busy


def bench_library(cfg: Any, work: Path, name: str, corpus: str, warm_corpus: str,
                  quiet: Callable[[], float]) -> tuple[float, float]:
    from imgclust.extract.shard import extract_shard
    from imgclust.io.manifest import plan_shards
    from imgclust.io.store import Store

    warm = Store(fresh_store(work, f"{name}-library-warmup", warm_corpus))
    extract_shard(warm, plan_shards(warm, shard_size=cfg.batch_size)[0], cfg)
    store = Store(fresh_store(work, f"{name}-library", corpus))
    specs = plan_shards(store, shard_size=cfg.shard_size)
    busy = quiet()
    t0 = time.perf_counter()
    n = sum(extract_shard(store, spec, cfg)["n_input"] for spec in specs)
    return n / (time.perf_counter() - t0), busy


def bench_flow(cfg: Any, work: Path, name: str, corpus: str, warm_corpus: str, workers: int,
               quiet: Callable[[], float]) -> dict[str, float]:
    from flows.extract_features import extract_features
    from flows.runtime import dask_task_runner
    from imgclust.config import RunnerConfig
    from imgclust.io.features import read_marker
    from imgclust.io.store import Store

    flow = extract_features.with_options(task_runner=dask_task_runner(RunnerConfig(workers=workers)))
    flow(store=str(fresh_store(work, f"{name}-flow-warmup", warm_corpus)),
         extract=cfg.model_copy(update={"shard_size": cfg.batch_size}))  # warm-up
    root = fresh_store(work, f"{name}-flow", corpus)
    busy = quiet()
    t0 = time.perf_counter()
    result = flow(store=str(root), extract=cfg)
    wall = time.perf_counter() - t0
    if result["shards_skipped"] or result["quarantined"]:
        raise RuntimeError(f"flow run was not a clean full run: {result}")
    markers = [read_marker(Store(root), result["extractor_key"], sid) for sid in result["shard_ids"]]
    n = sum(m.n_input for m in markers if m)
    shard_wall = sum(m.seconds["wall"] for m in markers if m)
    shard_embed = sum(m.seconds["embed"] for m in markers if m)
    busy_workers = min(workers, len(markers))
    return {"wall": result["images"] / wall, "steady": n / shard_wall * busy_workers, "embed_share": shard_embed / shard_wall,
            "shards": len(markers), "seconds": wall, "busy_flow": busy}


def run_backbone(name: str, n_images: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from imgclust.config import ExtractConfig
    from imgclust.data.datasets import build_demo_corpus
    from imgclust.extract.backbones.registry import describe_backbones
    from imgclust.extract.shard import backbone_for

    weights = None if describe_backbones()[name].endswith("(default weights: none)") else args.weights
    cfg = ExtractConfig(extractor=name, weights=weights, device="cpu", batch_size=args.batch_size,
                        shard_size=args.shard_size, seed=args.seed)
    corpus = str(build_demo_corpus(work / "corpus", limit=n_images, seed=args.seed)["path"])
    warm_corpus = str(build_demo_corpus(work / "corpus", limit=2 * args.batch_size, seed=args.seed + 1)["path"])
    backbone = backbone_for(cfg)
    batches = load_batches(backbone, corpus, args.batch_size)
    n = sum(b.shape[0] for b in batches)
    log.info("%s: %d images, bare embed ...", name, n)
    quiet = functools.partial(wait_for_quiet, args.max_busy, args.max_wait)
    bare, busy_bare = bench_bare(backbone, batches, quiet)
    del batches
    log.info("%s: bare %.1f img/s; library extract_shard ...", name, bare)
    lib, busy_lib = bench_library(cfg, work, name, corpus, warm_corpus, quiet)
    log.info("%s: library %.1f img/s; flow ...", name, lib)
    flow = bench_flow(cfg, work, name, corpus, warm_corpus, args.workers, quiet)
    log.info("%s: flow %.1f img/s wall (%.1fs), %.1f img/s steady", name, flow["wall"], flow["seconds"],
             flow["steady"])
    return {"name": name, "weights": backbone.weights_id, "images": n, "bare": bare, "library": lib, **flow,
            "busy": f"{busy_bare:.0f}/{busy_lib:.0f}/{flow['busy_flow']:.0f}"}


def table(rows: list[dict[str, Any]], workers: int) -> str:
    head = ["backbone (weights)", "images", "shards", "bare embed img/s", "library img/s",
            "flow img/s (wall, incl. start-up)", f"flow steady img/s (markers x {workers} workers)",
            "embed share of shard time", "flow/bare", "flow/library", "steady/bare",
            "others' CPU % before bare/library/flow"]
    return markdown_table(head, [
        [f"{r['name']} ({r['weights']})", r["images"], r["shards"], f"{r['bare']:.0f}", f"{r['library']:.0f}",
         f"{r['wall']:.0f}", f"{r['steady']:.0f}", f"{r['embed_share']:.0%}", f"{r['wall'] / r['bare']:.2f}",
         f"{r['wall'] / r['library']:.2f}", f"{r['steady'] / r['bare']:.2f}", r["busy"]]
        for r in rows])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="imgclust-bench-extract-") as tmp:
        work = Path(args.work_dir or tmp)
        os.environ.setdefault("PREFECT_HOME", str(work / "prefect-home"))
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        import torch

        from flows.runtime import embedded_prefect

        log.info("torch threads in this process: %d (Dask workers: 1 each)", torch.get_num_threads())
        rows = []
        with embedded_prefect(work / "prefect"):
            for name, n_images in args.backbones:
                rows.append(run_backbone(name, n_images, args, work))
    print(table(rows, args.workers))


if __name__ == "__main__":
    main()
