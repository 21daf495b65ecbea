"""Novelty task: a night's novelty event and its candidate new clusters."""
from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from imgclust.models.novelty_night import assess_night
from tasks._common import open_store, retry_transient


@task(name="assess-novelty", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def assess_novelty_task(store: str, model_id: str, extractor_key: str, shard_ids: list[str],
                        novelty_rate: float | None = None) -> dict[str, Any]:
    """Count the night's novel images against the calibrated limit, test its score shift and write its candidate
    new clusters (idempotent: the same label rows write the same files)."""
    out = assess_night(open_store(store), model_id, extractor_key, shard_ids, novelty_rate=novelty_rate)
    get_run_logger().info("%d of %d new images novel (limit %d), score shift p = %s, %d candidate new cluster(s)",
                          out["novel"], out["labeled"], out["limit"], out.get("shift_p"), len(out["candidates"]))
    return out
