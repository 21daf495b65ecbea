"""Report task: montages, 2-D map, size chart and HTML index under reports/<run>/."""
from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from imgclust.models.model import load_metrics
from imgclust.models.report import build_report, load_cluster_names
from tasks._common import open_store


@task(name="report", task_run_name="report-{model_id}")
def report_task(store: str, model_id: str, run: str) -> dict[str, Any]:
    """Write ``reports/<run>/index.html`` + PNGs for ``model_id``; returns paths and counts."""
    s = open_store(store)
    out = build_report(s, model_id, run=run, metrics=load_metrics(s, model_id))
    out["index_uri"] = s.uri(out["index"])
    get_run_logger().info("report for %s: %s", model_id, out["index_uri"])
    return out


@task(name="cluster-names")
def cluster_names_task(store: str) -> dict[int, str]:
    """Human names of stable cluster ids from ``cluster_names.csv`` (empty when the file is absent)."""
    return load_cluster_names(open_store(store))
