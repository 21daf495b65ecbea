"""A simulated week of operations on a real Prefect server (issue 18's acceptance test), as an operator runs it.

* a real ``prefect server start`` on a free loopback port (SQLite; PostgreSQL with ``IMGCLUST_TEST_POSTGRES_URL``);
* the first model built by ``imgclust run`` (README step 1), then ``imgclust serve`` with the schedules
  compressed through the variables users set: a night every minute, a recluster every 3 minutes;
* nights: a quiet one, one with new images of known kinds, one with a batch of a new kind (natural-photo
  crops among Fashion-MNIST garments) that trips the novelty automation, then the Prefect server is killed
  with SIGKILL and started again, then another night of known kinds;
* at the end: every nightly run that started Completed and none is overdue; the novelty automation started
  exactly one recluster, whose gate decision is recorded in the store; every image is labelled exactly once by
  each model that labelled it and ``imgclust verify`` passes; every run's artifacts are readable through the
  API.

About 6-8 minutes on 2 cores: ``make test`` runs it (CI). PostgreSQL (Prefect's production database) once:
``bash tests/postgres.sh`` prints a URL; ``IMGCLUST_TEST_POSTGRES_URL=<url> .venv/bin/python -m pytest
tests/flows/test_week.py -m slow -k postgres``.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import requires_fashion, write_fashion_corpus
from helpers_prefect import Proc, api_post, clean_env, free_port, start_server, tail, wait_for
from PIL import Image

from imgclust.io.store import Store
from imgclust.models.model import load_gate_decision

pytestmark = [pytest.mark.integration, requires_fashion]

log = logging.getLogger(__name__)
IMGCLUST = [sys.executable, "-m", "imgclust_cli.main"]
NIGHT_TIMEOUT = 240.0


def _photo_crops(root: Path, n: int, seed: int) -> None:
    """``n`` grey 28x28 crops of scikit-learn's two sample photographs: a kind of image the model never saw."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        im = photos[i % 2]
        s = int(rng.integers(60, 200))
        y, x = int(rng.integers(0, im.shape[0] - s)), int(rng.integers(0, im.shape[1] - s))
        Image.fromarray(im[y:y + s, x:x + s]).convert("L").resize((28, 28), Image.BILINEAR).save(
            root / f"photo-{i:03d}.png")


def _drop(batch: Path, source: Path) -> float:
    """Move a prepared batch folder into the source at once (a rename), as an upload that completes."""
    os.rename(batch, source / batch.name)
    return time.time()


class Week:
    """The server, ``imgclust serve`` and the API reads the test makes."""

    def __init__(self, root: Path, db_url: str | None) -> None:
        self.root, self.logs = root, root / "logs"
        self.logs.mkdir()
        self.home, self.source, self.store = root / "prefect-home", root / "source", root / "store"
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.db = {"PREFECT_SERVER_DATABASE_CONNECTION_URL": db_url} if db_url else {}
        self.server = self.start_server()
        self.env = clean_env(PREFECT_API_URL=self.api, IMGCLUST_HOME=str(root / "home"),
                             IMGCLUST_SOURCE=str(self.source), IMGCLUST_STORE=str(self.store),
                             IMGCLUST_NIGHTLY_CRON="* * * * *", IMGCLUST_RECLUSTER_CRON="*/3 * * * *",
                             IMGCLUST_REFINE_CRON="0 3 1 1 *", IMGCLUST_NOVELTY_COOLDOWN="PT1H",
                             IMGCLUST_DASK_WORKERS="1", PREFECT_RUNNER_POLL_FREQUENCY="2",
                             DASK_DISTRIBUTED__WORKER__DAEMON="false")
        self.serve: Proc | None = None

    def start_server(self) -> Proc:
        return start_server(self.port, self.home, self.logs, PREFECT_UI_ENABLED="false", **self.db)

    @property
    def procs(self) -> list[Proc]:
        return [p for p in (self.server, self.serve) if p is not None]

    def deployment_id(self, flow: str, name: str) -> str:
        flows = {f["name"]: f["id"] for f in api_post(self.api, "flows/filter")}
        deps = api_post(self.api, "deployments/filter", {"flows": {"id": {"any_": [flows[flow]]}},
                                                         "deployments": {"name": {"any_": [name]}}})
        return str(deps[0]["id"])

    def runs(self, flow: str, name: str) -> list[dict[str, Any]]:
        return api_post(self.api, "flow_runs/filter", {"deployments": {"id": {"any_": [self.deployment_id(flow, name)]}},
                                                       "sort": "EXPECTED_START_TIME_ASC"})

    def night_after(self, t: float, what: str) -> dict[str, Any]:
        """The first nightly run that started after ``t`` (epoch seconds) and completed."""
        def done() -> dict[str, Any] | None:
            for r in self.runs("auto-label", "nightly"):
                if r["start_time"] and dt.datetime.fromisoformat(r["start_time"]).timestamp() > t:
                    assert r["state_type"] not in ("FAILED", "CRASHED", "CANCELLED"), (r, self.tails())
                    if r["state_type"] == "COMPLETED":
                        return r
            return None
        run = wait_for(what, done, self.procs, NIGHT_TIMEOUT, every=2)
        log.info("%s: nightly run %s completed", what, run["name"])
        return run  # type: ignore[no-any-return]

    def wait_idle(self, timeout: float = 240.0) -> None:
        body = {"flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING", "CANCELLING"]}}}}
        wait_for("no flow run in flight", lambda: api_post(self.api, "flow_runs/count", body) == 0, self.procs,
                 timeout, every=1)

    def tails(self) -> str:
        return "\n".join(f"--- {p.name}\n{tail(p.log, 6000)}" for p in self.procs)


