"""Near-duplicate tasks: groups of almost-identical images in one extractor's feature space, and the nightly
flags of new images that nearly duplicate stored ones."""
from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from imgclust.models.dedup import (
    DedupConfig,
    SearchSpace,
    dedup_store,
    flag_new_near_duplicates,
    near_duplicate_search_space,
)
from tasks._common import open_store, retry_transient


@task(name="near-duplicates", task_run_name="near-duplicates-{extractor_key}", retries=1, retry_delay_seconds=10,
      retry_condition_fn=retry_transient)
def dedup_task(store: str, extractor_key: str, threshold: float, k: int, rule: str = "representative"
               ) -> dict[str, Any]:
    """Write ``near_duplicates/<extractor_key>/`` (idempotent: the same inputs write the same table)."""
    summary = dedup_store(open_store(store), extractor_key,
                          DedupConfig(threshold=threshold, k=k, rule=rule))  # type: ignore[arg-type]
    get_run_logger().info("%d near-duplicate groups holding %d of %d images", summary["groups"],
                          summary["images_in_groups"], summary["rows"])
    return summary


@task(name="near-duplicate-space", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def near_duplicate_space_task(store: str, model_id: str) -> SearchSpace:
    """Where the near-duplicates of the model's images are searched
    (:func:`imgclust.models.dedup.near_duplicate_search_space`)."""
    return near_duplicate_search_space(open_store(store), model_id)


@task(name="flag-near-duplicates", task_run_name="flag-near-duplicates-{extractor_key}", retries=1,
      retry_delay_seconds=10, retry_condition_fn=retry_transient)
def flag_near_duplicates_task(store: str, model_id: str, extractor_key: str, new_shard_ids: list[str],
                              threshold: float, search_key: str | None = None,
                              search_shard_ids: list[str] | None = None) -> dict[str, Any]:
    """Write the nightly near-duplicate flags of the new shards (idempotent: same inputs, same tables); run before
    labelling them, which reads the flags. ``search_key`` / ``search_shard_ids``: the same images in another
    (near-duplicate) feature space to search in. In the model's own space when that is not made for
    near-duplicates it writes nothing and the summary's ``skipped`` says why."""
    search = (search_key, search_shard_ids or []) if search_key is not None else None
    summary = flag_new_near_duplicates(open_store(store), model_id, extractor_key, new_shard_ids,
                                       DedupConfig(threshold=threshold), search=search)
    if "skipped" in summary:
        get_run_logger().warning("near-duplicate flags skipped: %s", summary["skipped"])
    else:
        get_run_logger().info("%d of %d new images nearly duplicate stored ones (cosine >= %s in %s)",
                              summary["near_duplicates"], summary["new_rows"], threshold, summary["key"])
    return summary
