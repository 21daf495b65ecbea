"""Near-duplicate task: groups of almost-identical images in one extractor's feature space."""
from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from imgclust.dedup import DedupConfig, dedup_store
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
