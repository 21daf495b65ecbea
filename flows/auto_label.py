"""Flow: nightly auto-labeling of newly ingested images with the CURRENT model.

Cost grows with the number of new images only: the manifest is the watermark, so only the new
partition is extracted and labeled; the model is loaded once per worker.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow, get_run_logger

from flows.artifacts import publish_label_summary
from flows.build_clusters import label_all
from flows.events import NOVELTY_EVENT, emit_novelty
from flows.extract_features import run_extraction
from flows.runtime import default_task_runner
from flows.store_lease import DEFAULT_LOCK_TTL_SECONDS, DEFAULT_LOCK_WAIT_SECONDS, store_writer
from imgclust.config import IngestConfig
from tasks.cluster import current_model_task
from tasks.ingest import ingest_source
from tasks.report import cluster_names_task


@flow(name="auto-label", task_runner=default_task_runner())
def auto_label(source: str, store: str, date: dt.date | None = None, novelty_threshold: float = 0.2,
               ingest: IngestConfig = IngestConfig(), lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS,
               lock_ttl_seconds: float = DEFAULT_LOCK_TTL_SECONDS) -> dict[str, Any]:
    """Ingest what arrived since the last run, extract it, label it with the CURRENT model.

    Emits the Prefect event ``imgclust.novelty.high`` for the store when the share of novel images exceeds
    ``novelty_threshold`` (the novelty trigger of ``recluster/weekly`` starts a recluster on it).

    One writer at a time per store: the run holds the store's writer lease (``flows/store_lease.py``;
    renewed every ``lock_ttl_seconds / 3``), shared with recluster, refine, backfill and the pipeline.
    A run waits up to ``lock_wait_seconds`` for another writer, then fails with LeaseHeldError naming
    the holder, before touching the store. (Two overlapping ingests of the same new files would add
    them twice; a recluster promoted mid-run would never label this night's images.)
    """
    with store_writer(store, wait=lock_wait_seconds, ttl=lock_ttl_seconds):
        return _auto_label(source, store, date, novelty_threshold, ingest)


def _auto_label(source: str, store: str, date: dt.date | None, novelty_threshold: float, ingest: IngestConfig
                ) -> dict[str, Any]:
    """The body of :func:`auto_label`, run while holding the store lease."""
    logger = get_run_logger()
    model_id, extract = current_model_task(store)
    ingested = ingest_source(source, store, ingest, date)
    summary: dict[str, Any] = {"model_id": model_id, "new_images": ingested["new"], "listed": ingested["listed"],
                               "labeled": 0, "novel": 0, "quarantined": 0, "novelty_rate": 0.0,
                               "novelty_threshold": novelty_threshold, "novelty_alert": False}
    if ingested["part"] is None:
        logger.info("nothing new under %s since the last run", source)
        publish_label_summary(summary)
        return summary
    extraction = run_extraction(store, extract, parts=[ingested["part"]])
    labeled = label_all(store, model_id, extraction["extractor_key"], extraction["shard_ids"])
    n = sum(r["n"] for r in labeled)
    novel = sum(r["novel"] for r in labeled)
    rate = novel / n if n else 0.0
    summary.update(labeled=n, novel=novel, quarantined=extraction["quarantined"], novelty_rate=round(rate, 4),
                   novelty_alert=rate > novelty_threshold, part=ingested["part"])
    if summary["novelty_alert"]:
        logger.warning("novelty rate %.3f exceeds %.3f: emitting %s", rate, novelty_threshold, NOVELTY_EVENT)
        emit_novelty(store, model_id, {"novelty_rate": rate, "novel": novel, "labeled": n, "part": ingested["part"]})
    sizes: dict[int, int] = {}
    for r in labeled:
        for c, count in r.get("sizes", {}).items():
            sizes[int(c)] = sizes.get(int(c), 0) + count
    summary["sizes"] = sizes
    publish_label_summary(summary, cluster_names_task(store))
    return summary
