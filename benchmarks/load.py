"""Load test: N generated image files of mixed size and format -> ingest + extract on a LocalCluster.

The corpus is generated (seeded) under ``--work``: PNG / JPEG / WebP / GIF (animated ones too),
grey and RGB(A), sizes from 4 px to ~1000 px on the long side (most small, a few large), plus
``--bad`` hostile files (empty, text named .jpg, truncated JPEG). Then:

1. ``imgclust.io.manifest.ingest`` in this process (listing + content hashing in threads);
2. the ``extract_features`` flow (Prefect, embedded API) on a ``distributed.LocalCluster`` of
   ``--workers`` processes, 1 thread each, ``--memory-limit`` per worker;
3. ``imgclust.models.verify.verify_store``: lost (missing), duplicated and unknown rows must all be 0.

Peak RSS per worker is each worker process's ``ru_maxrss`` (the kernel's high-water mark, so
nothing between samples is missed), read with ``client.run`` after the flow; a worker restarted
during the run would report only its own lifetime, so the number of worker restarts is printed too.

    .venv/bin/python benchmarks/load.py --n 100000          # the load test (~1 h on 2 cores)
    .venv/bin/python benchmarks/load.py --n 2000            # quick mode
    .venv/bin/python benchmarks/load.py --n 2000 --extractor hog --json
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import logging
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger("benchmarks.load")
FORMATS = ("png", "jpg", "webp", "gif")


def _size(rng: np.random.Generator) -> tuple[int, int]:
    """Mostly small images, some medium, ~2% around 1000 px on the long side."""
    u = rng.random()
    long_side = int(rng.integers(4, 64) if u < 0.6 else rng.integers(64, 320) if u < 0.98 else
                    rng.integers(700, 1001))
    short = max(1, int(long_side * rng.uniform(0.5, 1.0)))
    return (long_side, short) if rng.random() < 0.5 else (short, long_side)


def _one(seed: int, i: int) -> tuple[str, bytes]:
    """File name and bytes of image ``i`` (deterministic in ``seed`` and ``i``)."""
    rng = np.random.default_rng([seed, i])
    w, h = _size(rng)
    fmt = FORMATS[int(rng.integers(len(FORMATS)))]
    gray = rng.random() < 0.3
    base = rng.integers(0, 256, (1, 1, 1 if gray else 3))
    noise = rng.integers(0, 64, (h, w, 1 if gray else 3))
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr[..., 0] if gray else arr, "L" if gray else "RGB")
    buf = io.BytesIO()
    if fmt == "gif" and rng.random() < 0.3 and w * h < 40_000:  # a few animated GIFs
        img.save(buf, "GIF", save_all=True, append_images=[img.rotate(90)], duration=50)
    else:
        img.save(buf, {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF"}[fmt],
                 **({"quality": 85} if fmt in ("jpg", "webp") else {}))
    return f"{i // 1000:04d}/{i:07d}.{fmt}", buf.getvalue()


def _write_range(root: str, seed: int, start: int, stop: int) -> int:
    for i in range(start, stop):
        name, data = _one(seed, i)
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return stop - start


def generate(root: Path, n: int, n_bad: int, seed: int, procs: int) -> None:
    """``n`` good images and ``n_bad`` hostile files under ``root`` (skipped when already complete)."""
    stamp = root / f".complete-{n}-{n_bad}-{seed}"
    if stamp.exists():
        log.info("corpus %s already generated", root)
        return
    root.mkdir(parents=True, exist_ok=True)
    step = 1000
    with ProcessPoolExecutor(procs) as pool:
        list(pool.map(_write_range, [str(root)] * len(range(0, n, step)), [seed] * len(range(0, n, step)),
                      range(0, n, step), [min(n, s + step) for s in range(0, n, step)]))
    bad = root / "bad"
    bad.mkdir(exist_ok=True)
    for j in range(n_bad):
        kind = j % 3
        (bad / f"bad{j:04d}.jpg").write_bytes(b"" if kind == 0 else b"not an image %d\n" % j if kind == 1
                                              else _one(seed, 10**7 + j)[1][:40])
    stamp.write_text("ok")


def run(n: int, *, work: Path, workers: int = 2, extractor: str = "pixels", shard_size: int = 1000,
        n_bad: int = 20, seed: int = 0, memory_limit: str = "2GiB") -> dict[str, Any]:
    """Generate, ingest, extract, verify; returns the measurements (see the module docstring)."""
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner

    from flows.extract_features import extract_features
    from flows.runtime import embedded_prefect
    from imgclust.config import ExtractConfig, IngestConfig
    from imgclust.io.manifest import ingest
    from imgclust.io.store import Store
    from imgclust.models.verify import verify_store

    corpus = work / f"corpus-{n}-{seed}"
    t0 = time.perf_counter()
    generate(corpus, n, n_bad, seed, procs=max(1, os.cpu_count() or 1))
    t_gen = time.perf_counter() - t0
    store = Store(tempfile.mkdtemp(prefix="store-", dir=work))
    t0 = time.perf_counter()
    summary = ingest(store, str(corpus), config=IngestConfig(extensions=[".png", ".jpg", ".webp", ".gif"]),
                     date=dt.date(2026, 1, 1), run_id="load")
    t_ingest = time.perf_counter() - t0
    cfg = ExtractConfig(extractor=extractor, shard_size=shard_size, batch_size=128, decode_threads=2)
    with embedded_prefect(work / "prefect"), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                         memory_limit=memory_limit) as cluster, Client(cluster) as client:
        pids0 = client.run(os.getpid)
        t0 = time.perf_counter()
        result = extract_features.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))(
            store=store.url, extract=cfg)
        t_extract = time.perf_counter() - t0
        rss = client.run(_peak_rss_mib)
        pids1 = client.run(os.getpid)
    restarts = len(set(pids1.values()) - set(pids0.values()))
    rep = verify_store(store, result["extractor_key"])
    return {"date": dt.date.today().isoformat(), "n_images": n, "n_bad": n_bad, "listed": summary.listed,
            "duplicates": summary.duplicates,
            "manifest": rep.manifest_rows, "features": rep.features, "quarantined": rep.quarantined,
            "lost": len(rep.missing), "duplicated": len(rep.duplicated), "unknown": len(rep.unknown),
            "extractor": extractor, "workers": workers, "shard_size": shard_size, "memory_limit": memory_limit,
            "generate_s": round(t_gen, 1), "ingest_s": round(t_ingest, 1), "extract_s": round(t_extract, 1),
            "ingest_img_s": round(summary.listed / t_ingest, 1), "extract_img_s": round(rep.manifest_rows / t_extract, 1),
            "peak_rss_mib": sorted(round(v) for v in rss.values()), "worker_restarts": restarts,
            "error_kinds": result["error_kinds"]}


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def table(r: dict[str, Any]) -> str:
    """The result as a Markdown table."""
    rows = [("date", r["date"]), ("images (good + bad)", f"{r['n_images']} + {r['n_bad']}"),
            ("extractor / workers / shard size", f"{r['extractor']} / {r['workers']} / {r['shard_size']}"),
            ("listed / content duplicates / manifest rows", f"{r['listed']} / {r['duplicates']} / {r['manifest']}"),
            ("features / quarantined", f"{r['features']} / {r['quarantined']}"),
            ("lost / duplicated / unknown", f"{r['lost']} / {r['duplicated']} / {r['unknown']}"),
            ("ingest (list + hash)", f"{r['ingest_s']} s, {r['ingest_img_s']} img/s"),
            ("extract flow (incl. cluster start)", f"{r['extract_s']} s, {r['extract_img_s']} img/s"),
            ("peak RSS per worker (MiB)", ", ".join(map(str, r["peak_rss_mib"])) +
             f" (limit {r['memory_limit']}, restarts {r['worker_restarts']})"),
            ("quarantine kinds", json.dumps(r["error_kinds"], sort_keys=True))]
    return "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="good images to generate (default 100000)")
    p.add_argument("--bad", type=int, default=20, help="hostile files (default 20)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--extractor", default="pixels", choices=["pixels", "hog"])
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--memory-limit", default="2GiB", help="per Dask worker (default 2GiB)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None, help="folder for corpus + store (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = a.work or Path(tempfile.mkdtemp(prefix="imgclust-load-"))
    work.mkdir(parents=True, exist_ok=True)
    r = run(a.n, work=work, workers=a.workers, extractor=a.extractor, shard_size=a.shard_size, n_bad=a.bad,
            seed=a.seed, memory_limit=a.memory_limit)
    print(json.dumps(r, indent=1) if a.json else table(r))
    return 0 if r["lost"] == r["duplicated"] == r["unknown"] == 0 else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
