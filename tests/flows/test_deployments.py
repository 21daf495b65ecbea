"""The deployment path against a real Prefect server, driven as a user drives it from the UI.

A ``prefect server start`` subprocess (temp ``PREFECT_HOME``, SQLite) and a ``python -m deployments.serve``
subprocess serving every deployment of ``deployments/serve.py``; runs are started with
``run_deployment()`` (what the UI's "Run" / "Custom run" does) and picked up by the serve process, which
runs each flow in its own subprocess on a one-worker Dask LocalCluster.

Day 1: the ``pipeline/on-demand`` deployment ingests a few hundred Fashion-MNIST PNGs and builds the
first model. Day 2: new PNGs land in the source folder; ``auto-label/nightly`` labels exactly those.
Then ``backfill/on-demand`` runs twice (the second run changes no Parquet file) and an idempotency key
is reused, with only the dates given (the store comes from the deployment's defaults). The deployments'
schedules, parameter schemas and defaults are checked as the UI renders them, and against
``deployments/prefect.yaml`` resolved with the same environment.
"""
from __future__ import annotations

import datetime as dt
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import requires_fashion, write_fashion_corpus
from helpers_prefect import (
    Proc,
    api_post,
    clean_env,
    free_port,
    run_deployment_and_wait,
    start_server,
    wait_for,
)

from imgclust.io.sources import content_id
from imgclust.io.store import Store
from imgclust.models.model import current_model_id

pytestmark = [pytest.mark.integration, requires_fashion]

log = logging.getLogger(__name__)

DAY1, DAY2 = dt.date(2026, 11, 1), dt.date(2026, 11, 2)
N1, N2 = 300, 30
TZ = "Europe/Berlin"
NIGHTLY_CRON = "30 1 * * *"
DEPLOYMENTS = ("auto-label/nightly", "recluster/weekly", "refine/weekly", "backfill/on-demand", "pipeline/on-demand")


