"""Fault injection: real crashes, real kills, real S3 errors; after each, the store invariant holds.

Every test injects a real fault (a SIGKILLed Dask worker or flow process, HTTP 503s and connection
resets between s3fs and a moto S3 server, a second concurrent run) and then checks the invariant with
:func:`imgclust.models.verify.verify_store`: every manifest row of the range is in features or quarantine
exactly once, and a model labels each featured image exactly once.

Faults inside worker processes use the test-only hook ``imgclust.extract.shard.FAULT_ENV``, set in the
workers of the session cluster by a worker plugin (present and restarted workers) and removed again.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import extract_fit_label, requires_fashion, swap_env, write_bad_files, write_fashion_corpus
from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin

from imgclust.config import ExtractConfig, IngestConfig
from imgclust.extract.shard import FAULT_ENV
from imgclust.io.features import done_shards, embeddings_of, feature_path, marker_path, quarantine_path
from imgclust.io.manifest import ingest, list_parts
from imgclust.io.store import Store
from imgclust.models.verify import verify_store

pytestmark = pytest.mark.integration

DAY = dt.date(2026, 11, 3)
REPO = Path(__file__).resolve().parents[2]
EXTRACT = ExtractConfig(extractor="pixels", shard_size=40, batch_size=16, decode_threads=2)


class _WorkerEnv(WorkerPlugin):
    """Sets (``None``: unsets) environment variables in every worker, present and restarted; restores them."""

    def __init__(self, name: str, env: dict[str, str | None]) -> None:
        self.name, self.env = name, env
        self.saved: dict[str, str | None] = {}

    def setup(self, worker: Any) -> None:
        from imgclust.io import storage

        self.saved = swap_env(self.env)
        storage.clear_cache()

    def teardown(self, worker: Any) -> None:
        from imgclust.io import storage

        swap_env(self.saved)
        storage.clear_cache()


class WorkerEnv:
    """Context manager: ``_WorkerEnv`` registered on the session cluster for the block's duration."""

    def __init__(self, address: str, env: dict[str, str | None], name: str = "imgclust-test-faults-env") -> None:
        self.address, self.env, self.name = address, env, name
        self.client: Client | None = None

    def __enter__(self) -> Client:
        self.client = Client(self.address)
        self.client.register_plugin(_WorkerEnv(self.name, self.env))
        return self.client

    def __exit__(self, *exc: object) -> None:
        assert self.client is not None
        self.client.wait_for_workers(2, timeout=120)  # killed workers are back (the nanny restarts them)
        self.client.unregister_worker_plugin(self.name)
        self.client.close()


def _fault(action: str, shard: str, once: Path | None = None, seconds: float = 0.0) -> dict[str, str | None]:
    return {FAULT_ENV: json.dumps({"action": action, "shard": shard, "once": str(once) if once else "",
                                   "seconds": seconds})}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("faults-corpus") / "images"
    write_fashion_corpus(root, 400, seed=5)
    bad = write_bad_files(root / "bad")
    return root, bad


def _ingested(store_dir: Path, source: Path, run_id: str = "r1") -> Store:
    store = Store(store_dir)
    ingest(store, str(source), config=IngestConfig(), date=DAY, run_id=run_id)
    return store


def _extract(store: Store, dask_address: str, *, config: ExtractConfig = EXTRACT, **kw: Any) -> Any:
    from prefect_dask import DaskTaskRunner

    from flows.extract_features import extract_features

    return extract_features.with_options(task_runner=DaskTaskRunner(address=dask_address))(
        store=store.url, extract=config, **kw)


def _key(store: Store) -> str:
    return next(p.split("/")[1] for p in store.glob("features/*/shard-*.json"))


# ---- a. a Dask worker dies in the middle of a shard -----------------------------------------------
@requires_fashion
def test_worker_killed_mid_shard_is_rerun_and_nothing_is_lost(corpus: tuple[Path, dict[str, str]], tmp_path: Path,
                                                            dask_address: str) -> None:
    source, bad = corpus
    store = _ingested(tmp_path / "store", source)
    once = tmp_path / "killed-once"
    with WorkerEnv(dask_address, _fault("kill", "*_00002", once)):
        result = _extract(store, dask_address)
    assert once.exists(), "the fault did not fire: the test proves nothing"
    key = result["extractor_key"]
    rep = verify_store(store, key)
    assert rep.ok, rep.summary()
    assert rep.features == 400 and rep.quarantined == len(bad)
    assert result["shards"] == len(done_shards(store, key)) == 11
    assert result["features"] == 400


