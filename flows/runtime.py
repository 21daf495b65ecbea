"""Where flows run: the Dask task runner from a RunnerConfig, and the embedded Prefect API.

* ``local``: a ``distributed.LocalCluster`` of ``workers`` processes, started for the flow run.
* ``address``: an existing scheduler (multi-node clusters, ``dask cuda worker`` hosts).
* ``cuda``: ``dask_cuda.LocalCUDACluster``, one worker per visible GPU, each with resource ``GPU=1``.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from prefect_dask import DaskTaskRunner

from imgclust.config import RunnerConfig
from imgclust.exceptions import ConfigError

log = logging.getLogger(__name__)


def runner_from_env() -> RunnerConfig:
    """RunnerConfig for deployed flows: ``IMGCLUST_DASK_ADDRESS``, ``IMGCLUST_DASK_WORKERS`` (default
    ``RunnerConfig``'s), ``IMGCLUST_GPU_CLUSTER=1`` (one worker per GPU), by :meth:`RunnerConfig.choose`."""
    workers = os.environ.get("IMGCLUST_DASK_WORKERS")
    try:
        count = int(workers) if workers else None
    except ValueError as err:
        raise ConfigError(f"bad IMGCLUST_DASK_WORKERS={workers!r}: a number of worker processes") from err
    return RunnerConfig.choose(address=os.environ.get("IMGCLUST_DASK_ADDRESS"),
                               gpu_cluster=os.environ.get("IMGCLUST_GPU_CLUSTER", "") in ("1", "true", "yes"),
                               workers=count)


def default_task_runner() -> DaskTaskRunner:
    """The task runner flows are declared with (the CLI and tests override it per run)."""
    return dask_task_runner(runner_from_env())


GPU_TASKS_ENV = "IMGCLUST_GPU_TASKS"
"""``1``: feature-extraction tasks require the Dask worker resource ``GPU=1`` (set for ``kind="cuda"``;
set it yourself for a scheduler address whose GPU workers run ``dask worker --resources GPU=1``)."""


@contextlib.contextmanager
def gpu_placement() -> Iterator[None]:
    """Annotate the tasks submitted inside with ``resources={"GPU": 1}`` when ``IMGCLUST_GPU_TASKS=1``,
    so Dask runs them only on GPU workers, one at a time per GPU; otherwise no annotation."""
    if os.environ.get(GPU_TASKS_ENV, "") not in ("1", "true", "yes"):
        yield
        return
    import dask

    with dask.annotate(resources={"GPU": 1}):
        yield


def dask_task_runner(cfg: RunnerConfig) -> DaskTaskRunner:
    """A DaskTaskRunner for ``cfg`` (the cluster starts when the flow run starts)."""
    if cfg.kind == "address":
        return DaskTaskRunner(address=cfg.address)
    if cfg.kind == "cuda":
        try:
            import dask_cuda  # noqa: F401
        except ImportError as err:
            raise ConfigError("runner kind 'cuda' needs dask-cuda: pip install 'imgclust[gpu]'") from err
        os.environ[GPU_TASKS_ENV] = "1"  # its workers advertise GPU=1: extraction asks for it
        return DaskTaskRunner(cluster_class="dask_cuda.LocalCUDACluster",
                              cluster_kwargs={"threads_per_worker": cfg.threads_per_worker,
                                              "resources": {"GPU": 1}, "dashboard_address": None})
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.workers, "threads_per_worker": cfg.threads_per_worker,
                                          "processes": True, "dashboard_address": None})


@contextlib.contextmanager
def embedded_prefect(home: str | os.PathLike[str]) -> Iterator[str]:
    """Make sure a Prefect API is reachable by this process *and* by Dask worker processes.

    With ``PREFECT_API_URL`` set (a real server or Prefect Cloud) this does nothing. Otherwise it starts
    Prefect's temporary API server (SQLite under ``home``) once and exports its URL, so worker
    processes report to the same API instead of each starting their own ephemeral server.
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        yield str(PREFECT_API_URL.value())
        return
    Path(home).mkdir(parents=True, exist_ok=True)
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

    db = f"sqlite+aiosqlite:///{Path(home).resolve() / 'prefect.db'}"
    with temporary_settings({PREFECT_SERVER_DATABASE_CONNECTION_URL: db}):
        os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = db
        server = SubprocessASGIServer()
        server.start(timeout=120)
        os.environ["PREFECT_API_URL"] = server.api_url
        try:
            with temporary_settings({PREFECT_API_URL: server.api_url}):
                log.info("embedded Prefect API at %s (database %s)", server.api_url, db)
                yield server.api_url
        finally:
            _drain_prefect_workers()  # ship buffered run logs/events before the API goes away
            os.environ.pop("PREFECT_API_URL", None)
            server.stop()


def _drain_prefect_workers() -> None:
    """Flush Prefect's background log and event workers (as ``prefect_test_harness`` does on exit)."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        for fn in (APILogWorker.drain_all, EventsWorker.drain_all):
            result = fn(timeout=10)
            if inspect.isawaitable(result):
                await result

    run_coro_as_sync(drain())
