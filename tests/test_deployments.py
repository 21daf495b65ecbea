"""The deployment path against a real Prefect server, driven as a user drives it from the UI.

A ``prefect server start`` subprocess (temp ``PREFECT_HOME``, SQLite) and a ``python -m deployments.serve``
subprocess serving every deployment of ``deployments/serve.py``; runs are started with
``run_deployment()`` (what the UI's "Run" / "Custom run" does) and picked up by the serve process, which
runs each flow in its own subprocess on a one-worker Dask LocalCluster.

Day 1: the ``pipeline/on-demand`` deployment ingests a few hundred Fashion-MNIST PNGs and builds the
first model. Day 2: new PNGs land in the source folder; ``auto-label/nightly`` labels exactly those.
Then ``backfill/on-demand`` runs twice (the second run changes no Parquet file) and an idempotency key
is reused. The deployments' schedules and parameter schemas are checked as the UI renders them.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import requires_fashion, write_fashion_corpus

from imgclust.model import current_model_id
from imgclust.sources import content_id
from imgclust.store import Store

pytestmark = [pytest.mark.integration, requires_fashion]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DAY1, DAY2 = dt.date(2026, 11, 1), dt.date(2026, 11, 2)
N1, N2 = 300, 30
TZ = "Europe/Berlin"
NIGHTLY_CRON = "30 1 * * *"
DEPLOYMENTS = ("auto-label/nightly", "recluster/weekly", "refine/weekly", "backfill/on-demand", "pipeline/on-demand")
RUN_TIMEOUT = 240.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class _Proc:
    """A subprocess in its own session (so the whole process group can be ended), output to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name, self.log = name, logdir / f"{name}.log"
        self._out = self.log.open("wb")
        self.popen = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        log.info("started %s (pid %d): %s", name, self.popen.pid, " ".join(args))

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{_tail(self.log)}")

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left of it."""
        pgid = self.popen.pid  # session leader: its pid is the group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop on SIGTERM; killing its process group", self.name)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # children (flow-run subprocesses, Dask workers) go too
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self._out.close()
        log.info("stopped %s (rc %s)", self.name, self.popen.returncode)

    def group_alive(self) -> bool:
        try:
            os.killpg(self.popen.pid, 0)
        except ProcessLookupError:
            return False
        return True


def _wait(what: str, ok: Any, procs: list[_Proc], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        for p in procs:
            p.check_alive()
        try:
            value = ok()
            if value:
                return value
        except Exception as err:  # noqa: BLE001 (not up yet)
            last = err
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{_tail(p.log)}" for p in procs)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s (last error: {last!r})\n{tails}")


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

    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "IMGCLUST_"))}
    base.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1",
                DASK_LOGGING__DISTRIBUTED="warning")
    server_env = dict(base, PREFECT_UI_ENABLED="false",
                      # no auto-scheduled runs: only the runs this test starts may touch the store
                      PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false")
    serve_env = dict(base, PREFECT_API_URL=api, PREFECT_RUNNER_POLL_FREQUENCY="1",
                     IMGCLUST_SOURCE=str(source), IMGCLUST_STORE=str(store), IMGCLUST_DASK_WORKERS="1",
                     IMGCLUST_TIMEZONE=TZ, IMGCLUST_NIGHTLY_CRON=NIGHTLY_CRON,
                     DASK_DISTRIBUTED__WORKER__DAEMON="false")
    procs: list[_Proc] = []
    try:
        server = _Proc("prefect-server", [sys.executable, "-m", "prefect", "server", "start", "--host",
                                          "127.0.0.1", "--port", str(port)], server_env, logs)
        procs.append(server)
        _wait("Prefect server /api/health", lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200,
              procs, 180)
        log.info("Prefect server up at %s after %.1fs", api, time.monotonic() - t0)
        serve = _Proc("serve", [sys.executable, "-m", "deployments.serve"], serve_env, logs)
        procs.append(serve)

        def all_deployed() -> dict[str, Any]:
            from prefect.client.orchestration import get_client

            with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
                return {n: client.read_deployment_by_name(n) for n in DEPLOYMENTS}

        deployments = _wait("served deployments", all_deployed, procs, 180)
        log.info("deployments served after %.1fs", time.monotonic() - t0)
        first = _run(api, "pipeline/on-demand", procs, parameters={"config": {
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


def _run(api: str, name: str, procs: list[_Proc], **kwargs: Any) -> Any:
    """``run_deployment`` as the UI does it; wait for a final state; the flow run must be Completed."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    t0 = time.monotonic()
    with temporary_settings({PREFECT_API_URL: api}):
        flow_run = run_deployment(name, timeout=RUN_TIMEOUT, poll_interval=1, **kwargs)
    for p in procs:
        p.check_alive()
    state = flow_run.state
    log.info("%s -> flow run %s %s in %.1fs", name, flow_run.id, state.name if state else None,
             time.monotonic() - t0)
    if state is None or not state.is_completed():
        tails = "\n".join(f"--- {p.name}\n{_tail(p.log, 8000)}" for p in procs)
        raise AssertionError(f"{name}: flow run {flow_run.id} ended {state!r}\n{tails}")
    return flow_run


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
    assert not deps["backfill/on-demand"].schedules and not deps["pipeline/on-demand"].schedules
    for d in deps.values():  # one run at a time; a second UI click waits in line
        assert d.global_concurrency_limit is not None and d.global_concurrency_limit.limit == 1, d.name
        assert d.concurrency_options is not None and d.concurrency_options.collision_strategy == "ENQUEUE"

    schema = deps["backfill/on-demand"].parameter_openapi_schema
    assert schema["required"] == ["params"]
    defs = schema["definitions"]
    params = defs[schema["properties"]["params"]["$ref"].rsplit("/", 1)[1]]
    props = params["properties"]
    assert props["start"]["format"] == "date" and props["end"]["format"] == "date"
    assert props["start"]["title"] == "From ingestion date"
    assert set(params["required"]) == {"store", "start", "end"}
    extractor = props["extractor"]
    ref = next(o["$ref"] for o in extractor.get("anyOf", [extractor]) if "$ref" in o)
    enum = defs[ref.rsplit("/", 1)[1]]["enum"]
    assert "pixels" in enum and len(enum) == len(set(enum)) > 1
    assert props["redo"]["items"]["enum"] == ["ingest", "extract", "label"]