# ---- d. a task that keeps killing its worker -------------------------------------------------------
@requires_fashion
def test_task_that_keeps_killing_workers_fails_the_flow_clearly(corpus: tuple[Path, dict[str, str]],
                                                                tmp_path: Path, dask_address: str) -> None:
    from flows._gather import TaskKilledWorkersError

    source, _ = corpus
    store = _ingested(tmp_path / "store", source)
    with Client(dask_address) as client:
        before = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
        client.run_on_scheduler(lambda dask_scheduler: setattr(dask_scheduler, "allowed_failures", 1))
        try:
            t0 = time.monotonic()
            with WorkerEnv(dask_address, _fault("kill", "*_00001")):  # every attempt, on every worker
                state = _extract(store, dask_address, return_state=True)
            wall = time.monotonic() - t0
        finally:
            client.run_on_scheduler(lambda dask_scheduler: setattr(dask_scheduler, "allowed_failures", before))
    assert state.is_failed()
    with pytest.raises(TaskKilledWorkersError, match="every worker that ran it died") as err:
        state.result()
    assert "'extract-" in str(err.value) and "re-run" in str(err.value)  # names the task run (shard)
    assert wall < 240, f"the flow took {wall:.0f}s to fail"
    key = next(p.split("/")[1] for p in store.glob("features/*/shard-*.parquet"))
    rep = verify_store(store, key)  # unfinished shards are missing, loudly; nothing is duplicated or unknown
    assert not rep.ok and not rep.duplicated and not rep.unknown
    assert not store.exists(marker_path(key, f"{DAY.isoformat()}_r1_00001"))
    # tasks queued on a dying worker can be blamed too (allowed_failures=1); every missing row belongs to
    # a shard without done-marker, and each such shard's rows are missing in full
    rows = store.read_parquet(list_parts(store)[0], columns=["image_id"]).column("image_id").to_pylist()
    done = set(done_shards(store, key))
    undone = [i for i in range(11) if f"{DAY.isoformat()}_r1_{i:05d}" not in done]
    assert 1 in undone
    assert rep.missing == sorted(r for i in undone for r in rows[40 * i: 40 * (i + 1)])


# ---- b. the flow process is killed mid-run, then re-run -------------------------------------------
_FLOW_SCRIPT = """
import sys
from prefect_dask import DaskTaskRunner
from flows.extract_features import extract_features
from imgclust.config import ExtractConfig
extract_features.with_options(task_runner=DaskTaskRunner(address=sys.argv[1]))(
    store=sys.argv[2], extract=ExtractConfig.model_validate_json(sys.argv[3]))
"""


def _wait_idle(client: Client, timeout: float = 60) -> None:
    """Until no worker executes a task (twice in a row, 1 s apart)."""
    deadline, quiet = time.monotonic() + timeout, 0
    while quiet < 2:
        assert time.monotonic() < deadline, "the cluster did not become idle"
        busy = client.run(lambda dask_worker: len(dask_worker.state.executing))
        quiet = 0 if any(busy.values()) else quiet + 1
        time.sleep(1)


def _markers(store: Store, key: str) -> dict[str, int]:
    return {p: os.stat(store.path(p)).st_mtime_ns for p in store.glob(f"features/{key}/shard-*.json")}


def _sorted_features(store: Store, key: str) -> tuple[list[str], np.ndarray, pa.Table]:
    ids: list[str] = []
    embs: list[np.ndarray] = []
    quarantine: list[pa.Table] = []
    for sid in done_shards(store, key):
        t = store.read_parquet(feature_path(key, sid))
        ids.extend(t.column("image_id").to_pylist())
        embs.append(embeddings_of(t))
        quarantine.append(store.read_parquet(quarantine_path(key, sid)))
    order = np.argsort(ids)
    q = pa.concat_tables(quarantine)
    return [ids[i] for i in order], np.concatenate(embs)[order], q.sort_by("image_id")


