"""Flow: nightly auto-labeling of newly ingested images with the CURRENT model.

Cost grows with the number of new images only: the manifest is the watermark, so only the new
partition is extracted and labeled; the model is loaded once per worker. The near-duplicate check of the new
images against the stored ones reads the stored features once (``imgclust.models.dedup``: O(new x stored) flops,
memory bounded by the new rows plus one stored batch).
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
from imgclust.config import ExtractConfig, IngestConfig
from imgclust.exceptions import ConfigError
from imgclust.models.dedup import DedupConfig
from tasks.cluster import current_model_task
from tasks.dedup import flag_near_duplicates_task, near_duplicate_space_task
from tasks.ingest import ingest_source
from tasks.naming import suggestions_table_task
from tasks.novelty import assess_novelty_task
from tasks.report import cluster_names_task


@flow(name="auto-label", task_runner=default_task_runner())
def auto_label(source: str, store: str, date: dt.date | None = None, novelty_rate: float | None = None,
               ingest: IngestConfig = IngestConfig(), lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS,
               lock_ttl_seconds: float = DEFAULT_LOCK_TTL_SECONDS,
               near_duplicate_threshold: float | None = DedupConfig.threshold) -> dict[str, Any]:
    """Ingest what arrived since the last run, extract it, label it with the CURRENT model.

    Before labelling, new images whose most similar stored image (labelled by the CURRENT model before this
    night, in its feature space) has cosine similarity ``>= near_duplicate_threshold`` are flagged in their label
    rows (``near_duplicate_of``, ``near_duplicate_similarity``) and counted in the summary (``near_duplicates``);
    None skips the check. It runs in a space made for near-duplicates (summary ``near_duplicate_key``): the model's
    own, or, when the model's features come from a ``deep:`` encoder trained on the corpus, the newest such space
    of the store's model versions, in which the night's images are extracted too
    (:func:`imgclust.models.dedup.near_duplicate_search_space`); with none, the check is skipped and the summary's
    ``near_duplicates_skipped`` says why.

    Novelty (:mod:`imgclust.models.novelty_night`): an image is novel when the model's calibrated novelty score exceeds
    its threshold at the target false-novel rate (``novelty_rate``, default the model's own, 0.05 unless fitted
    otherwise). Emits the Prefect event ``imgclust.novelty.high`` for the store (the novelty trigger of
    ``recluster/weekly`` starts a recluster on it) when the night has more novel images than known kinds give
    (the 0.999 quantile of their count), its scores as a whole sit above the model's calibration scores
    (``shift_p`` below 0.001), or its novel images form a candidate new cluster (montage and
    ``candidates.json`` under ``novelty/<model_id>/date=<date>/``).

    One writer at a time per store: the run holds the store's writer lease (``flows/store_lease.py``;
    renewed every ``lock_ttl_seconds / 3``), shared with recluster, refine, backfill and the pipeline.
    A run waits up to ``lock_wait_seconds`` for another writer, then fails with LeaseHeldError naming
    the holder, before touching the store. (Two overlapping ingests of the same new files would add
    them twice; a recluster promoted mid-run would never label this night's images.)
    """
    if near_duplicate_threshold is not None:
        DedupConfig(threshold=near_duplicate_threshold)  # a bad threshold fails before any work
    if novelty_rate is not None and not 0 < novelty_rate < 0.5:
        raise ConfigError(f"novelty_rate must be in (0, 0.5), e.g. 0.05; got {novelty_rate}")
    with store_writer(store, wait=lock_wait_seconds, ttl=lock_ttl_seconds):
        return _auto_label(source, store, date, novelty_rate, ingest, near_duplicate_threshold)


def _auto_label(source: str, store: str, date: dt.date | None, novelty_rate: float | None, ingest: IngestConfig,
                near_duplicate_threshold: float | None) -> dict[str, Any]:
    """The body of :func:`auto_label`, run while holding the store lease."""
    logger = get_run_logger()
    model_id, extract = current_model_task(store)
    ingested = ingest_source(source, store, ingest, date)
    summary: dict[str, Any] = {"model_id": model_id, "new_images": ingested["new"], "listed": ingested["listed"],
                               "labeled": 0, "novel": 0, "quarantined": 0, "novel_share": 0.0,
                               "novelty_alert": False, "candidates": [],
                               "near_duplicates": 0, "near_duplicate_threshold": near_duplicate_threshold}
    if ingested["part"] is None:
        logger.info("nothing new under %s since the last run", source)
        publish_label_summary(summary)
        return summary
    extraction = run_extraction(store, extract, parts=[ingested["part"]])
    if near_duplicate_threshold is not None and extraction["shard_ids"]:
        summary.update(_flag_near_duplicates(store, model_id, extract, extraction, ingested["part"],
                                             near_duplicate_threshold))
    labeled = label_all(store, model_id, extraction["extractor_key"], extraction["shard_ids"],
                        novelty_rate=novelty_rate)
    summary.update(quarantined=extraction["quarantined"], part=ingested["part"],
                   near_duplicates=sum(r.get("near_duplicates", 0) for r in labeled))
    if extraction["shard_ids"]:
        summary.update(assess_novelty_task(store, model_id, extraction["extractor_key"], extraction["shard_ids"],
                                           novelty_rate))
    if summary["novelty_alert"]:
        logger.warning("%d of %d new images are novel (at most %d expected of known kinds), %d candidate new "
                       "cluster(s), score shift p = %s: emitting %s", summary["novel"], summary["labeled"],
                       summary["limit"], len(summary["candidates"]), summary.get("shift_p"), NOVELTY_EVENT)
        emit_novelty(store, model_id, {k: summary[k] for k in ("novel", "labeled", "novel_share", "expected_rate",
                                                               "limit", "rule", "candidates", "part", "shift_p")
                                       if k in summary})
    sizes: dict[int, int] = {}
    for r in labeled:
        for c, count in r.get("sizes", {}).items():
            sizes[int(c)] = sizes.get(int(c), 0) + count
    summary["sizes"] = sizes
    publish_label_summary(summary, cluster_names_task(store), suggestions_table_task(store, model_id))
    return summary


def _flag_near_duplicates(store: str, model_id: str, extract: ExtractConfig, extraction: dict[str, Any], part: str,
                          threshold: float) -> dict[str, Any]:
    """Flag the night's near-duplicates of stored images, in the model's space or, when that is not made for
    near-duplicates, in the newest near-duplicate space of the store (the night's images extracted there first);
    the summary fields ``near_duplicate_key`` or ``near_duplicates_skipped``."""
    space = near_duplicate_space_task(store, model_id)
    if space.extract is None:
        get_run_logger().warning("near-duplicate flags skipped: %s", space.reason)
        return {"near_duplicates_skipped": space.reason}
    search_key = search_shards = None
    if space.extract != extract:
        other = run_extraction(store, space.extract, parts=[part])
        search_key, search_shards = other["extractor_key"], other["shard_ids"]
    flags = flag_near_duplicates_task(store, model_id, extraction["extractor_key"], extraction["shard_ids"], threshold,
                                      search_key, search_shards)
    return {"near_duplicate_key": flags["key"]}
