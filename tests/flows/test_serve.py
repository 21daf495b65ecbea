"""``imgclust serve`` as an operator meets it: its own Prefect server on any port, a UI that talks to that port,
run forms pre-filled with the served store, a server that dies and comes back, an external server that does not.

Each test runs the real console script in a subprocess (its own session), with a real ``prefect server start``
(SQLite under a temporary PREFECT_HOME) and the real runner serving every deployment.
"""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import requires_fashion, write_fashion_corpus
from helpers_prefect import (
    Proc,
    api_post,
    clean_env,
    free_port,
    healthy,
    run_deployment_and_wait,
    start_server,
    tail,
    wait_for,
)

from imgclust.io.manifest import list_parts
from imgclust.io.store import Store

pytestmark = [pytest.mark.integration, requires_fashion]

DAY = dt.date(2026, 12, 1)
IMGCLUST = [sys.executable, "-m", "imgclust_cli.main"]


def _serve_env(tmp: Path, **extra: str) -> dict[str, str]:
    return clean_env(IMGCLUST_HOME=str(tmp / "home"), PREFECT_RUNNER_POLL_FREQUENCY="1", IMGCLUST_DASK_WORKERS="1",
                     DASK_DISTRIBUTED__WORKER__DAEMON="false", **extra)


def _deployments(api: str) -> dict[str, Any]:
    flows = {f["id"]: f["name"] for f in api_post(api, "flows/filter")}
    return {f"{flows[d['flow_id']]}/{d['name']}": d for d in api_post(api, "deployments/filter")}


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``imgclust serve --port P`` with no PREFECT_API_URL: it starts its own server on P."""
    tmp = tmp_path_factory.mktemp("serve")
    source, store, logs = tmp / "source", tmp / "store", tmp / "logs"
    logs.mkdir()
    write_fashion_corpus(source, 24, seed=5)
    port = free_port()
    serve = Proc("imgclust-serve", [*IMGCLUST, "serve", "--source", str(source), "--store", str(store), "--port",
                                    str(port), "--check-interval", "1"], _serve_env(tmp), logs)
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_for("served deployments", lambda: len(_deployments(api)) == 5, [serve], 240, every=1)
        yield {"api": api, "port": port, "serve": serve, "source": source, "store": store}
    finally:
        serve.stop()
    assert not serve.group_alive(), "imgclust serve left processes behind"
    assert serve.popen.returncode == 0, tail(serve.log)


def _backfill_ingest(own: dict[str, Any], key: str) -> Any:
    """A backfill started through the API with only the form's dates and stages: store and sources come from
    the deployment's defaults."""
    return run_deployment_and_wait(own["api"], "backfill/on-demand", [own["serve"]], idempotency_key=key,
                                   parameters={"start": DAY.isoformat(), "end": DAY.isoformat(),
                                               "redo": ["ingest", "extract"], "extractor": "pixels"})


def test_ui_and_api_on_any_port_with_prefilled_forms(own_server: dict[str, Any]) -> None:
    port, api = own_server["port"], own_server["api"]
    settings = httpx.get(f"http://127.0.0.1:{port}/ui-settings", timeout=10).json()
    assert settings["api_url"] == f"http://127.0.0.1:{port}/api"  # the UI talks to this server, not :4200
    page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    deps = _deployments(api)
    store, source = str(own_server["store"]), str(own_server["source"])
    assert deps["backfill/on-demand"]["parameters"] == {"store": store, "sources": [source]}
    assert deps["auto-label/nightly"]["parameters"] == {"source": source, "store": store}
    assert deps["refine/weekly"]["parameters"]["method"] == "simclr"

    run = _backfill_ingest(own_server, "first")
    assert run.parameters["store"] == store  # the deployment's default, merged by the server
    parts = list_parts(Store(store))
    assert len(parts) == 1 and parts[0].startswith(f"manifest/date={DAY.isoformat()}/")


def test_own_server_killed_is_restarted_and_serves_again(own_server: dict[str, Any]) -> None:
    api, serve = own_server["api"], own_server["serve"]
    server_pid = int(subprocess.run(["pgrep", "-f", f"prefect server start --host 127.0.0.1 --port {own_server['port']}"],
                                    capture_output=True, text=True, check=True).stdout.split()[0])
    subprocess.run(["kill", "-9", str(server_pid)], check=True)
    wait_for("the Prefect server down", lambda: not healthy(api), [serve], 30, every=0.2)
    wait_for("the Prefect server restarted", lambda: healthy(api), [serve], 180, every=1)
    wait_for("the runner restarted after the outage",
             lambda: "restarting the deployment runner after the outage" in tail(serve.log, 20000), [serve], 60)
    text = tail(serve.log, 20000)
    assert "the Prefect server exited with status -9; restarting it" in text
    assert len(_deployments(api)) == 5  # same database: the deployments survived
    time.sleep(3)  # the new runner registers and polls
    _backfill_ingest(own_server, "after-restart")  # the restarted runner picks runs up
    assert len(list_parts(Store(str(own_server["store"])))) == 1  # nothing new to ingest: idempotent