@requires_fashion
def test_flow_killed_mid_run_then_rerun_redoes_only_unfinished_shards(corpus: tuple[Path, dict[str, str]],
                                                                      tmp_path: Path, dask_address: str) -> None:
    source, bad = corpus
    config = EXTRACT.model_copy(update={"shard_size": 20})  # 21 shards
    store = _ingested(tmp_path / "killed", source)
    reference = Store(tmp_path / "reference")  # the same manifest part, extracted without interruption
    part = list_parts(store)[0]
    os.makedirs(os.path.dirname(reference.path(part)))
    shutil.copy(store.path(part), reference.path(part))
    key = _extract(reference, dask_address, config=config)["extractor_key"]

    with WorkerEnv(dask_address, _fault("sleep", "*", seconds=0.4)) as client:  # ~0.5 s per shard
        proc = subprocess.Popen([sys.executable, "-c", _FLOW_SCRIPT, dask_address, store.url,
                                 config.model_dump_json()], cwd=REPO, env=os.environ.copy(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while len(store.glob(f"features/{key}/shard-*.json")) < 4:
                assert proc.poll() is None, "the flow process ended before it could be killed"
                assert time.monotonic() < deadline, "no shard finished within 120 s"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        _wait_idle(client)  # tasks already running on the workers finish on their own
    before = _markers(store, key)
    assert 4 <= len(before) < 21, f"{len(before)} shards were done when the flow was killed"
    assert not verify_store(store, key).ok  # the interrupted store is incomplete (and says so)

    again = _extract(store, dask_address, config=config)
    after = _markers(store, key)
    assert again["shards"] == 21 and again["shards_skipped"] == len(before)
    assert all(after[p] == mtime for p, mtime in before.items()), "a finished shard was redone"
    assert len(after) == 21
    rep = verify_store(store, key)
    assert rep.ok, rep.summary()
    assert rep.features == 400 and rep.quarantined == len(bad)
    ids, emb, q = _sorted_features(store, key)
    ref_ids, ref_emb, ref_q = _sorted_features(reference, key)
    assert ids == ref_ids
    np.testing.assert_array_equal(emb, ref_emb)
    assert q.equals(ref_q)


# ---- e. overlapping nightly runs -------------------------------------------------------------------
def _lease_holder(store: Store, name: str, owner: str, ttl: float = 60.0) -> Any:
    from imgclust.io.lock import StoreLease

    return StoreLease(store, name, ttl=ttl, owner=owner)


def _check_lease_semantics(store: Store) -> None:
    """Exclusion, refusal naming the holder, release only by the holder, takeover only when expired."""
    import threading

    from imgclust.io.lock import LeaseHeldError, LeaseLostError, StoreLease

    first = _lease_holder(store, "nightly", "run-A")
    first.acquire()
    with pytest.raises(LeaseHeldError, match="held by run-A.*another run holding the .nightly. lease is in progress"):
        _lease_holder(store, "nightly", "run-B").acquire()
    t0 = time.monotonic()
    with pytest.raises(LeaseHeldError):
        StoreLease(store, "nightly", owner="run-B", wait=0.6, poll=0.1).acquire()
    assert time.monotonic() - t0 >= 0.6  # it waited before refusing
    first.release()
    assert not store.exists("locks/nightly.json")
    # eight contenders at once: exactly one wins
    winners: list[str] = []
    errors: list[BaseException] = []

    def contend(i: int) -> None:
        try:
            _lease_holder(store, "race", f"run-{i}").acquire()
            winners.append(f"run-{i}")
        except LeaseHeldError:
            pass
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(winners) == 1, (winners, errors)
    # an expired lease (crashed holder) is taken over; the old holder then finds it lost
    stale = _lease_holder(store, "crash", "dead-run", ttl=0.3)
    stale.acquire()
    time.sleep(0.4)
    taker = _lease_holder(store, "crash", "next-run")
    assert taker.acquire().owner == "next-run"
    stale.renew()
    assert stale.lost
    stale.release()  # must not delete next-run's lease
    assert store.exists("locks/crash.json")
    assert json.loads(store.read_bytes("locks/crash.json"))["owner"] == "next-run"
    taker.release()
    # the heartbeat keeps a held lease alive past its ttl; losing it fails the block loudly
    with StoreLease(store, "beat", ttl=0.6, owner="long-run") as lease:
        time.sleep(1.0)
        assert not lease.lost and lease.info is not None and not lease.info.expired()
    with pytest.raises(LeaseLostError, match="lost while this run held it"):
        with StoreLease(store, "gone", ttl=0.6, owner="long-run"):
            store.remove("locks/gone.json")  # an operator deleted it
            time.sleep(0.5)


def test_store_lease_on_a_local_store(tmp_path: Path) -> None:
    _check_lease_semantics(Store(tmp_path / "store"))


# ---- c. transient S3 errors: a loopback proxy in front of moto that fails chosen requests ---------
BUCKET = "imgclust-faults"
AWS_UNSET = ["AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
             "AWS_REGION", "FSSPEC_S3_ENDPOINT_URL", "FSSPEC_S3_KEY", "FSSPEC_S3_SECRET"]


class FaultProxy:
    """HTTP proxy to the moto server; rules make matching requests answer 503 or reset the connection.

    A rule is ``(method, path regex, mode, count)``: the first ``count`` matching requests (``-1``: all)
    get the fault; ``hits`` counts faults served per rule index, ``log`` every ``(method, path)``.
    """

    def __init__(self, upstream_port: int) -> None:
        import re
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.rules: list[list[Any]] = []
        self.hits: list[int] = []
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _fault(self) -> str | None:
                with proxy.lock:
                    proxy.log.append((self.command, self.path))
                    for i, rule in enumerate(proxy.rules):
                        method, pattern, mode, count = rule
                        if method == self.command and re.search(pattern, self.path) and count != 0:
                            rule[3] = count - 1 if count > 0 else count
                            proxy.hits[i] += 1
                            return str(mode)
                return None

            def _handle(self) -> None:
                import http.client
                import socket
                import struct

                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                mode = self._fault()
                if mode == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if mode == "503":
                    err = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable</Code>"
                           b"<Message>injected by the test proxy</Message></Error>")
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(err)))
                    self.end_headers()
                    self.wfile.write(err)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")}
                conn.request(self.command, self.path, body=body if body else None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                head = self.command == "HEAD"  # keeps the upstream Content-Length (the object's size)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "server", "date") and (
                            head or k.lower() != "content-length"):
                        self.send_header(k, v)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fail(self, method: str, pattern: str, mode: str, count: int) -> int:
        """Add a rule; returns its index for :attr:`hits`."""
        with self.lock:
            self.rules.append([method, pattern, mode, count])
            self.hits.append(0)
            return len(self.rules) - 1

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.hits.clear()
            self.log.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultProxy]:
    """moto S3 behind a :class:`FaultProxy`; the AWS environment (here and in workers) points at the proxy."""
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    from imgclust.io import storage

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    proxy = FaultProxy(port)
    nowhere = str(tmp_path_factory.mktemp("aws") / "absent")
    env = {"AWS_ACCESS_KEY_ID": "AKIAFAULTTEST", "AWS_SECRET_ACCESS_KEY": "fault-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{proxy.port}",
           "AWS_CONFIG_FILE": nowhere, "AWS_SHARED_CREDENTIALS_FILE": nowhere, "AWS_EC2_METADATA_DISABLED": "true",
           # botocore's standard retry mode (3 attempts, jittered exponential backoff), set the standard way
           "AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "3"}
    with pytest.MonkeyPatch.context() as mp:
        for var in AWS_UNSET:
            mp.delenv(var, raising=False)
        for var, value in env.items():
            mp.setenv(var, value)
        storage.clear_cache()
        import boto3

        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket=BUCKET)
        proxy.env = {**env, **{v: None for v in AWS_UNSET}}  # type: ignore[attr-defined]
        try:
            yield proxy
        finally:
            storage.clear_cache()
    proxy.close()
    server.stop()


