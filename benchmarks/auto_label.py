"""Benchmark: the nightly ``auto_label`` cost must grow with the new images, not with the corpus.

Per corpus size N, a store WITHOUT images for the old rows: manifest parts of 100k synthetic rows and done
feature shards of 1,000 rows for the same ids under ``pixels-28-L`` (784-d float32: Fashion-MNIST train
pixels / 255 + N(0, 0.05) noise); a model (``--reducer``: exact PCA 50 from summed statistics by
default, or IncrementalPCA 50; then k-means 10) fitted on all N rows and promoted (not timed). The
labeling cost per image is the same for both reducers (one ``(D, 50)`` projection); exact PCA fits the
1M store in about a minute instead of ~40 with IPCA on 2 cores. Timed per size, on a fresh copy of the same ``--new`` real PNGs (Fashion-MNIST test):

* **flow**: ``flows.auto_label.auto_label`` on a local Dask cluster of ``--workers`` processes in an
  embedded Prefect API; wall time of the call (includes cluster start-up and Prefect bookkeeping).
* **library**: the same work in this process, sequentially: ``manifest.ingest``, then ``extract_shard``
  and ``label_shard`` per new shard. Probes of ingest's per-corpus part (not in the library total):
  ``read_manifest`` of the dedupe columns, its ``mtime`` column to Python (as ingest does), and
  ``ingest`` of an empty folder ("nothing new": read + dedupe sets).

The library run's files are deleted before the flow run, so both see the same store. Sizes are measured
interleaved ``--repeat`` times (medians) after a warm-up, each once the 1-min load average is below
``--max-load`` (polled every 30 s, 10 minutes of waiting at most in all).

    .venv/bin/python benchmarks/auto_label.py [--quick]   # default: 100k and 1M rows, 10,000 new images
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

log = logging.getLogger("benchmarks.auto_label")
PART_ROWS = 100_000
NEW_DATE = dt.date(2026, 12, 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000", help="corpus rows, comma-separated (default: %(default)s)")
    p.add_argument("--new", type=int, default=10_000, help="new PNG images per run, at most 10000 (default: 10000)")
    p.add_argument("--workers", type=int, default=2, help="Dask worker processes for the flow (default: 2)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per size, interleaved (default: 3)")
    p.add_argument("--max-load", type=float, default=1.5, help="wait until the 1-min load average is below this")
    p.add_argument("--work-dir", help="where stores go (default: a new folder under /tmp, removed unless --keep)")
    p.add_argument("--keep", action="store_true", help="keep the stores and corpora")
    p.add_argument("--reuse", action="store_true", help="reuse stores a --keep run left in --work-dir (no refit)")
    p.add_argument("--lock", help="create this file during the timed runs (tells cooperating jobs to hold off)")
    p.add_argument("--reducer", choices=["pca", "ipca"], default="pca", help="model reducer (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke run: sizes 5000,50000, 500 new images, 1 repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.new, args.repeat = "5000,50000", 500, 1
    if not 1 <= args.new <= 10_000:
        p.error("--new must be 1..10000 (the Fashion-MNIST test split)")
    return args


def build_store(root: Path, n: int, seed: int = 0, reuse: bool = False, reducer: str = "pca") -> dict[str, float]:
    """Write N synthetic manifest rows + done feature shards, fit and promote a model; return timings."""
    if reuse and (root / "models" / "CURRENT").exists():  # built (and restored) by an earlier --keep run
        return {"write_s": float("nan"), "fit_s": float("nan")}
    import numpy as np
    import pyarrow as pa

    from imgclust.config import ClusterConfig, ExtractConfig, Recipe, ReduceConfig
    from imgclust.data.datasets import load_fashion_mnist
    from imgclust.extract.shard import backbone_for, shard_fingerprint
    from imgclust.io.features import DoneMarker, embeddings_table, feature_path, marker_path
    from imgclust.io.manifest import MANIFEST_SCHEMA, ShardSpec
    from imgclust.io.store import Store
    from imgclust.models.model import fit_from_store, promote

    t0, store, cfg = time.perf_counter(), Store(root), ExtractConfig(extractor="pixels")
    backbone, key = backbone_for(cfg), backbone_for(cfg).key()
    base = load_fashion_mnist("train")[0].reshape(-1, 784).astype(np.float32) / 255.0
    assert base.shape[1] == backbone.dim == 784, (key, backbone.dim)
    rng = np.random.default_rng(seed)
    for p, start in enumerate(range(0, n, PART_ROWS)):
        m = min(PART_ROWS, n - start)
        date = dt.date(2026, 10, 1) + dt.timedelta(days=p)
        run = f"20261001T000000Z-old{p:03d}"
        part = f"manifest/date={date.isoformat()}/part-{run}.parquet"
        hexes = rng.bytes(16 * m).hex()  # sha256-looking ids, 32 hex chars like imgclust.io.sources.content_id
        ids = sorted(hexes[i * 32:(i + 1) * 32] for i in range(m))
        when = dt.datetime(2026, 9, 30, tzinfo=dt.timezone.utc)
        store.write_parquet(part, pa.table({
            "image_id": ids, "uri": [f"/archive/{date.isoformat()}/{start + i:07d}.png" for i in range(m)],
            "size_bytes": rng.integers(600, 900, m), "mtime": [when] * m,
            "ingested_at": [when + dt.timedelta(days=p + 1)] * m, "source": ["/archive"] * m,
        }, schema=MANIFEST_SCHEMA))
        for s, lo in enumerate(range(0, m, cfg.shard_size)):
            spec = ShardSpec(f"{date.isoformat()}_{run}_{s:05d}", part, lo, min(m, lo + cfg.shard_size))
            rows = (start + np.arange(spec.start, spec.stop)) % len(base)
            X = base[rows] + rng.standard_normal((spec.size, base.shape[1]), dtype=np.float32) * 0.05
            fp = shard_fingerprint(backbone, spec, cfg)
            meta = {**backbone.metadata(), "shard_id": spec.shard_id, "shard_fingerprint": fp}
            store.write_parquet(feature_path(key, spec.shard_id), embeddings_table(ids[lo:spec.stop], X, meta))
            store.write_json(marker_path(key, spec.shard_id), asdict(DoneMarker(
                shard_id=spec.shard_id, fingerprint=fp, n_features=spec.size, n_quarantined=0, n_input=spec.size,
                seconds={"wall": 0.0, "embed": 0.0}, error_kinds={})))
    t1 = time.perf_counter()
    model = fit_from_store(store, key, recipe=Recipe(reduce=ReduceConfig(method=reducer, n_components=50),
                                                     cluster=ClusterConfig(k=10)),
                           extract=cfg)
    promote(store, model.model_id)
    log.info("store %s: %d rows written in %.1fs, model %s fitted in %.1fs", root, n, t1 - t0, model.model_id,
             time.perf_counter() - t1)
    return {"write_s": t1 - t0, "fit_s": time.perf_counter() - t1}


def files_of(root: Path) -> set[str]:
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


def restore(root: Path, before: set[str]) -> None:
    """Delete every file a run added, so the next run sees the same store (and the same images as new)."""
    for f in files_of(root) - before:
        os.remove(f)


def library_run(root: Path, source: str, empty: str) -> dict[str, float]:
    from imgclust.extract.shard import extract_shard
    from imgclust.io.manifest import ingest, plan_shards, read_manifest
    from imgclust.io.store import Store
    from imgclust.models.labels import label_shard
    from imgclust.models.model import current_model_id, extract_config_of

    store, t = Store(root), {}
    t0 = time.perf_counter()
    known = read_manifest(store, columns=["image_id", "uri", "size_bytes", "mtime"])  # as ingest
    t1 = time.perf_counter()
    known.column("mtime").to_pylist()  # tz-aware timestamps -> datetime objects, as ingest's dedupe keys do
    t2 = time.perf_counter()
    ingest(store, empty, date=NEW_DATE)
    t["manifest_read"], t["mtime_pylist"], t["ingest_empty"] = t1 - t0, t2 - t1, time.perf_counter() - t2
    t0 = time.perf_counter()
    summary = ingest(store, source, date=NEW_DATE)
    t["ingest"] = time.perf_counter() - t0
    cfg = extract_config_of(store, model_id := current_model_id(store))
    specs = plan_shards(store, shard_size=cfg.shard_size, parts=[summary.part])
    t0 = time.perf_counter()
    done = [extract_shard(store, spec, cfg) for spec in specs]
    t["extract"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(label_shard(store, model_id, d["extractor_key"], d["shard_id"])["n"] for d in done)
    t["label"] = time.perf_counter() - t0
    if summary.new != n:
        raise RuntimeError(f"library run on {root}: {summary.new} ingested but {n} labeled")
    t["library"] = t["ingest"] + t["extract"] + t["label"]
    return t


def flow_run(root: Path, source: str, workers: int) -> float:
    from flows.auto_label import auto_label
    from flows.runtime import dask_task_runner
    from imgclust.config import RunnerConfig

    flow = auto_label.with_options(task_runner=dask_task_runner(RunnerConfig(workers=workers)))
    t0 = time.perf_counter()
    summary = flow(source=source, store=str(root), date=NEW_DATE)
    wall = time.perf_counter() - t0
    if summary["labeled"] != summary["new_images"] or not summary["new_images"]:
        raise RuntimeError(f"flow run on {root} was not a full run: {summary}")
    return wall


def wait_for_quiet(max_load: float, deadline: float) -> float:
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        log.info("load average %.2f > %.2f; waiting 30 s", os.getloadavg()[0], max_load)
        time.sleep(30)
    return os.getloadavg()[0]


def measure(root: Path, source: str, workers: int) -> dict[str, float]:
    before = files_of(root)
    (root.parent / "empty").mkdir(exist_ok=True)
    t = library_run(root, source, str(root.parent / "empty"))
    restore(root, before)
    t["flow"] = flow_run(root, source, workers)
    restore(root, before)
    return t


def table(rows: list[dict[str, Any]]) -> str:
    head = ["corpus rows", "new images", "flow wall s", "library s (ingest+extract+label)", "ingest s",
            "ingest, nothing new s", "manifest read s", "mtime to_pylist s", "extract s", "label s", "flow ratio vs smallest",
            "library ratio vs smallest", "ingest ratio vs smallest", "load avg (1 min) at start"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    r0 = rows[0]
    for r in rows:
        cells = [f"{r['n']:,}", f"{r['new']:,}", f"{r['flow']:.2f}", f"{r['library']:.2f}", f"{r['ingest']:.2f}",
                 f"{r['ingest_empty']:.2f}", f"{r['manifest_read']:.2f}", f"{r['mtime_pylist']:.2f}",
                 f"{r['extract']:.2f}", f"{r['label']:.2f}",
                 f"{r['flow'] / r0['flow']:.3f}", f"{r['library'] / r0['library']:.3f}",
                 f"{r['ingest'] / r0['ingest']:.2f}", r["load"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="imgclust-bench-autolabel-", dir="/tmp"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect-home"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    from flows.runtime import embedded_prefect
    from imgclust.data.datasets import build_demo_corpus

    try:
        corpus = str(build_demo_corpus(work / "corpus", limit=None if args.new == 10_000 else args.new)["path"])
        warm_src = str(build_demo_corpus(work / "corpus", limit=200, seed=1)["path"])
        setup = {n: build_store(work / f"store-{n}", n, reuse=args.reuse, reducer=args.reducer) for n in sizes}
        build_store(work / "store-warmup", 3000, seed=1, reuse=args.reuse, reducer=args.reducer)
        sources = {n: str(shutil.copytree(corpus, work / f"new-{n}", dirs_exist_ok=True)) for n in sizes}
        samples: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
        deadline = time.monotonic() + 600  # waiting for a quiet machine: 10 minutes in all
        if args.lock:
            Path(args.lock).touch()
        with embedded_prefect(work / "prefect"):
            measure(work / "store-warmup", warm_src, args.workers)  # imports, JIT, first Dask start
            for rep in range(args.repeat):
                for n in sizes:
                    load = wait_for_quiet(args.max_load, deadline)
                    t = measure(work / f"store-{n}", sources[n], args.workers)
                    samples[n].append({**t, "load": load})
                    log.info("repeat %d, %d rows: %s", rep, n, {k: round(v, 3) for k, v in t.items()})
        rows = []
        for n in sizes:
            med = {k: statistics.median(s[k] for s in samples[n]) for k in samples[n][0] if k != "load"}
            rows.append({**med, "n": n, "new": args.new,
                         "load": "/".join(f"{s['load']:.2f}" for s in samples[n])})
        print(f"model: {args.reducer} 50 + k-means 10; {args.new:,} new images; {args.workers} Dask workers\n")
        print(table(rows) + "\n")
        print("| corpus rows | store write s | model fit s (not timed above) | flow wall s per repeat |")
        print("|---|---|---|---|")
        for n in sizes:
            walls = ", ".join(f"{s['flow']:.2f}" for s in samples[n])
            print(f"| {n:,} | {setup[n]['write_s']:.1f} | {setup[n]['fit_s']:.1f} | {walls} |")
        ratio = rows[-1]["flow"] / rows[0]["flow"]
        best = min(s["flow"] for s in samples[sizes[-1]]) / min(s["flow"] for s in samples[sizes[0]])
        print(f"\nflow wall {sizes[-1]:,} / {sizes[0]:,} rows = {ratio:.3f} (goal <= 1.2): "
              f"{'PASS' if ratio <= 1.2 else 'FAIL'}; medians of {args.repeat} interleaved runs "
              f"(ratio of the fastest runs: {best:.3f})")
    finally:
        if args.lock:
            Path(args.lock).unlink(missing_ok=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
