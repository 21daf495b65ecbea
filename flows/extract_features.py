"""Flow: extract features for every manifest shard of a date range, mapped over Dask workers."""
from __future__ import annotations

import datetime as dt
import time
from typing import Any

from prefect import flow, unmapped

from flows._gather import gather
from flows.runtime import default_task_runner, gpu_placement
from imgclust.config import ExtractConfig
from tasks.extract import extract_shard_task, extractor_key_task, plan_shards_task


def run_extraction(store: str, config: ExtractConfig, *, start: dt.date | None = None, end: dt.date | None = None,
                   parts: list[str] | None = None, force: bool = False) -> dict[str, Any]:
    """Compose: resolve the extractor, plan shards, map extraction, summarise."""
    t0 = time.perf_counter()
    key = extractor_key_task(config)
    specs = plan_shards_task(store, config.shard_size, start, end, parts)
    with gpu_placement():  # on GPU clusters, extraction runs only on workers with the GPU resource
        futures = extract_shard_task.map(store, specs, unmapped(config), unmapped(force))
    results = gather(futures, "extract")
    wall = time.perf_counter() - t0
    n_in = sum(r["n_input"] for r in results)
    done_now = [r for r in results if not r["skipped"]]
    n_new = sum(r["n_input"] for r in done_now)
    return {
        "extractor_key": key,
        "shards": len(results),
        "shards_skipped": len(results) - len(done_now),
        "images": n_in,
        "features": sum(r["n_features"] for r in results),
        "quarantined": sum(r["n_quarantined"] for r in results),
        "error_kinds": _merge(r["error_kinds"] for r in results),
        "seconds": round(wall, 3),
        "images_per_second": round(n_new / wall, 1) if n_new else 0.0,
        "shard_ids": [r["shard_id"] for r in results],
    }


def _merge(dicts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


@flow(name="extract-features", task_runner=default_task_runner())
def extract_features(store: str, extract: ExtractConfig = ExtractConfig(), start: dt.date | None = None,
                     end: dt.date | None = None, force: bool = False) -> dict[str, Any]:
    """Extract features for the manifest partitions dated ``start..end`` (all when unset)."""
    return run_extraction(store, extract, start=start, end=end, force=force)
