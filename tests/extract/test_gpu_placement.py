"""On a cluster with GPU and CPU workers, extraction tasks land only on workers advertising GPU=1."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import requires_fashion, write_fashion_corpus

pytestmark = [pytest.mark.integration, requires_fashion]


@pytest.fixture
def mixed_cluster(prefect_api: str) -> Iterator[Any]:
    """One worker process with the resource GPU=1 (as dask-cuda workers have), one without."""
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {"gpu": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
               "cpu": {"cls": Nanny, "options": {"nthreads": 1}}}
    with SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard_address": None}}, workers=workers) as c:
        yield c


def _executed(client: Any) -> dict[str, list[str]]:
    """Keys each worker finished, by worker resources ('gpu' / 'cpu')."""
    def keys(dask_worker: Any) -> list[str]:
        return [str(entry[0]) for entry in dask_worker.state.log if len(entry) > 2 and entry[2] == "memory"]

    out: dict[str, list[str]] = {}
    info = client.scheduler_info()["workers"]
    for addr, done in client.run(keys).items():
        out["gpu" if info[addr]["resources"].get("GPU") else "cpu"] = done
    return out


def test_extraction_runs_only_on_gpu_workers(tmp_path: Path, mixed_cluster: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed import Client
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    from flows.extract_features import run_extraction
    from flows.runtime import GPU_TASKS_ENV
    from imgclust.config import ExtractConfig
    from imgclust.io.manifest import ingest
    from imgclust.io.store import Store

    write_fashion_corpus(tmp_path / "images", 120, seed=5)
    ingest(Store(tmp_path / "store"), str(tmp_path / "images"))
    monkeypatch.setenv(GPU_TASKS_ENV, "1")

    @flow(task_runner=DaskTaskRunner(address=mixed_cluster.scheduler_address))
    def extract() -> dict[str, Any]:
        return run_extraction(str(tmp_path / "store"), ExtractConfig(extractor="pixels", shard_size=20))

    out = extract()
    assert out["shards"] == 6 and out["features"] == 120
    with Client(mixed_cluster.scheduler_address) as client:
        done = _executed(client)
    on_gpu = [k for k in done["gpu"] if "extract_shard" in k or "extract-shard" in k]
    on_cpu = [k for k in done["cpu"] if "extract_shard" in k or "extract-shard" in k]
    assert len(on_gpu) == 6 and on_cpu == [], done
