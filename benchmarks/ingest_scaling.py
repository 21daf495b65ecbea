"""Cost of a nightly ingest that finds nothing new, against manifests of growing size.

    python benchmarks/ingest_scaling.py [--sizes 100000,1000000]

Writes synthetic manifest parts (100k rows each) to a temporary store and times ``ingest`` of an
empty source (best of 3): what every nightly run pays for reading the manifest as its watermark.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from imgclust.io.manifest import MANIFEST_SCHEMA, ingest
from imgclust.io.store import Store

PART = 100_000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="100000,1000000")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = [int(s) for s in args.sizes.split(",")]
    now = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        store, src = Store(Path(d) / "store"), Path(d) / "src"
        src.mkdir()
        written = 0
        for n in sorted(sizes):
            while written < n:
                ids = [f"{i:032x}" for i in range(written, written + PART)]
                store.write_parquet(f"manifest/date=2026-10-01/part-p{written // PART}.parquet", pa.table(
                    {"image_id": ids, "uri": [f"/data/x/{i}.jpg" for i in ids], "size_bytes": [1000] * PART,
                     "mtime": [now] * PART, "ingested_at": [now] * PART, "source": ["/data/x"] * PART},
                    schema=MANIFEST_SCHEMA))
                written += PART
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                ingest(store, str(src))
                times.append(time.perf_counter() - t0)
            rows.append((n, min(times)))
    base = rows[0][1]
    print("| manifest rows | ingest of an empty source, s (best of 3) | ratio vs smallest |\n|---|---|---|")
    print("\n".join(f"| {n:,} | {t:.2f} | {t / base:.1f} |" for n, t in rows))  # the table is the output


if __name__ == "__main__":
    main()
