"""Waiting on mapped task futures with progress logs and a hard timeout.

prefect-dask can leave a task "Running" forever when Dask gives up on it (KilledWorker; see
docs/architecture.md), so every wait has a deadline and a stuck run fails loudly.
"""
from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger
from prefect.futures import PrefectFuture, as_completed


def gather(futures: list[PrefectFuture[Any]], what: str, *, timeout: float | None = None) -> list[Any]:
    """Results of ``futures`` in submission order, logging progress every ~10%."""
    logger = get_run_logger()
    n = len(futures)
    if n == 0:
        return []
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
    return [f.result() for f in futures]
