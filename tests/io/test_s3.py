"""Sources and the store on S3: a real S3 API (moto in server mode) reached through s3fs.

Credentials and endpoint reach s3fs only through the standard AWS environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3``,
which botocore honours); nothing in this module passes an endpoint or a key to imgclust.

The end-to-end tests run the flows on the session's Dask cluster (conftest ``dask_address``). Its
worker processes may have been spawned before this module set the AWS variables (a process only
inherits the environment it was spawned with), so a worker plugin (``_WorkerEnv``) sets them in every
worker, present and restarted ones, and restores them afterwards; the warm workers are reused.

Module order matters: ``bucket`` resets moto before each unit test; the end-to-end tests come last
and share one bucket written by the ``e2e`` fixture.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import logging
import pickle
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import requires_fashion, swap_env, write_bad_files, write_fashion_corpus
from distributed.diagnostics.plugin import WorkerPlugin

from imgclust.estimator import load_estimator
from imgclust.exceptions import ConfigError, StoreError
from imgclust.io import storage as storage
from imgclust.io.features import (
    done_shards,
    embeddings_table,
    feature_path,
    iter_feature_batches,
    marker_path,
)
from imgclust.io.sources import hash_files, list_source, read_uri
from imgclust.io.store import Store
from imgclust.reduce.streaming import StreamingPCA

pytestmark = pytest.mark.integration

BUCKET = "imgclust-test"
KEY_ID = "AKIAIMGCLUSTTEST7Q2Z"
SECRET = "imgclust-test-secret-XYZ"
REGION = "us-east-1"
DAY1, DAY2 = dt.date(2026, 11, 1), dt.date(2026, 11, 2)
N1, N2 = 300, 24
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3",
            "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED")
UNSET_VARS = ["AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
              "AWS_REGION", "FSSPEC_S3_ENDPOINT_URL", "FSSPEC_S3_KEY", "FSSPEC_S3_SECRET"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clear_fs_caches() -> None:
    import s3fs

    storage.clear_cache()
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on a free loopback port and the AWS environment pointing at it; yields the endpoint."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    nowhere = tmp_path_factory.mktemp("aws") / "absent"  # no ~/.aws of the developer's leaks in
    with pytest.MonkeyPatch.context() as mp:
        for var in UNSET_VARS:
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        mp.setenv("AWS_CONFIG_FILE", str(nowhere))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        _clear_fs_caches()
        try:
            yield endpoint
        finally:
            _clear_fs_caches()
    server.stop()


def _reset(endpoint: str) -> None:
    import boto3
    import requests

    requests.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
    boto3.client("s3").create_bucket(Bucket=BUCKET)  # endpoint and credentials from the environment


@pytest.fixture()
def bucket(s3_env: str) -> str:
    """A fresh, empty bucket (moto state wiped before each test)."""
    _reset(s3_env)
    return BUCKET


def _boto() -> Any:
    import boto3

    return boto3.client("s3")


def _keys(prefix: str = "") -> list[str]:
    pages = _boto().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _table(n: int = 500) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table({"id": [f"r{i}" for i in range(n)], "x": rng.random(n)})


# ---- the store ----------------------------------------------------------------------------------
def test_endpoint_and_credentials_come_from_the_environment_only(bucket: str) -> None:
    store = Store(f"s3://{bucket}/store")
    store.write_bytes("a.txt", b"1")
    assert _keys() == ["store/a.txt"]
    assert not store.is_local and store.storage_options == {}
    opts = json.dumps(store.fs.storage_options, default=repr)
    assert SECRET not in opts and KEY_ID not in opts and "127.0.0.1" not in opts
    assert SECRET.encode() not in pickle.dumps(store) and KEY_ID.encode() not in pickle.dumps(store)


def test_store_round_trip_on_s3(bucket: str) -> None:
    store = Store(f"s3://{bucket}/store/")
    assert store.url == f"s3://{bucket}/store" and repr(store) == f"Store('s3://{bucket}/store')"
    assert store.path("a/b.bin") == f"{bucket}/store/a/b.bin"
    assert store.uri("a/b.bin") == f"s3://{bucket}/store/a/b.bin"
    assert store.rel(store.path("a/b.bin")) == "a/b.bin" and store.rel(store.uri("a/b.bin")) == "a/b.bin"
    assert not store.exists("a/b.bin") and store.glob("a/*.bin") == []
    store.write_bytes("a/b.bin", b"\x00bytes")
    store.write_bytes("a/c.bin", b"c")
    store.write_json("a/d.json", {"k": [1, 2]})
    store.write_parquet("t/x.parquet", _table(), row_group_size=100)
    assert store.read_bytes("a/b.bin") == b"\x00bytes"
    assert store.read_json("a/d.json") == {"k": [1, 2]}
    assert store.glob("a/*.bin") == ["a/b.bin", "a/c.bin"]
    assert store.glob("*/*") == ["a/b.bin", "a/c.bin", "a/d.json", "t/x.parquet"]
    assert store.read_parquet("t/x.parquet").equals(_table())
    assert store.read_parquet("t/x.parquet", columns=["x"]).column_names == ["x"]
    assert sum(b.num_rows for b in store.iter_parquet_batches("t/x.parquet", batch_size=64)) == 500
    # single PUTs of complete objects: no temporary names ever appear in the bucket
    assert _keys() == ["store/a/b.bin", "store/a/c.bin", "store/a/d.json", "store/t/x.parquet"]
    assert store.exists("a/b.bin") and store.exists("a")
    store.remove("a/b.bin")
    assert not store.exists("a/b.bin") and store.glob("a/*.bin") == ["a/c.bin"]
    store.remove("a")
    assert _keys() == ["store/t/x.parquet"]
    with pytest.raises(StoreError, match="does not exist"):
        store.read_bytes("a/b.bin")
    with pytest.raises(StoreError, match="does not exist"):
        store.read_parquet("nope.parquet")
    with pytest.raises(StoreError, match="not under store root"):
        store.rel(f"{bucket}/elsewhere/x")


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "..", "/etc/passwd", "s3://other/key", "file:///etc/passwd"])
def test_path_escape_is_refused_on_s3(bucket: str, rel: str) -> None:
    store = Store(f"s3://{bucket}/store")
    with pytest.raises(StoreError, match="escapes the store root"):
        store.write_bytes(rel, b"x")
    assert _keys() == []


def test_listings_are_never_stale_across_writers(bucket: str) -> None:
    """Other processes write to the same store: exists/glob must not answer from a listing cache."""
    store = Store(f"s3://{bucket}/store")
    other = _boto()  # another writer (a Dask worker, a second flow)
    store.write_json("features/k/shard-1.json", {})
    assert store.glob("features/k/shard-*.json") == ["features/k/shard-1.json"]  # lists features/k
    other.put_object(Bucket=bucket, Key="store/features/k/shard-2.json", Body=b"{}")
    assert store.exists("features/k/shard-2.json")
    assert store.glob("features/k/shard-*.json") == ["features/k/shard-1.json", "features/k/shard-2.json"]
    other.delete_object(Bucket=bucket, Key="store/features/k/shard-1.json")
    assert not store.exists("features/k/shard-1.json")
    assert store.glob("features/k/shard-*.json") == ["features/k/shard-2.json"]
    # a long-lived process (nightly runs from one served deployment) lists the same source prefix again;
    # with fsspec's listing cache the second non-recursive listing missed the new object
    other.put_object(Bucket=bucket, Key="src/1.png", Body=b"1")
    assert len(list_source(f"s3://{bucket}/src", extensions=["png"], recursive=False)) == 1
    other.put_object(Bucket=bucket, Key="src/2.png", Body=b"2")
    assert len(list_source(f"s3://{bucket}/src", extensions=["png"], recursive=False)) == 2
    assert store.fs.ls(f"{bucket}/store/features/k") and not store.fs.dircache  # nothing is cached


def test_credentials_in_a_url_are_refused_without_echoing_them(bucket: str) -> None:
    url = f"s3://{KEY_ID}:{SECRET}@{bucket}/store"
    for call in (lambda: Store(url), lambda: list_source(url, extensions=[".png"]), lambda: read_uri(url + "/a.png")):
        with pytest.raises(ConfigError, match="credentials") as err:
            call()
        assert SECRET not in str(err.value) and KEY_ID not in str(err.value)


def test_half_written_shard_without_marker_is_ignored(bucket: str) -> None:
    store = Store(f"s3://{bucket}/store")
    emb = np.ones((3, 4), np.float32)
    store.write_parquet(feature_path("k", "X"), embeddings_table(["a", "b", "c"], emb))  # crash before the marker
    assert done_shards(store, "k") == []
    assert list(iter_feature_batches(store, "k")) == []
    store.write_json(marker_path("k", "X"), {"shard_id": "X"})
    assert done_shards(store, "k") == ["X"]


# ---- sources and estimators -----------------------------------------------------------------------
def test_sources_on_s3(bucket: str) -> None:
    client = _boto()
    for key, body in {"src/a/1.png": b"one", "src/a/2.PNG": b"two", "src/b/deep/3.png": b"one",
                      "src/notes.txt": b"x", "src2/4.png": b"four"}.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    files = list_source(f"s3://{bucket}/src", extensions=[".png"])
    assert [f.uri for f in files] == [f"s3://{bucket}/src/a/1.png", f"s3://{bucket}/src/a/2.PNG",
                                      f"s3://{bucket}/src/b/deep/3.png"]  # not src2/, not .txt
    assert [f.size_bytes for f in files] == [3, 3, 3]
    assert all(f.mtime.tzinfo is not None and f.mtime.year >= 2024 for f in files)
    assert [f.uri for f in list_source(f"s3://{bucket}/src/", extensions=["png"], recursive=False)] == []
    assert len(list_source(f"s3://{bucket}/src/a", extensions=["png"], recursive=False)) == 2
    assert read_uri(files[0].uri) == b"one"
    hashed = hash_files(files + [files[0].__class__(f"s3://{bucket}/src/gone.png", 1, files[0].mtime)], threads=4)
    assert hashed[0][1] == hashed[2][1] and hashed[0][1] != hashed[1][1]  # same bytes, same id
    assert hashed[3][1] is None and "FileNotFoundError" in hashed[3][2]
    assert list_source(f"s3://{bucket}/nothing-here", extensions=["png"]) == []


def test_estimator_save_load_by_s3_url(bucket: str) -> None:
    X = np.random.default_rng(0).random((200, 8)).astype(np.float32)
    pca = StreamingPCA(n_components=3).fit(X)
    pca.save(f"s3://{bucket}/models/pca")
    assert _keys("models/") == ["models/pca/arrays.npz", "models/pca/estimator.json"]
    loaded = load_estimator(f"s3://{bucket}/models/pca")
    np.testing.assert_allclose(loaded.transform(X), pca.transform(X), rtol=1e-5, atol=1e-5)


# ---- the flows with source and store on S3 (keep these last: they share one bucket) ---------------
class _WorkerEnv(WorkerPlugin):
    """Sets the AWS variables in every worker of the session cluster, present and restarted ones.

    The session cluster (conftest ``dask_address``) may have been started before this module set them,
    and worker processes only inherit the environment they were spawned with. Worker-side ``imgclust``
    logs are also sent to the Prefect API (what PREFECT_LOGGING_EXTRA_LOGGERS does at worker start).
    """

    name = "imgclust-test-s3-env"

    def __init__(self, env: dict[str, str], unset: list[str]) -> None:
        self.env, self.unset = env, unset
        self.saved: dict[str, str | None] = {}
        self.handler: logging.Handler | None = None

    def setup(self, worker: Any) -> None:
        from prefect.logging.handlers import APILogHandler

        self.saved = swap_env({**dict.fromkeys(self.unset), **self.env})
        _clear_fs_caches()
        self.handler = APILogHandler()
        lib = logging.getLogger("imgclust")
        lib.addHandler(self.handler)
        self.saved_level = lib.level
        lib.setLevel(logging.INFO)

    def teardown(self, worker: Any) -> None:
        swap_env(self.saved)
        _clear_fs_caches()
        lib = logging.getLogger("imgclust")
        if self.handler is not None:
            lib.removeHandler(self.handler)
        lib.setLevel(self.saved_level)


@pytest.fixture(scope="module")
def s3_dask_address(dask_address: str, s3_env: str) -> Iterator[str]:
    """The session's Dask cluster with this module's AWS environment in every worker."""
    import os

    from distributed import Client

    env = {var: os.environ[var] for var in AWS_VARS}
    with Client(dask_address) as client:
        client.register_plugin(_WorkerEnv(env, UNSET_VARS))
        try:
            yield dask_address
        finally:
            client.unregister_worker_plugin(_WorkerEnv.name)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()}")


def _upload(local_root: Path, files: list[Path], prefix: str) -> None:
    fs, _ = storage.url_to_fs(f"s3://{BUCKET}")
    fs.put([str(f) for f in files], [f"{BUCKET}/{prefix}/{f.relative_to(local_root).as_posix()}" for f in files])


def _api_records(flow_run_ids: list[Any], expect: str) -> tuple[list[str], list[str]]:
    """Log messages, artifact contents and parameters of the flow runs, read back from the Prefect API.

    Task-run logs from worker processes arrive in batches: poll until ``expect`` shows up."""
    import asyncio
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    async def read() -> tuple[list[str], list[str]]:
        async with get_client() as client:
            deadline = time.monotonic() + 30
            while True:
                logs: list[str] = []
                while True:
                    page = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)),
                                                  limit=200, offset=len(logs))
                    logs.extend(f"{r.name} {r.message}" for r in page)
                    if len(page) < 200:
                        break
                if any(expect in line for line in logs) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1)
            # a raw request: the client sends null for the filters it is not given, which this server refuses
            body = {"artifacts": ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=flow_run_ids)).model_dump(
                mode="json", exclude_unset=True), "limit": 200, "offset": 0}
            arts = (await client.request("POST", "/artifacts/filter", json=body)).json()
            params = [json.dumps((await client.read_flow_run(i)).parameters, default=str) for i in flow_run_ids]
        return logs, [json.dumps(a, default=str) for a in arts] + params

    return asyncio.run(read())


@pytest.fixture(scope="module")
def e2e(s3_env: str, s3_dask_address: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Day 1: pipeline over N1 Fashion-MNIST PNGs + bad files, source and store on S3. Day 2: N2 more
    images arrive and auto_label labels them; then recluster and report."""
    from prefect_dask import DaskTaskRunner

    from flows.auto_label import auto_label
    from flows.pipeline import pipeline
    from flows.recluster import recluster
    from flows.report import report
    from imgclust.config import ClusterConfig, ExtractConfig, PipelineConfig, ReduceConfig

    _reset(s3_env)
    local = tmp_path_factory.mktemp("s3corpus")
    write_fashion_corpus(local / "images", N1 + N2, seed=21)
    bad = write_bad_files(local / "images" / "bad")
    files = sorted(p for p in (local / "images").rglob("*.png") if p.parent.name != "bad")
    late = set(np.random.default_rng(1).choice(len(files), size=N2, replace=False).tolist())
    _upload(local / "images", [f for i, f in enumerate(files) if i not in late]
            + sorted((local / "images" / "bad").iterdir()), "src")
    src, store = f"s3://{BUCKET}/src", f"s3://{BUCKET}/store"

    def runner() -> Any:
        return DaskTaskRunner(address=s3_dask_address)

    collect = _Collect()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(collect)
    root.setLevel(logging.INFO)
    states = {}
    try:
        cfg = PipelineConfig(source=src, store=store, date=DAY1, truth="parent_dir",
                             extract=ExtractConfig(extractor="pixels", shard_size=120, batch_size=64),
                             reduce=ReduceConfig(n_components=20), cluster=ClusterConfig(k=6, n_redo=2, seed=2))
        states["pipeline"] = pipeline.with_options(task_runner=runner())(config=cfg, return_state=True)
        _upload(local / "images", [f for i, f in enumerate(files) if i in late], "src")
        states["auto_label"] = auto_label.with_options(task_runner=runner())(source=src, store=store, date=DAY2,
                                                                             return_state=True)
        states["recluster"] = recluster.with_options(task_runner=runner())(store=store, truth="parent_dir",
                                                                           return_state=True)
        states["report"] = report.with_options(task_runner=runner())(store=store, return_state=True)
    finally:
        root.removeHandler(collect)
        root.setLevel(old_level)
    results = {name: state.result() for name, state in states.items()}
    run_ids = [state.state_details.flow_run_id for state in states.values()]
    api_logs, api_artifacts = _api_records(run_ids, expect="quarantined in ")  # a worker-side imgclust log
    return {"store": store, "results": results, "bad": bad, "local_logs": collect.lines, "api_logs": api_logs,
            "api_artifacts": api_artifacts}


