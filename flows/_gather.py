"""Waiting on mapped task futures with progress logs, a deadline and clear failures.

prefect-dask can leave a task "Running" forever when Dask gives up on it (KilledWorker; see
docs/architecture.md and docs/reliability.md), so every wait can have a deadline
(``IMGCLUST_GATHER_TIMEOUT`` seconds when the caller gives none), a stuck wait fails loudly, and a
task that killed its workers is reported by name and marked Crashed in the Prefect API instead of
staying Running.
"""
from __future__ import annotations

import os
import time
from typing import Any

from distributed import KilledWorker
from prefect import get_run_logger
from prefect.futures import PrefectFuture, as_completed

from imgclust.exceptions import ConfigError

TIMEOUT_ENV = "IMGCLUST_GATHER_TIMEOUT"


class TaskKilledWorkersError(RuntimeError):
    """Dask gave up on a task because every worker that ran it died (KilledWorker)."""


def default_timeout() -> float | None:
    """``$IMGCLUST_GATHER_TIMEOUT`` in seconds (unset or empty: no deadline)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError as err:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from err
    if value <= 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be > 0 seconds, got {raw}")
    return value


def gather(futures: list[PrefectFuture[Any]], what: str, *, timeout: float | None = None) -> list[Any]:
    """Results of ``futures`` in submission order, logging progress every ~10%.

    Raises TimeoutError when not all finish within ``timeout`` (default :func:`default_timeout`) and
    TaskKilledWorkersError naming the task when Dask gave up on it.
    """
    logger = get_run_logger()
    n = len(futures)
    if n == 0:
        return []
    timeout = default_timeout() if timeout is None else timeout
    t0 = time.perf_counter()
    step = max(1, n // 10)
    done = 0
    try:
        for _ in as_completed(futures, timeout=timeout):
            done += 1
            if done % step == 0 or done == n:
                logger.info("%s: %d/%d done (%.1fs)", what, done, n, time.perf_counter() - t0)
    except TimeoutError as err:
        raise TimeoutError(f"{what}: only {done}/{n} finished within {timeout}s; a worker may have died "
                           "repeatedly (check the Dask logs), then re-run: finished shards are skipped") from err
    results = []
    for f in futures:
        try:
            results.append(f.result())
        except KilledWorker as err:
            message = (f"{what}: Dask gave up on task {_task_run_name(f)} because every worker that ran it died "
                       f"({err}). The task itself kills its worker process (out of memory, a native crash "
                       "in a decoder or the model); other finished tasks are kept, so fix the cause (see the "
                       "worker logs, e.g. lower batch_size or decode_threads) and re-run")
            _mark_crashed(f, message)
            raise TaskKilledWorkersError(message) from err
    return results


def _task_run_name(future: PrefectFuture[Any]) -> str:
    """``'<task run name>' (<id>)`` from the Prefect API, or just the id when the API cannot say."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            return f"{client.read_task_run(future.task_run_id).name!r} (task run {future.task_run_id})"
    except Exception as err:  # naming is a courtesy; the id still identifies the run
        get_run_logger().warning("could not read task run %s: %s", future.task_run_id, err)
        return f"run {future.task_run_id}"


def _mark_crashed(future: PrefectFuture[Any], message: str) -> None:
    """Set the task run Crashed in the API (prefect-dask leaves it Running after KilledWorker)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            client.set_task_run_state(future.task_run_id, Crashed(message=message), force=True)
    except Exception as err:  # reporting must not hide the real failure raised next
        get_run_logger().warning("could not mark task run %s Crashed: %s", future.task_run_id, err)
