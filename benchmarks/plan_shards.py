"""Benchmark: planning the shards of a 1M-row manifest takes seconds (footers only, no data pages).

Writes ``--rows`` synthetic manifest rows as ``--parts`` immutable parts into a temporary store,
then times ``imgclust.io.manifest.plan_shards`` (cold: first call; warm: best of 3) and checks that the
shards cover every row exactly once.

    .venv/bin/python benchmarks/plan_shards.py                  # 1,000,000 rows in 10 parts
    .venv/bin/python benchmarks/plan_shards.py --rows 100000    # quick
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

log = logging.getLogger("benchmarks.plan_shards")


def write_manifest(store: object, rows: int, parts: int) -> None:
    """``rows`` manifest rows split over ``parts`` parts (dated one day apart)."""
    from imgclust.io.manifest import MANIFEST_SCHEMA
    from imgclust.io.store import Store

    assert isinstance(store, Store)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    per = -(-rows // parts)
    for p in range(parts):
        n = min(per, rows - p * per)
        ids = [f"{p:04d}{i:028x}" for i in range(n)]
        table = pa.table({"image_id": ids, "uri": [f"/data/{p}/{i}.png" for i in range(n)],
                          "size_bytes": pa.array([1000] * n, pa.int64()), "mtime": [now] * n,
                          "ingested_at": [now] * n, "source": ["/data"] * n}, schema=MANIFEST_SCHEMA)
        store.write_parquet(f"manifest/date={(now + dt.timedelta(days=p)).date()}/part-bench{p}.parquet", table)


def main(argv: list[str] | None = None) -> int:
    from imgclust.io.manifest import plan_shards
    from imgclust.io.store import Store

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--parts", type=int, default=10)
    ap.add_argument("--shard-size", type=int, default=1000)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="imgclust-plan-") as tmp:
        store = Store(tmp)
        t0 = time.perf_counter()
        write_manifest(store, a.rows, a.parts)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        specs = plan_shards(store, shard_size=a.shard_size)
        cold = time.perf_counter() - t0
        warm = min(_timed(lambda: plan_shards(store, shard_size=a.shard_size)) for _ in range(3))
    covered = sum(s.size for s in specs)
    if covered != a.rows or len({s.shard_id for s in specs}) != len(specs):
        raise RuntimeError(f"shards cover {covered} rows of {a.rows} (or ids repeat)")
    print("| rows | parts | shard size | shards | plan cold (s) | plan warm (s) | write manifest (s) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {a.rows:,} | {a.parts} | {a.shard_size} | {len(specs):,} | {cold:.3f} | {warm:.3f} | {t_write:.1f} |")
    return 0


def _timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