@pytest.mark.slow  # about 40 s: waits out the grace period on a killed server (make test-slow)
def test_external_server_lost_exits_3_within_grace(tmp_path: Path) -> None:
    port, logs = free_port(), tmp_path / "logs"
    logs.mkdir()
    server = start_server(port, tmp_path / "prefect-home", logs, PREFECT_UI_ENABLED="false")
    env = _serve_env(tmp_path, PREFECT_API_URL=f"http://127.0.0.1:{port}/api")
    serve = Proc("imgclust-serve", [*IMGCLUST, "serve", "--source", str(tmp_path / "src"), "--store",
                                    str(tmp_path / "store"), "--check-interval", "1", "--server-grace", "8"], env, logs)
    try:
        wait_for("the runner serving", lambda: "started deployment runner" in tail(serve.log), [serve], 60)
        time.sleep(2)
        server.kill()
        t0 = time.monotonic()
        rc = serve.popen.wait(timeout=90)
        waited = time.monotonic() - t0
    finally:
        serve.stop()
        server.stop()
    assert rc == 3, tail(serve.log)
    assert 8 <= waited < 60, waited
    assert "has not answered for" in tail(serve.log, 20000)


def test_port_in_use_is_refused_before_starting_anything(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([*IMGCLUST, "serve", "--source", "s", "--store", "t", "--port", str(port)],
                              env=_serve_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use" in done.stderr
    unset = subprocess.run([*IMGCLUST, "serve"], env=_serve_env(tmp_path), capture_output=True, text=True,
                           timeout=120)
    assert unset.returncode == 2 and "IMGCLUST_SOURCE and IMGCLUST_STORE are not set" in unset.stderr


def test_deploy_registers_the_served_set_on_a_work_pool(tmp_path: Path) -> None:
    """``imgclust deploy`` (prefect.yaml onto a process work pool) gives the server the same deployments,
    schedules, defaults and novelty trigger as ``imgclust serve`` declares, and a worker on the pool runs them."""
    from deployments.serve import build_deployments

    port, logs = free_port(), tmp_path / "logs"
    logs.mkdir()
    api = f"http://127.0.0.1:{port}/api"
    server = start_server(port, tmp_path / "prefect-home", logs, PREFECT_UI_ENABLED="false")
    where = {"IMGCLUST_SOURCE": str(tmp_path / "src"), "IMGCLUST_STORE": str(tmp_path / "store"),
             "IMGCLUST_TIMEZONE": "Asia/Tokyo"}
    write_fashion_corpus(tmp_path / "src", 12, seed=8)
    env = _serve_env(tmp_path, PREFECT_API_URL=api, **where)
    worker: Proc | None = None
    try:
        done = subprocess.run([*IMGCLUST, "deploy"], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        got = _deployments(api)
        automations = api_post(api, "automations/filter")
        # a worker on the pool runs a deployment from prefect.yaml, in the project directory it names
        worker = Proc("worker", [sys.executable, "-m", "prefect", "worker", "start", "--pool", "imgclust"], env, logs)
        run_deployment_and_wait(api, "backfill/on-demand", [server, worker], parameters={
            "start": DAY.isoformat(), "end": DAY.isoformat(), "redo": ["ingest", "extract"], "extractor": "pixels"})
        assert len(list_parts(Store(where["IMGCLUST_STORE"]))) == 1
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
    declared = {f"{d.flow_name}/{d.name}": d for d in build_deployments(where)}
    assert sorted(got) == sorted(declared)
    for name, d in declared.items():
        g = got[name]
        assert g["parameters"] == d.parameters and g["work_pool_name"] == "imgclust", name
        assert [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in g["schedules"]] == \
            [(s.schedule.cron, s.schedule.timezone) for s in d.schedules], name
        assert g["global_concurrency_limit"]["limit"] == 1
    (auto,) = automations
    assert auto["trigger"]["match"] == {"prefect.resource.id": "imgclust.store.*", "imgclust.store": where["IMGCLUST_STORE"]}
    assert auto["actions"][0]["deployment_id"] == got["recluster/weekly"]["id"]