def _copy(files: list[Path], src_root: Path, dest_root: Path) -> None:
    for f in files:
        dest = dest_root / f.relative_to(src_root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A Prefect server, the day-1 corpus in the source folder, the deployments served, the first model."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    t0 = time.monotonic()
    root = tmp_path_factory.mktemp("deploy")
    home, logs, corpus, source, store = (root / n for n in ("prefect-home", "logs", "corpus", "source", "store"))
    for d in (home, logs, source):
        d.mkdir()
    write_fashion_corpus(corpus, N1 + N2, seed=11)
    files = sorted(corpus.rglob("*.png"))
    late = set(np.random.default_rng(3).choice(len(files), size=N2, replace=False).tolist())
    day1 = [f for i, f in enumerate(files) if i not in late]
    day2 = [f for i, f in enumerate(files) if i in late]
    _copy(day1, corpus, source)

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    serve_env = clean_env(PREFECT_HOME=str(home), PREFECT_API_URL=api, PREFECT_RUNNER_POLL_FREQUENCY="1",
                          IMGCLUST_SOURCE=str(source), IMGCLUST_STORE=str(store), IMGCLUST_DASK_WORKERS="1",
                          IMGCLUST_TIMEZONE=TZ, IMGCLUST_NIGHTLY_CRON=NIGHTLY_CRON,
                          DASK_DISTRIBUTED__WORKER__DAEMON="false")
    procs: list[Proc] = []
    try:
        # no auto-scheduled runs: only the runs this test starts may touch the store
        server = start_server(port, home, logs, PREFECT_UI_ENABLED="false",
                              PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false")
        procs.append(server)
        log.info("Prefect server up at %s after %.1fs", api, time.monotonic() - t0)
        serve = Proc("serve", [sys.executable, "-m", "deployments.serve"], serve_env, logs)
        procs.append(serve)

        def all_deployed() -> dict[str, Any]:
            from prefect.client.orchestration import get_client

            with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
                return {n: client.read_deployment_by_name(n) for n in DEPLOYMENTS}

        deployments = wait_for("served deployments", all_deployed, procs, 180)
        log.info("deployments served after %.1fs", time.monotonic() - t0)
        first = run_deployment_and_wait(api, "pipeline/on-demand", procs, parameters={"config": {
            "source": str(source), "store": str(store), "date": DAY1.isoformat(), "truth": "parent_dir",
            "extract": {"extractor": "pixels", "shard_size": 100},
            "reduce": {"n_components": 20}, "cluster": {"k": 8, "n_redo": 2, "seed": 1}}})
        model_id = current_model_id(Store(str(store)))
        assert model_id, "the day-1 pipeline run promoted no model"
        log.info("day-1 model %s after %.1fs", model_id, time.monotonic() - t0)
        yield {"api": api, "procs": procs, "source": source, "store": store, "corpus": corpus,
               "day1": day1, "day2": day2, "model_id": model_id, "deployments": deployments,
               "first_run": first}
    finally:
        for p in reversed(procs):
            p.stop()
        leftovers = [p.name for p in procs if p.group_alive()]
        log.info("deployment fixture torn down after %.1fs", time.monotonic() - t0)
        if leftovers:
            log.error("processes left behind: %s", leftovers)
    assert not leftovers, f"processes left behind: {leftovers}"


def _parquet_mtimes(store: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in store.rglob("*.parquet")}


def test_deployments_declare_schedules_and_ui_forms(served: dict[str, Any]) -> None:
    deps = served["deployments"]
    nightly = deps["auto-label/nightly"]
    assert len(nightly.schedules) == 1
    sched = nightly.schedules[0].schedule
    assert getattr(sched, "cron", None) == NIGHTLY_CRON and sched.timezone == TZ
    assert nightly.parameters == {"source": str(served["source"]), "store": str(served["store"])}
    weekly = deps["recluster/weekly"].schedules[0].schedule
    assert getattr(weekly, "cron", None) == "0 4 * * 0" and weekly.timezone == TZ
    refine = deps["refine/weekly"].schedules[0].schedule
    assert getattr(refine, "cron", None) == "0 3 * * 6" and refine.timezone == TZ
    assert deps["refine/weekly"].parameters["method"] == "simclr"  # the recommended recipe, as the demo's
    assert not deps["backfill/on-demand"].schedules and not deps["pipeline/on-demand"].schedules
    for d in deps.values():  # one run at a time; a second UI click waits in line
        assert d.global_concurrency_limit is not None and d.global_concurrency_limit.limit == 1, d.name
        assert d.concurrency_options is not None and d.concurrency_options.collision_strategy == "ENQUEUE"

    # the UI's run forms start from the served store and source
    backfill = deps["backfill/on-demand"]
    assert backfill.parameters == {"store": str(served["store"]), "sources": [str(served["source"])]}
    assert deps["pipeline/on-demand"].parameters == {"config": {"source": str(served["source"]),
                                                                "store": str(served["store"])}}
    schema = backfill.parameter_openapi_schema
    assert schema["required"] == ["store", "start", "end"]
    props = schema["properties"]
    assert props["start"]["format"] == "date" and props["end"]["format"] == "date"
    assert props["start"]["description"] == "First manifest date to process."
    extractor = props["extractor"]
    ref = next(o["$ref"] for o in extractor.get("anyOf", [extractor]) if "$ref" in o)
    enum = schema["definitions"][ref.rsplit("/", 1)[1]]["enum"]
    assert "pixels" in enum and len(enum) == len(set(enum)) > 1
    assert props["redo"]["items"]["enum"] == ["ingest", "extract", "label"]

    # a number of clusters nobody has to know: the forms offer k as a number or "auto", auto by default
    refine_k = deps["refine/weekly"].parameter_openapi_schema["properties"]["k"]
    assert refine_k["default"] == "auto" and {"type": "integer"} in refine_k["anyOf"]
    assert {"const": "auto", "type": "string"} in refine_k["anyOf"]
    pipeline_schema = deps["pipeline/on-demand"].parameter_openapi_schema
    cluster_k = pipeline_schema["definitions"]["ClusterConfig"]["properties"]["k"]
    assert cluster_k["default"] == "auto" and {"const": "auto", "type": "string"} in cluster_k["anyOf"]
    assert "min_cluster_size" in pipeline_schema["definitions"]["ClusterConfig"]["properties"]


def test_served_set_is_the_prefect_yaml_set(served: dict[str, Any]) -> None:
    """deployments/prefect.yaml is the rendering of deployments/spec.py, and resolved with the same environment
    it declares what the server holds for the served set: names, schedules, parameters, limits, triggers."""
    from deployments.spec import YAML_PATH, environment, render_yaml, resolve

    assert YAML_PATH.read_text() == render_yaml(), "deployments/prefect.yaml is stale: python -m deployments.spec"
    env = environment({"IMGCLUST_SOURCE": str(served["source"]), "IMGCLUST_STORE": str(served["store"]),
                       "IMGCLUST_TIMEZONE": TZ, "IMGCLUST_NIGHTLY_CRON": NIGHTLY_CRON})
    declared = resolve(yaml.safe_load(YAML_PATH.read_text())["deployments"], env)
    entry_flow = {"flows/auto_label.py:auto_label": "auto-label", "flows/recluster.py:recluster": "recluster",
                  "flows/refine.py:refine": "refine", "flows/backfill.py:backfill": "backfill",
                  "flows/pipeline.py:pipeline": "pipeline"}
    assert sorted(f"{entry_flow[d['entrypoint']]}/{d['name']}" for d in declared) == sorted(DEPLOYMENTS)
    automations = api_post(served["api"], "automations/filter")
    for d in declared:
        got = served["deployments"][f"{entry_flow[d['entrypoint']]}/{d['name']}"]
        assert got.parameters == d["parameters"], d["name"]
        assert sorted(got.tags) == sorted(d["tags"])
        assert [(s.schedule.cron, s.schedule.timezone) for s in got.schedules] == \
            [(s["cron"], s["timezone"]) for s in d.get("schedules", [])]
        assert got.global_concurrency_limit.limit == d["concurrency_limit"]["limit"]
        for t in d.get("triggers", []):
            auto = next(a for a in automations if a["name"] == t["name"])
            trig = auto["trigger"]
            assert trig["expect"] == t["expect"] and trig["threshold"] == t["threshold"]
            assert trig["match"] == t["match"] and trig["posture"] == t["posture"]
            assert trig["within"] == dt.timedelta(hours=6).total_seconds()  # IMGCLUST_NOVELTY_COOLDOWN's PT6H
            (action,) = auto["actions"]
            assert action["deployment_id"] == str(got.id) and action["parameters"] == t["parameters"]


def test_nightly_deployment_labels_exactly_the_day2_images(served: dict[str, Any]) -> None:
    store, model_id = Store(str(served["store"])), served["model_id"]
    before = _parquet_mtimes(served["store"])
    _copy(served["day2"], served["corpus"], served["source"])
    run_deployment_and_wait(served["api"], "auto-label/nightly", served["procs"], parameters={"date": DAY2.isoformat()})

    expected = {content_id(f.read_bytes()) for f in served["day2"]}
    assert len(expected) == N2
    paths = store.glob(f"labels/{model_id}/date={DAY2.isoformat()}/*.parquet")
    assert paths
    labeled = [i for p in paths for i in store.read_parquet(p, columns=["image_id"]).column("image_id").to_pylist()]
    assert sorted(labeled) == sorted(expected)
    day1_ids = {content_id(f.read_bytes()) for f in served["day1"]}
    day1_paths = store.glob(f"labels/{model_id}/date={DAY1.isoformat()}/*.parquet")
    assert {i for p in day1_paths for i in store.read_parquet(p, columns=["image_id"]).column("image_id")
            .to_pylist()} == day1_ids
    # day-1 files were left alone: nothing written before this run changed
    assert all(_parquet_mtimes(served["store"]).get(p) == m for p, m in before.items())


@pytest.mark.slow  # about a minute; the backfill flow's idempotency is in the default suite (test_operations.py)
def test_backfill_deployment_is_idempotent(served: dict[str, Any]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api, procs, store = served["api"], served["procs"], served["store"]
    # only what the UI form asks for: store and sources come from the deployment's defaults
    params = {"start": DAY1.isoformat(), "end": DAY2.isoformat(), "redo": ["extract", "label"]}
    first = run_deployment_and_wait(api, "backfill/on-demand", procs, parameters=params, idempotency_key="backfill-test-1")
    snapshot = _parquet_mtimes(store)
    assert snapshot
    second = run_deployment_and_wait(api, "backfill/on-demand", procs, parameters=params, idempotency_key="backfill-test-2")
    assert second.id != first.id
    assert _parquet_mtimes(store) == snapshot, "the second identical backfill rewrote Parquet files"
    again = run_deployment_and_wait(api, "backfill/on-demand", procs, parameters=params, idempotency_key="backfill-test-2")
    assert again.id == second.id
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        run = client.read_flow_run(second.id)
        assert run.parameters["redo"] == ["extract", "label"] and run.parameters["store"] == str(store)
        assert run.deployment_id == served["deployments"]["backfill/on-demand"].id
    assert _parquet_mtimes(store) == snapshot
