"""Flow: on-demand backfill from the Prefect UI: re-ingest / re-extract / re-label a date range.

Idempotent: a second identical run changes nothing (ingest is content-deduplicated, done shards and
existing label files are skipped unless ``force``). The deployment limits concurrent runs to one, and the
run holds the store's writer lease (``flows/store_lease.py``).

The parameters are top-level (not one nested model) so that the deployment's defaults (store, sources)
pre-fill the UI form and a run started through the API with only ``start`` and ``end`` keeps them: Prefect
merges a run's parameters over the deployment's key by key.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow, get_run_logger

from flows.build_clusters import label_all
from flows.extract_features import run_extraction
from flows.runtime import default_task_runner
from flows.store_lease import DEFAULT_LOCK_WAIT_SECONDS, store_writer
from imgclust.config import BackfillParams, BackfillStage, ExtractConfig, Extractor, IngestConfig
from tasks.cluster import current_model_task
from tasks.extract import list_parts_task
from tasks.ingest import ingest_source

__all__ = ["BackfillParams", "backfill"]  # BackfillParams (imgclust.config) is the flow's parameter model


@flow(name="backfill", task_runner=default_task_runner())
def backfill(store: str, start: dt.date, end: dt.date,
             redo: list[BackfillStage] = ["extract", "label"],  # noqa: B006 (Prefect copies parameters per run)
             sources: list[str] = [],  # noqa: B006
             extractor: Extractor | None = None,  # type: ignore[valid-type]
             force: bool = False, lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS) -> dict[str, Any]:
    """Re-ingest sources, re-extract and/or re-label the manifest partitions dated start..end.

    Args:
        store: Store root: folder or s3://bucket/prefix.
        start: First manifest date to process.
        end: Last manifest date to process (inclusive).
        redo: Stages to run for the range.
        sources: Folders/URLs to re-scan when redo has ingest.
        extractor: Backbone for extract; default: the CURRENT model's.
        force: Recompute even finished shards / existing labels.
        lock_wait_seconds: How long to wait for another run that writes to the store.
    """
    params = BackfillParams(store=store, start=start, end=end, redo=redo, sources=sources, extractor=extractor,
                            force=force)  # cross-field checks before any work
    with store_writer(params.store, wait=lock_wait_seconds):
        return _backfill(params)


def _backfill(params: BackfillParams) -> dict[str, Any]:
    """The body of :func:`backfill`, run while holding the store's writer lease."""
    logger = get_run_logger()
    out: dict[str, Any] = {"key": params.key(), "ingested": [], "extraction": None, "labeled": 0,
                           "labels_skipped": 0}
    for source in params.sources if "ingest" in params.redo else []:
        out["ingested"].append(ingest_source(source, params.store, IngestConfig(), params.end))
    parts = list_parts_task(params.store, params.start, params.end)
    logger.info("backfill %s: %d manifest parts in range", params.key(), len(parts))
    need_model = "label" in params.redo or params.extractor is None
    model_id, extract = current_model_task(params.store) if need_model else (None, ExtractConfig())
    if params.extractor is not None:
        extract = extract.model_copy(update={"extractor": params.extractor.value})
    # labels need features: missing shards are extracted either way; finished ones only when redoing extract
    extraction = (run_extraction(params.store, extract, parts=parts, force=params.force and "extract" in params.redo)
                  if parts else None)
    if extraction and "extract" in params.redo:
        out["extraction"] = {k: v for k, v in extraction.items() if k != "shard_ids"}
    if extraction and "label" in params.redo and model_id:
        labeled = label_all(params.store, model_id, extraction["extractor_key"], extraction["shard_ids"],
                            force=params.force)
        out["labeled"] = sum(r["n"] for r in labeled if not r.get("skipped"))
        out["labels_skipped"] = sum(1 for r in labeled if r.get("skipped"))
        out["model_id"] = model_id
    return out
