"""Ingest task: scan a source into a new manifest partition."""
from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import get_run_logger, task

from imgclust.config import ClusterConfig, IngestConfig
from imgclust.io.manifest import ingest, read_manifest
from imgclust.models.capping import check_enough_rows
from tasks._common import open_store, retry_transient


@task(name="ingest", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient)
def ingest_source(source: str, store: str, config: IngestConfig, date: dt.date | None = None,
                  run_id: str | None = None) -> dict[str, Any]:
    """Append what ``source`` holds beyond the manifest; returns the ingest summary (counts, new part)."""
    summary = ingest(open_store(store), source, config=config, date=date, run_id=run_id)
    get_run_logger().info("ingest %s: %d listed, %d new, %d duplicates, %d already known", source,
                          summary.listed, summary.new, summary.duplicates, summary.already_known)
    return summary.as_dict()


@task(name="check-corpus-size", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient)
def check_corpus_size_task(store: str, cluster: ClusterConfig) -> int:
    """Refuse, before any extraction, a manifest with fewer images than ``cluster`` needs (n < k); returns its rows."""
    n = read_manifest(open_store(store), columns=["image_id"]).num_rows
    check_enough_rows(n, cluster, what=f"the manifest of {store} holds {n} images (checked before extraction: "
                                       "nothing was extracted)")
    return n