def _week(root: Path, db_url: str | None) -> None:
    t0 = time.monotonic()
    w = Week(root, db_url)
    write_fashion_corpus(w.source, 240, seed=3)
    batches = root / "batches"
    write_fashion_corpus(batches / "known-1", 40, seed=11)
    _photo_crops(batches / "photos", 60, seed=0)
    write_fashion_corpus(batches / "known-2", 40, seed=12)
    try:
        subprocess.run([*IMGCLUST, "run", str(w.source), "--store", str(w.store), "--extractor", "pixels", "--pca",
                        "20", "--k", "8", "--workers", "1"], env=w.env, check=True, capture_output=True, timeout=300)
        log.info("day 0: first model after %.0f s", time.monotonic() - t0)
        w.serve = Proc("imgclust-serve", [*IMGCLUST, "serve", "--check-interval", "2", "--server-grace", "180"], w.env,
                       w.logs)
        started = time.time()
        w.night_after(started, "night 1 (nothing new)")
        w.night_after(_drop(batches / "known-1", w.source), "night 2 (known kinds)")
        w.night_after(_drop(batches / "photos", w.source), "night 3 (a new kind)")

        def novelty_recluster() -> dict[str, Any] | None:
            runs = [r for r in w.runs("recluster", "weekly") if r["parameters"].get("reason") == "novelty"]
            return runs[0] if runs and runs[0]["state_type"] == "COMPLETED" else None
        triggered = wait_for("the recluster started by the novelty automation", novelty_recluster, w.procs, 300, 2)
        log.info("novelty recluster %s completed after %.0f s", triggered["name"], time.monotonic() - t0)

        w.wait_idle()  # mid-week: the server dies between runs and comes back
        w.server.kill()
        time.sleep(10)
        w.server = w.start_server()
        wait_for("serve noticing the outage", lambda: "the Prefect API is back" in tail(w.serve.log, 50000),
                 w.procs, 120)
        w.night_after(_drop(batches / "known-2", w.source), "night 4 (known kinds, after the restart)")
        w.wait_idle()
        _check_week(w, started)
        log.info("week checked after %.0f s", time.monotonic() - t0)
    finally:
        for p in reversed(w.procs):
            p.stop()


def _check_week(w: Week, started: float) -> None:
    assert w.serve is not None
    w.serve.check_alive()  # serve outlived the server's death
    now = time.time()
    nightly = w.runs("auto-label", "nightly")
    ran = [r for r in nightly if r["state_type"] != "SCHEDULED"]
    assert len(ran) >= 4
    assert all(r["state_type"] == "COMPLETED" for r in ran), [(r["name"], r["state_name"]) for r in ran]
    overdue = [r for r in nightly if r["state_type"] == "SCHEDULED"
               and dt.datetime.fromisoformat(r["expected_start_time"]).timestamp() < now - 90]
    assert not overdue, [(r["name"], r["expected_start_time"], r["state_name"]) for r in overdue]

    reclusters = [r for r in w.runs("recluster", "weekly") if r["state_type"] != "SCHEDULED"]
    assert all(r["state_type"] == "COMPLETED" for r in reclusters), [(r["name"], r["state_name"]) for r in reclusters]
    novelty = [r for r in reclusters if r["parameters"].get("reason") == "novelty"]
    assert len(novelty) == 1, "the new kind's night triggers one recluster; known-kind nights trigger none"
    events = api_post(w.api, "events/filter", {"filter": {"event": {"name": ["imgclust.novelty.high"]},
                                                          "occurred": {"since": dt.datetime.fromtimestamp(
                                                              started - 600, dt.timezone.utc).isoformat()}}})
    assert events["total"] == 1, events

    store = Store(str(w.store))
    gates = {m: load_gate_decision(store, m) for m in _model_ids(store)}
    by_novelty = [g for g in gates.values() if g and g["trigger"] == "novelty"]
    assert len(by_novelty) == 1 and isinstance(by_novelty[0]["promoted"], bool), gates
    for model_id in _model_ids(store):  # each model labels an image at most once
        ids = [i for p in store.glob(f"labels/{model_id}/date=*/*.parquet")
               for i in store.read_parquet(p, columns=["image_id"]).column("image_id").to_pylist()]
        assert len(ids) == len(set(ids)), model_id
    verify = subprocess.run([*IMGCLUST, "verify", "--store", str(w.store)], env=w.env, capture_output=True,
                            text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    for r in ran + reclusters:
        keys = {a["key"] for a in api_post(w.api, "artifacts/filter",
                                           {"artifacts": {"flow_run_id": {"any_": [r["id"]]}}})}
        expected = "auto-label-summary" if r in ran else "model-summary"
        assert expected in keys, (r["name"], keys)


def _model_ids(store: Store) -> list[str]:
    return sorted({p.split("/")[1] for p in store.glob("models/*/model.json")})


def test_a_week_on_a_served_prefect_server(tmp_path: Path) -> None:
    _week(tmp_path, None)


@pytest.mark.slow
def test_a_week_on_postgresql(tmp_path: Path) -> None:
    url = os.environ.get("IMGCLUST_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("set IMGCLUST_TEST_POSTGRES_URL (bash tests/postgres.sh prints one)")
    _week(tmp_path, url)