@pytest.fixture()
def proxy(s3: FaultProxy) -> Iterator[FaultProxy]:
    s3.clear()
    yield s3
    s3.clear()


def test_store_lease_on_s3_uses_conditional_writes(proxy: FaultProxy) -> None:
    store = Store(f"s3://{BUCKET}/lease-{time.monotonic_ns()}")
    _check_lease_semantics(store)
    assert any(m == "PUT" and "locks/" in p for m, p in proxy.log)


def test_transient_s3_errors_are_retried_with_backoff(proxy: FaultProxy) -> None:
    """503s and connection resets on PUT and GET: botocore retries them; the data arrives intact."""
    store = Store(f"s3://{BUCKET}/retry")
    table = pa.table({"image_id": [f"i{k}" for k in range(1000)], "x": np.arange(1000.0)})
    put503 = proxy.fail("PUT", r"/retry/t\.parquet", "503", 1)
    put_reset = proxy.fail("PUT", r"/retry/t\.parquet", "reset", 1)
    get503 = proxy.fail("GET", r"/retry/t\.parquet", "503", 1)
    get_reset = proxy.fail("GET", r"/retry/t\.parquet", "reset", 1)
    t0 = time.monotonic()
    store.write_parquet("t.parquet", table)
    assert store.read_parquet("t.parquet").equals(table)
    assert proxy.hits[put503] == 1 and proxy.hits[put_reset] == 1  # 3 attempts: 2 faults absorbed
    assert proxy.hits[get503] == 1 and proxy.hits[get_reset] == 1
    assert time.monotonic() - t0 > 0.1  # retried with backoff, not in a tight loop