@requires_fashion
def test_pipeline_auto_label_recluster_report_with_source_and_store_on_s3(e2e: dict[str, Any]) -> None:
    from imgclust.io.manifest import read_manifest
    from imgclust.models.labels import read_labels
    from imgclust.models.model import current_model_id
    from imgclust.models.verify import verify_store

    store = Store(e2e["store"])
    first, nightly = e2e["results"]["pipeline"], e2e["results"]["auto_label"]
    again, rep = e2e["results"]["recluster"], e2e["results"]["report"]
    key, m1 = first["extraction"]["extractor_key"], first["build"]["model_id"]
    assert first["ingest"]["new"] == N1 + len(e2e["bad"])
    assert first["extraction"]["features"] == N1 and first["extraction"]["quarantined"] == len(e2e["bad"])
    assert first["build"]["metrics"]["acc"] > 0.3  # chance is ~0.1-0.2 on 10 classes
    uris = read_manifest(store, columns=["uri"]).column("uri").to_pylist()
    assert uris and all(u.startswith(f"s3://{BUCKET}/src/") for u in uris)
    assert nightly["model_id"] == m1 and nightly["new_images"] == N2 and nightly["labeled"] == N2
    rep1 = verify_store(store, key, model_id=m1)
    assert rep1.ok, rep1.summary()
    assert rep1.features == N1 + N2 and rep1.labels == N1 + N2
    assert len(store.glob(f"labels/{m1}/date={DAY2.isoformat()}/shard-*.parquet")) >= 1
    m2 = again["model_id"]
    assert again["previous"] == m1 and again["labeled"] == N1 + N2
    rep2 = verify_store(store, key, model_id=m2)
    assert rep2.ok, rep2.summary()
    assert read_labels(store, m2).num_rows == N1 + N2
    assert current_model_id(store) == (m2 if again["promoted"] else m1)
    assert "models/CURRENT" in [k.removeprefix("store/") for k in _keys("store/models/")]
    assert again["report"].startswith(f"s3://{BUCKET}/store/reports/")
    assert rep["index_uri"] == store.uri(rep["index"]) and rep["index_uri"].startswith("s3://")
    assert store.exists(rep["index"]) and all(store.exists(f) for f in rep["files"])
    assert b"<html" in store.read_bytes(rep["index"])
    assert rep["thumbnails_failed"] == 0  # thumbnails were read back from the S3 source


