"""Flow: write the HTML report of a model version (default: CURRENT)."""
from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow
from prefect.artifacts import create_link_artifact

from tasks.cluster import current_model_task
from tasks.report import report_task


@flow(name="report")
def report(store: str, model_id: str | None = None, run: str | None = None) -> dict[str, Any]:
    """Montage per cluster, 2-D map, size chart and metrics as ``reports/<run>/index.html``."""
    model_id = model_id or current_model_task(store)[0]
    run = run or f"{model_id}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    out = report_task(store, model_id, run)
    create_link_artifact(key="report", link=out["index_uri"], link_text=f"report of {model_id}")
    return out