def _upload_corpus(source: Path, prefix: str, n_good: int) -> int:
    """The first ``n_good`` PNGs of ``source`` plus its bad files, uploaded to ``s3://BUCKET/prefix``."""
    from imgclust.io import storage

    good = sorted(p for p in source.rglob("*.png") if p.parent.name != "bad")[:n_good]
    files = good + sorted((source / "bad").iterdir())
    fs, _ = storage.url_to_fs(f"s3://{BUCKET}")
    fs.put([str(f) for f in files], [f"{BUCKET}/{prefix}/{f.relative_to(source).as_posix()}" for f in files])
    return len(files)


@requires_fashion
def test_flow_on_s3_retries_transient_errors_and_quarantines_what_stays_unreadable(
        corpus: tuple[Path, dict[str, str]], proxy: FaultProxy, dask_address: str) -> None:
    source, bad = corpus
    n = _upload_corpus(source, "src-c", 60)
    src, url = f"s3://{BUCKET}/src-c", f"s3://{BUCKET}/store-c"
    listed = sorted(p.relative_to(source).as_posix() for p in source.rglob("*.png") if p.parent.name != "bad")[:60]
    victim = listed[7]  # this image's GETs keep failing during extraction
    ingest_reset = proxy.fail("GET", f"/src-c/{listed[3]}$", "reset", 2)  # absorbed by botocore's retries
    store = Store(url)
    ingest(store, src, config=IngestConfig(), date=DAY, run_id="s3")
    assert proxy.hits[ingest_reset] == 2
    shard1 = f"{DAY.isoformat()}_s3_00001"
    manifest_503 = proxy.fail("GET", r"/store-c/manifest/.*\.parquet", "503", 3)  # one task attempt fails
    victim_503 = proxy.fail("GET", f"/src-c/{victim}$", "503", -1)
    put_503 = proxy.fail("PUT", f"/store-c/features/.*/shard-{shard1}\\.parquet", "503", 3)  # one attempt fails
    with WorkerEnv(dask_address, proxy.env):  # type: ignore[attr-defined]
        result = _extract(store, dask_address, config=EXTRACT.model_copy(update={"shard_size": 25}))
    key = result["extractor_key"]
    assert proxy.hits[manifest_503] == 3 and proxy.hits[put_503] == 3  # botocore gave up once each ...
    assert proxy.hits[victim_503] >= 3
    rep = verify_store(store, key)  # ... and the Prefect task retry (retry_transient) finished the shards
    assert rep.ok, rep.summary()
    assert rep.manifest_rows == n and rep.features == 59 and rep.quarantined == len(bad) + 1
    q = pa.concat_tables([store.read_parquet(quarantine_path(key, s)) for s in done_shards(store, key)])
    kinds = dict(zip(q.column("uri").to_pylist(), q.column("error_kind").to_pylist(), strict=True))
    assert kinds[f"{src}/{victim}"] == "io_error"  # quarantined with its reason, never dropped
    assert store.read_json(marker_path(key, shard1))["n_input"] == 25


