"""Flow: scheduled reclustering: refit on all stored features, keep stable ids, relabel, gate, promote."""
from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger

from flows.artifacts import publish_model_artifacts
from flows.build_clusters import label_all, pca_statistics
from flows.runtime import default_task_runner
from flows.store_lease import DEFAULT_LOCK_WAIT_SECONDS, store_writer
from imgclust.config import ClusterConfig, ExtractConfig, Recipe, ReduceConfig
from imgclust.models.promotion import GateConfig
from tasks.cluster import (
    current_model_task,
    evaluate_task,
    gate_and_promote_task,
    recluster_recipe_task,
    refit_task,
)
from tasks.extract import done_shards_task, extractor_key_task
from tasks.report import report_task


@flow(name="recluster", task_runner=default_task_runner())
def recluster(store: str, reduce: ReduceConfig | None = None, cluster: ClusterConfig | None = None,
              truth: str = "none", gate_metric: str = "internal_silhouette", gate_tolerance: float = 0.02,
              min_overlap: float = 0.3, reason: Literal["schedule", "novelty", "manual"] = "schedule",
              lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS) -> dict[str, Any]:
    """Refit the CURRENT model's recipe (or the given one) on every stored feature row.

    Stable ids are inherited by Jaccard/Hungarian matching on shared images; every image is relabeled
    under the new version; the new version is promoted only if ``gate_metric`` does not regress by
    more than ``gate_tolerance``. ``reason`` says what started the run (the novelty trigger passes
    ``novelty``: then the previous recipe's ``k`` grows by the candidate new clusters of its newest night,
    :func:`imgclust.models.novelty_night.cluster_config_for_novelty`) and is recorded with the gate decision. Holds the store's writer lease throughout
    (``flows/store_lease.py``), so no nightly run labels with the previous model meanwhile.
    """
    gate = GateConfig(metric=gate_metric, tolerance=gate_tolerance)  # a bad gate fails before any work
    get_run_logger().info("recluster of %s started by %s", store, reason)
    with store_writer(store, wait=lock_wait_seconds):
        previous, extract = current_model_task(store)
        # e.g. scan on a UMAP recipe is refused here, before any shard is read
        recipe = recluster_recipe_task(store, previous, reduce, cluster, reason)
        key = extractor_key_task(extract)
        return run_refit(store, key, extract, recipe, previous, truth=truth, gate=gate, min_overlap=min_overlap,
                         trigger=reason)


def run_refit(store: str, key: str, extract: ExtractConfig, recipe: Recipe, previous: str, *, truth: str,
              gate: GateConfig, min_overlap: float = 0.3, trigger: str = "manual") -> dict[str, Any]:
    """Compose: refit with lineage -> relabel every shard -> evaluate -> gate -> promote -> report."""
    shard_ids = done_shards_task(store, key)
    stats = pca_statistics(store, key, shard_ids, recipe.reduce)
    model_id = refit_task(store, key, recipe, extract, previous, min_overlap, shard_ids, stats)
    labeled = label_all(store, model_id, key, shard_ids)
    metrics = evaluate_task(store, model_id, key, truth)
    decision = gate_and_promote_task(store, model_id, gate, trigger)
    report = report_task(store, model_id, f"recluster-{model_id}")
    publish_model_artifacts(model_id, metrics, decision, report=report["index_uri"])
    return {"model_id": model_id, "previous": previous, "labeled": sum(r["n"] for r in labeled),
            "metrics": metrics, "promoted": decision["promoted"], "gate": decision, "report": report["index_uri"]}
