"""The deployments of imgclust, declared in Python for ``flow.serve``-style serving (``imgclust serve``).

``deployments/prefect.yaml`` declares the same set for ``prefect deploy`` onto a work pool.
Settings come from the environment so that no credential is ever a flow parameter:

==========================  ===============================================  ==================
variable                    meaning                                          default
==========================  ===============================================  ==================
IMGCLUST_SOURCE             folder / URL the nightly run ingests             (required)
IMGCLUST_STORE              store root                                       (required)
IMGCLUST_TIMEZONE           timezone of the cron schedules                   UTC
IMGCLUST_NIGHTLY_CRON       nightly auto-label schedule                      ``0 2 * * *``
IMGCLUST_RECLUSTER_CRON     weekly recluster schedule                        ``0 4 * * 0``
IMGCLUST_REFINE_CRON        weekly deep refinement schedule                  ``0 3 * * 6``
IMGCLUST_REFINE_METHOD      deep method of the scheduled refinement          convae
IMGCLUST_DASK_ADDRESS etc.  where tasks run (see flows/runtime.py)            local cluster
==========================  ===============================================  ==================
"""
from __future__ import annotations

import os
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

from flows.auto_label import auto_label
from flows.backfill import backfill
from flows.pipeline import pipeline
from flows.recluster import recluster
from flows.refine import refine
from imgclust.exceptions import ConfigError


def _env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set; export it (see deployments/serve.py) before serving")
    return value


def build_deployments() -> list[Any]:
    """The RunnerDeployments to serve: nightly auto-label, weekly recluster, on-demand backfill and run."""
    source, store = _env("IMGCLUST_SOURCE"), _env("IMGCLUST_STORE")
    tz = os.environ.get("IMGCLUST_TIMEZONE", "UTC")
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    return [
        auto_label.to_deployment(
            name="nightly", schedules=[Cron(os.environ.get("IMGCLUST_NIGHTLY_CRON", "0 2 * * *"), timezone=tz)],
            parameters={"source": source, "store": store}, concurrency_limit=one_at_a_time,
            description="Label images ingested since the last run with the CURRENT model.", tags=["imgclust"]),
        recluster.to_deployment(
            name="weekly", schedules=[Cron(os.environ.get("IMGCLUST_RECLUSTER_CRON", "0 4 * * 0"), timezone=tz)],
            parameters={"store": store}, concurrency_limit=one_at_a_time,
            description="Refit on all features, keep stable ids, relabel, promote through the gate.",
            tags=["imgclust"]),
        refine.to_deployment(
            name="weekly", schedules=[Cron(os.environ.get("IMGCLUST_REFINE_CRON", "0 3 * * 6"), timezone=tz)],
            parameters={"store": store, "method": os.environ.get("IMGCLUST_REFINE_METHOD", "convae")},
            concurrency_limit=one_at_a_time, tags=["imgclust", "gpu"],
            description="Train a deep-clustering method; its candidate model goes through the promotion gate."),
        backfill.to_deployment(
            name="on-demand", concurrency_limit=one_at_a_time, tags=["imgclust"],
            description="Re-ingest / re-extract / re-label a date range (start from the UI form)."),
        pipeline.to_deployment(name="on-demand", concurrency_limit=one_at_a_time, tags=["imgclust"],
                               description="Run the whole pipeline once on a source."),
    ]


def main() -> None:
    """Serve every deployment from this process until interrupted."""
    from prefect import serve

    serve(*build_deployments())


if __name__ == "__main__":
    main()