def test_persistent_s3_write_failure_fails_loudly_and_leaves_the_shard_undone(proxy: FaultProxy,
                                                                               tmp_path: Path) -> None:
    from PIL import Image

    from imgclust.extract.shard import extract_shard
    from imgclust.io.manifest import plan_shards

    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(3)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(images / f"{i}.png")
    store = Store(f"s3://{BUCKET}/store-loud-{time.monotonic_ns()}")
    ingest(store, str(images), config=IngestConfig(), date=DAY, run_id="loud")
    spec = plan_shards(store, shard_size=100)[0]
    rule = proxy.fail("PUT", r"/features/.*\.parquet", "503", -1)
    with pytest.raises(OSError):
        extract_shard(store, spec, EXTRACT)
    assert proxy.hits[rule] == 3  # retried by botocore (AWS_MAX_ATTEMPTS=3) before giving up
    key = "pixels-28-L"
    assert not store.exists(marker_path(key, spec.shard_id))  # not done: a re-run redoes it
    rep = verify_store(store, key)
    assert not rep.ok and len(rep.missing) == 12  # loud: every row is reported missing, none counted as done


_NIGHTLY_SCRIPT = """
import sys, datetime as dt
from prefect_dask import DaskTaskRunner
from flows.auto_label import auto_label
auto_label.with_options(task_runner=DaskTaskRunner(address=sys.argv[1]))(
    source=sys.argv[2], store=sys.argv[3], date=dt.date.fromisoformat(sys.argv[4]))
"""


@requires_fashion
def test_overlapping_nightly_runs_are_serialised_by_the_store_lease(corpus: tuple[Path, dict[str, str]],
                                                                    tmp_path: Path, dask_address: str) -> None:
    from prefect_dask import DaskTaskRunner

    from flows.auto_label import auto_label
    from imgclust.config import ClusterConfig, ReduceConfig
    from imgclust.io.lock import LeaseHeldError

    source, _ = corpus
    src = tmp_path / "src"
    classes = sorted(p for p in source.iterdir() if p.is_dir() and p.name != "bad")
    for c in classes[:5]:
        shutil.copytree(c, src / c.name)
    store = _ingested(tmp_path / "store", src, run_id="day1")
    key, model = extract_fit_label(store, EXTRACT, reduce=ReduceConfig(n_components=8),
                                   cluster=ClusterConfig(k=4, seed=1))
    for c in classes[5:]:  # the night's new images
        shutil.copytree(c, src / c.name)
    day2 = DAY + dt.timedelta(days=1)

    with WorkerEnv(dask_address, _fault("sleep", f"{day2.isoformat()}_*", seconds=1.0)):  # a slow night
        proc = subprocess.Popen([sys.executable, "-c", _NIGHTLY_SCRIPT, dask_address, str(src), store.url,
                                 day2.isoformat()], cwd=REPO, env=os.environ.copy(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while not store.exists("locks/writer.json"):
                assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
                assert time.monotonic() < deadline, "the first run never took the lease"
                time.sleep(0.1)

            def second(wait: float) -> Any:
                return auto_label.with_options(task_runner=DaskTaskRunner(address=dask_address))(
                    source=str(src), store=store.url, date=day2, lock_wait_seconds=wait, return_state=True)

            refused = second(0.0)
            assert refused.is_failed()
            with pytest.raises(LeaseHeldError, match="another run holding the .writer. lease is in progress"):
                refused.result()
            assert len(list_parts(store)) == 1 or proc.poll() is None  # the refused run wrote nothing
            waited = second(180.0).result()  # waits for the first run's lease, then finds nothing new
            assert proc.wait(timeout=180) == 0, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
        finally:
            proc.kill()
            proc.wait()
    assert waited["new_images"] == 0 and waited["labeled"] == 0
    assert not store.exists("locks/writer.json")  # released
    assert len(list_parts(store)) == 2  # day 1 + the first night's part, no duplicate part
    rep = verify_store(store, key, model_id=model.model_id)
    assert rep.ok, rep.summary()
    assert rep.features == 400 and rep.labels == 400  # every image labelled exactly once
