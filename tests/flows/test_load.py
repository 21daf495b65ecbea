"""Load: the quick mode of benchmarks/load.py as a slow test, and shard planning over a larger manifest."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from imgclust.io.manifest import plan_shards
from imgclust.io.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import load  # noqa: E402
import plan_shards as plan_bench  # noqa: E402


def test_plan_shards_covers_a_large_manifest_exactly_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    plan_bench.write_manifest(store, 50_003, 3)
    specs = plan_shards(store, shard_size=1000)
    assert plan_shards(store, shard_size=1000) == specs  # deterministic
    by_part: dict[str, list[tuple[int, int]]] = {}
    for s in specs:
        by_part.setdefault(s.part, []).append((s.start, s.stop))
    assert len(by_part) == 3
    for ranges in by_part.values():  # contiguous, non-overlapping, from 0 to the part's size
        assert ranges[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        assert all(0 < stop - start <= 1000 for start, stop in ranges)
    assert sum(s.size for s in specs) == 50_003 and len({s.shard_id for s in specs}) == len(specs) == 51


def test_generated_corpus_is_mixed_and_deterministic(tmp_path: Path) -> None:
    load.generate(tmp_path / "a", 120, 6, seed=4, procs=1)
    files = sorted(p for p in (tmp_path / "a").rglob("*") if p.is_file() and not p.name.startswith("."))
    assert len(files) == 126
    assert {p.suffix for p in files} == {".png", ".jpg", ".webp", ".gif"}
    assert load._one(4, 17) == load._one(4, 17)


@pytest.mark.slow
def test_load_quick_mode_loses_nothing_with_bounded_memory(tmp_path: Path) -> None:
    """``benchmarks/load.py --n 2000``: every image featured or quarantined once; workers stay small."""
    r = load.run(2000, work=tmp_path, workers=2, extractor="pixels", shard_size=250, n_bad=12, seed=1)
    assert r["lost"] == r["duplicated"] == r["unknown"] == 0
    assert r["listed"] == 2012 and r["manifest"] == 2012 - r["duplicates"]  # equal bad files dedupe by content
    assert r["features"] == 2000 and r["features"] + r["quarantined"] == r["manifest"]
    assert r["worker_restarts"] == 0
    assert max(r["peak_rss_mib"]) < 1536, r["peak_rss_mib"]
    assert r["extract_img_s"] > 0
