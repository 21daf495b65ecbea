"""The pipeline flow under a real Prefect API on a real Dask LocalCluster over ~1,000 real image files."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import requires_fashion, write_bad_files, write_fashion_corpus

from imgclust.config import ClusterConfig, ExtractConfig, PipelineConfig, ReduceConfig
from imgclust.io.features import done_shards, quarantine_path
from imgclust.io.manifest import read_manifest
from imgclust.io.store import Store
from imgclust.models.labels import read_labels
from imgclust.models.model import current_model_id
from imgclust.models.verify import verify_store

pytestmark = [pytest.mark.integration, requires_fashion]

N_GOOD = 1000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("corpus")
    write_fashion_corpus(root / "images", N_GOOD, seed=11)
    bad = write_bad_files(root / "images" / "bad")
    return root / "images", bad


def _run(store: Path, source: Path, dask_address: str) -> dict[str, Any]:
    from prefect_dask import DaskTaskRunner

    from flows.pipeline import pipeline

    cfg = PipelineConfig(source=str(source), store=str(store),
                         extract=ExtractConfig(extractor="pixels", shard_size=150, batch_size=64),
                         reduce=ReduceConfig(n_components=40), cluster=ClusterConfig(k=10, n_redo=2, seed=3),
                         truth="parent_dir")
    return pipeline.with_options(task_runner=DaskTaskRunner(address=dask_address))(config=cfg)


@pytest.fixture(scope="module")
def first_run(corpus: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory, dask_address: str
              ) -> tuple[Path, dict[str, Any]]:
    store = tmp_path_factory.mktemp("store")
    return store, _run(store, corpus[0], dask_address)


def test_every_image_ends_in_features_or_quarantine_once(first_run: tuple[Path, dict[str, Any]],
                                                         corpus: tuple[Path, dict[str, str]]) -> None:
    store_dir, result = first_run
    store = Store(store_dir)
    key = result["extraction"]["extractor_key"]
    assert result["ingest"]["new"] == N_GOOD + len(corpus[1])
    report = verify_store(store, key, model_id=result["build"]["model_id"])
    assert report.ok, report.summary()
    assert report.manifest_rows == N_GOOD + len(corpus[1])
    assert report.features == N_GOOD and report.quarantined == len(corpus[1])
    assert report.labels == N_GOOD
    q = pa.concat_tables([store.read_parquet(quarantine_path(key, s)) for s in done_shards(store, key)])
    kinds = {Path(u).name: k for u, k in zip(q.column("uri").to_pylist(), q.column("error_kind").to_pylist(),
                                             strict=True)}
    assert kinds == corpus[1]


def test_model_is_promoted_and_labels_have_the_schema(first_run: tuple[Path, dict[str, Any]]) -> None:
    store_dir, result = first_run
    store = Store(store_dir)
    model_id = result["build"]["model_id"]
    assert current_model_id(store) == model_id
    labels = read_labels(store, model_id)
    assert labels.schema.field("cluster_id").type == pa.int32()
    assert set(labels.column("model_id").to_pylist()) == {model_id}
    assert labels.num_rows == N_GOOD


def test_quality_floor_on_fashion_subset(first_run: tuple[Path, dict[str, Any]]) -> None:
    """Pixels + IPCA(40) + k-means on 1,000 Fashion-MNIST images: raw k-means reaches ~0.47-0.49 ACC on
    the 10k split; chance is ~0.1-0.2. The floor catches a broken pipeline (shuffled labels, wrong join)."""
    metrics = first_run[1]["build"]["metrics"]
    assert metrics["acc"] >= 0.40, metrics
    assert metrics["nmi"] >= 0.40, metrics


def test_rerun_skips_done_shards_and_adds_nothing(first_run: tuple[Path, dict[str, Any]],
                                                  corpus: tuple[Path, dict[str, str]], dask_address: str) -> None:
    store_dir, first = first_run
    store = Store(store_dir)
    feature_files = sorted(store_dir.glob("features/*/shard-*.parquet"))
    mtimes = [f.stat().st_mtime_ns for f in feature_files]
    second = _run(store_dir, corpus[0], dask_address)
    assert second["ingest"]["new"] == 0 and second["ingest"]["already_known"] == N_GOOD + len(corpus[1])
    assert second["extraction"]["shards_skipped"] == second["extraction"]["shards"] == first["extraction"]["shards"]
    assert [f.stat().st_mtime_ns for f in feature_files] == mtimes
    assert read_manifest(store).num_rows == N_GOOD + len(corpus[1])
    assert verify_store(store, first["extraction"]["extractor_key"], model_id=second["build"]["model_id"]).ok