def test_nightly_deployment_labels_exactly_the_day2_images(served: dict[str, Any]) -> None:
    store, model_id = Store(str(served["store"])), served["model_id"]
    before = _parquet_mtimes(served["store"])
    _copy(served["day2"], served["corpus"], served["source"])
    _run(served["api"], "auto-label/nightly", served["procs"], parameters={"date": DAY2.isoformat()})

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


def test_backfill_deployment_is_idempotent(served: dict[str, Any]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api, procs, store = served["api"], served["procs"], served["store"]
    params = {"params": {"store": str(store), "start": DAY1.isoformat(), "end": DAY2.isoformat(),
                         "redo": ["extract", "label"]}}
    first = _run(api, "backfill/on-demand", procs, parameters=params, idempotency_key="backfill-test-1")
    snapshot = _parquet_mtimes(store)
    assert snapshot
    second = _run(api, "backfill/on-demand", procs, parameters=params, idempotency_key="backfill-test-2")
    assert second.id != first.id
    assert _parquet_mtimes(store) == snapshot, "the second identical backfill rewrote Parquet files"
    again = _run(api, "backfill/on-demand", procs, parameters=params, idempotency_key="backfill-test-2")
    assert again.id == second.id
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        run = client.read_flow_run(second.id)
        assert run.parameters["params"]["redo"] == ["extract", "label"]
        assert run.deployment_id == served["deployments"]["backfill/on-demand"].id
    assert _parquet_mtimes(store) == snapshot
