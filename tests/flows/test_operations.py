"""Daily operations under a real Prefect API on a real Dask LocalCluster: nightly auto-labeling of
day-2 images only, reclustering with stable ids, the promotion gate, idempotent backfills."""
from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import requires_fashion, write_fashion_corpus

from imgclust.config import ClusterConfig, ExtractConfig, PipelineConfig, ReduceConfig
from imgclust.exceptions import ConfigError
from imgclust.io.store import Store
from imgclust.models.labels import read_labels
from imgclust.models.model import current_model_id
from imgclust.models.verify import verify_store

pytestmark = [pytest.mark.integration, requires_fashion]

DAY1, DAY2 = dt.date(2026, 11, 1), dt.date(2026, 11, 2)
N1, N2 = 800, 40


def _runner(address: str) -> Any:
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=address)


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory, dask_address: str) -> dict[str, Any]:
    """Day 1: pipeline over N1 images. Day 2: N2 more images arrive; the nightly flow labels them."""
    from flows.auto_label import auto_label
    from flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("ops")
    day1_src, source, store = root / "day1", root / "source", root / "store"
    write_fashion_corpus(day1_src, N1 + N2, seed=5)
    files = sorted(day1_src.rglob("*.png"))
    rng = np.random.default_rng(0)
    late = set(rng.choice(len(files), size=N2, replace=False).tolist())
    for i, f in enumerate(files):
        if i not in late:
            dest = source / f.relative_to(day1_src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
    cfg = PipelineConfig(source=str(source), store=str(store), date=DAY1, truth="parent_dir",
                         extract=ExtractConfig(extractor="pixels", shard_size=200),
                         reduce=ReduceConfig(n_components=30), cluster=ClusterConfig(k=8, n_redo=3, seed=1))
    first = pipeline.with_options(task_runner=_runner(dask_address))(config=cfg)
    for i, f in enumerate(files):
        if i in late:
            dest = source / f.relative_to(day1_src)
            shutil.copy(f, dest)
    nightly = auto_label.with_options(task_runner=_runner(dask_address))(source=str(source), store=str(store),
                                                                         date=DAY2)
    return {"store": store, "source": source, "first": first, "nightly": nightly, "address": dask_address}


def test_nightly_labels_only_the_new_images(ops: dict[str, Any]) -> None:
    store = Store(ops["store"])
    model_id = ops["first"]["build"]["model_id"]
    nightly = ops["nightly"]
    assert nightly["model_id"] == model_id
    assert nightly["new_images"] == N2 and nightly["labeled"] == N2
    day2 = store.glob(f"labels/{model_id}/date={DAY2.isoformat()}/*.parquet")
    assert day2 and all(p.split("/shard-")[1].startswith(DAY2.isoformat()) for p in day2)
    assert sum(store.read_parquet(p).num_rows for p in day2) == N2
    assert verify_store(store, ops["first"]["extraction"]["extractor_key"], model_id=model_id).ok


def test_nightly_with_nothing_new_is_a_no_op(ops: dict[str, Any]) -> None:
    from flows.auto_label import auto_label

    again = auto_label.with_options(task_runner=_runner(ops["address"]))(source=str(ops["source"]),
                                                                        store=str(ops["store"]), date=DAY2)
    assert again["new_images"] == 0 and again["labeled"] == 0


def test_recluster_k_alone_keeps_the_current_recipe(ops: dict[str, Any], tmp_path: Path) -> None:
    import argparse

    from imgclust_cli.ops import recluster_cluster_config

    def args(**kw: Any) -> argparse.Namespace:
        return argparse.Namespace(**{"store": str(ops["store"]), "method": None, "k": None, "scan_whiten": False,
                                     "cluster_option": [], **kw})

    store = Store(ops["store"])
    current = store.read_json(f"models/{current_model_id(store)}/model.json")["cluster"]
    assert (current["n_redo"], current["seed"]) != (ClusterConfig().n_redo, ClusterConfig().seed)  # not defaults
    assert recluster_cluster_config(args(k=5)) == ClusterConfig(**{**current, "k": 5})
    assert recluster_cluster_config(args()) is None  # the flow keeps CURRENT's recipe
    assert recluster_cluster_config(args(k="auto")) == ClusterConfig(**{**current, "k": "auto"})  # --k auto
    assert recluster_cluster_config(args(method="scan", k=6, scan_whiten=True)) == \
        ClusterConfig(method="scan", k=6, scan_whiten=True)
    with pytest.raises(ConfigError, match="does not exist; pass --method"):
        recluster_cluster_config(args(store=str(tmp_path / "empty"), k=5))
    with pytest.raises(ConfigError, match="--cluster-option needs --method"):  # options belong to a given method
        recluster_cluster_config(args(k=5, cluster_option=[("feature", 1)]))
    with pytest.raises(ConfigError, match="method 'kmeans' takes no options of its own"):
        recluster_cluster_config(args(method="kmeans", k=5, cluster_option=[("feature", 1)]))


def test_recluster_keeps_stable_ids_and_relabels_everything(ops: dict[str, Any]) -> None:
    from flows.recluster import recluster

    store = Store(ops["store"])
    old = ops["first"]["build"]["model_id"]
    result = recluster.with_options(task_runner=_runner(ops["address"]))(store=str(ops["store"]),
                                                                         truth="parent_dir")
    new = result["model_id"]
    assert result["previous"] == old and result["labeled"] == N1 + N2
    before = read_labels(store, old)
    after = read_labels(store, new)
    prev = dict(zip(before.column("image_id").to_pylist(), before.column("cluster_id").to_pylist(), strict=True))
    cur = dict(zip(after.column("image_id").to_pylist(), after.column("cluster_id").to_pylist(), strict=True))
    shared = [i for i in prev if prev[i] >= 0 and cur.get(i, -1) >= 0]
    same = sum(prev[i] == cur[i] for i in shared) / len(shared)
    assert len(shared) > 0.9 * N1
    assert same >= 0.95, f"only {same:.3f} of shared images kept their stable id"
    info = store.read_json(f"models/{new}/model.json")
    assert info["parent_model"] == old and "lineage" in info


def test_gate_blocks_a_worse_model(ops: dict[str, Any]) -> None:
    from flows.recluster import recluster

    store = Store(ops["store"])
    current = current_model_id(store)
    worse = recluster.with_options(task_runner=_runner(ops["address"]))(
        store=str(ops["store"]), truth="parent_dir", cluster=ClusterConfig(k=2, seed=1), gate_metric="acc",
        gate_tolerance=0.02)
    assert worse["promoted"] is False
    assert "acc" in worse["gate"]["reason"]
    assert current_model_id(store) == current


def test_recluster_refuses_scan_on_umap_before_any_work(ops: dict[str, Any]) -> None:
    from flows.recluster import recluster

    store = Store(ops["store"])
    models = sorted(store.glob("models/*/model.json"))
    with pytest.raises(ConfigError, match="drop reduce.umap_components"):
        recluster.with_options(task_runner=_runner(ops["address"]))(
            store=str(ops["store"]), reduce=ReduceConfig(n_components=30, umap_components=4),
            cluster=ClusterConfig(method="scan", k=8))
    assert sorted(store.glob("models/*/model.json")) == models


def test_backfill_twice_changes_nothing_the_second_time(ops: dict[str, Any]) -> None:
    from flows.backfill import backfill

    store_dir = Path(ops["store"])
    params = {"store": str(store_dir), "start": DAY1, "end": DAY2, "redo": ["extract", "label"]}
    run = backfill.with_options(task_runner=_runner(ops["address"]))
    run(**params)
    snapshot = {p: p.stat().st_mtime_ns for p in store_dir.rglob("*.parquet")}
    second = run(**params)
    assert second["labeled"] == 0 and second["labels_skipped"] > 0
    assert second["extraction"]["shards_skipped"] == second["extraction"]["shards"]
    assert {p: p.stat().st_mtime_ns for p in store_dir.rglob("*.parquet")} == snapshot


def test_backfill_parameters_are_validated_before_work(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from flows.backfill import BackfillParams, backfill

    with pytest.raises(ValidationError, match="after end"):  # the flow checks its parameters before any work
        backfill.fn(store=str(tmp_path / "store"), start=DAY2, end=DAY1)
    assert not (tmp_path / "store").exists()

    with pytest.raises(ValidationError, match="after end"):
        BackfillParams(store="s", start=DAY2, end=DAY1)
    with pytest.raises(ValidationError):
        BackfillParams(store="s", start=DAY1, end=DAY2, extractor="no-such-backbone")
    with pytest.raises(ValidationError, match="source"):
        BackfillParams(store="s", start=DAY1, end=DAY2, redo=["ingest"])