@requires_fashion
def test_no_credential_in_store_objects_logs_or_artifacts(e2e: dict[str, Any]) -> None:
    client = _boto()
    keys = _keys("store/")
    kinds = {k.rsplit(".", 1)[-1] for k in keys}
    assert {"json", "parquet", "npz", "html", "png"} <= kinds and "store/models/CURRENT" in keys
    for k in keys:
        body = client.get_object(Bucket=BUCKET, Key=k)["Body"].read()
        for needle in (SECRET, KEY_ID):
            assert needle.encode() not in body, f"{needle!r} found in s3://{BUCKET}/{k}"
        if k.endswith(".parquet"):  # also the decoded key-value metadata (in case it were compressed)
            meta = pq.ParquetFile(io.BytesIO(body)).schema_arrow.metadata or {}
            assert not any(SECRET.encode() in v or KEY_ID.encode() in v for v in meta.values())
    assert any(line.startswith("imgclust.extract.shard ") for line in e2e["api_logs"])  # worker-side library logs
    assert sum('"type": "table"' in a or '"type": "markdown"' in a for a in e2e["api_artifacts"]) >= 4
    assert any(f"s3://{BUCKET}/" in line for line in e2e["local_logs"] + e2e["api_logs"])
    texts = e2e["local_logs"] + e2e["api_logs"] + e2e["api_artifacts"] + [json.dumps(e2e["results"], default=str)]
    for text in texts:
        assert SECRET not in text and KEY_ID not in text, text
