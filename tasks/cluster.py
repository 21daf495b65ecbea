"""Model tasks: fit a model version from stored features, label shards, evaluate, gate, promote."""
from __future__ import annotations

from typing import Any, Literal

from prefect import get_run_logger, task

from imgclust.config import ClusterConfig, ExtractConfig, Recipe, ReduceConfig
from imgclust.models.labels import evaluate, label_shard
from imgclust.models.model import (
    current_model_id,
    extract_config_of,
    fit_from_store,
    load_metrics,
    n_clusters_of,
    promote,
    require_current_model_id,
    save_gate_decision,
    save_metrics,
)
from imgclust.models.promotion import GateConfig, decide
from imgclust.models.recluster import recluster_recipe, refit_with_lineage
from tasks._common import open_store, retry_transient


@task(name="fit-model", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def fit_model_task(store: str, extractor_key: str, recipe: Recipe, extract: ExtractConfig | None = None,
                   shard_ids: list[str] | None = None, pca_statistics: list[str] | None = None) -> str:
    """Fit ``recipe`` on the stored features (exact PCA from ``pca_statistics`` when given); returns the new model
    id."""
    model = fit_from_store(open_store(store), extractor_key, recipe=recipe, extract=extract, shard_ids=shard_ids,
                           pca_statistics=pca_statistics)
    get_run_logger().info("fitted model %s with %d clusters", model.model_id, model.n_clusters)
    return model.model_id


@task(name="label-shard", task_run_name="label-{shard_id}", retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=retry_transient)
def label_shard_task(store: str, model_id: str, extractor_key: str, shard_id: str, force: bool = True,
                     novelty_rate: float | None = None) -> dict[str, Any]:
    """Write the labels of one feature shard (idempotent: same path, same rows); ``novelty_rate`` overrides the
    model's target false-novel rate."""
    return label_shard(open_store(store), model_id, extractor_key, shard_id, force=force, novelty_rate=novelty_rate)


@task(name="evaluate", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient)
def evaluate_task(store: str, model_id: str, extractor_key: str, truth: str = "none") -> dict[str, Any]:
    """Cluster sizes, internal metrics and, with ground truth, ACC/NMI/ARI; saved next to the model."""
    s = open_store(store)
    metrics = evaluate(s, model_id, extractor_key, truth=truth)
    save_metrics(s, model_id, metrics)
    return metrics


@task(name="gate-and-promote")
def gate_and_promote_task(store: str, model_id: str, gate: GateConfig, trigger: str = "manual") -> dict[str, Any]:
    """Promote ``model_id`` unless it is worse than CURRENT beyond the gate's tolerance; the decision and
    what started the run (``trigger``: schedule, novelty, manual, ...) are recorded with the model version."""
    s = open_store(store)
    current = current_model_id(s)
    decision = decide(load_metrics(s, model_id) or {}, load_metrics(s, current) if current else None, gate)
    record = {"promoted": decision.promote, "reason": decision.reason, "previous": current,
              "candidate_value": decision.candidate, "current_value": decision.current, "metric": gate.metric,
              "tolerance": gate.tolerance, "trigger": trigger}
    save_gate_decision(s, model_id, record)  # before promotion: a promoted model always has its decision
    if decision.promote:
        promote(s, model_id)
    get_run_logger().info("%s %s: %s", "promoted" if decision.promote else "kept CURRENT, did not promote",
                          model_id, decision.reason)
    return record


@task(name="current-model", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient)
def current_model_task(store: str) -> tuple[str, ExtractConfig]:
    """The promoted model id and the extract configuration its features need; clear error when none."""
    s = open_store(store)
    model_id = require_current_model_id(s)
    return model_id, extract_config_of(s, model_id)


@task(name="recluster-recipe", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient)
def recluster_recipe_task(store: str, previous_model_id: str, reduce: ReduceConfig | None,
                          cluster: ClusterConfig | None, reason: Literal["schedule", "novelty", "manual"]) -> Recipe:
    """The recipe a recluster refits: the previous model's, with what was given replacing it
    (:func:`imgclust.models.recluster.recluster_recipe`)."""
    return recluster_recipe(open_store(store), previous_model_id, reduce=reduce, cluster=cluster, reason=reason)


@task(name="cluster-count")
def cluster_count_task(store: str, model_id: str) -> int:
    """The number of clusters of a fitted model version."""
    return n_clusters_of(open_store(store), model_id)


@task(name="refit-with-lineage", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def refit_task(store: str, extractor_key: str, recipe: Recipe, extract: ExtractConfig | None,
               previous_model_id: str | None, min_overlap: float = 0.3, shard_ids: list[str] | None = None,
               pca_statistics: list[str] | None = None) -> str:
    """Fit a new version on ``shard_ids`` (default all), inherit stable ids from the previous one; returns its id."""
    model = refit_with_lineage(open_store(store), extractor_key, recipe=recipe, extract=extract,
                               previous_model_id=previous_model_id, min_overlap=min_overlap, shard_ids=shard_ids,
                               pca_statistics=pca_statistics)
    lineage = model.meta["lineage"]
    get_run_logger().info("model %s: %d clusters, %d inherited ids, %d new, %d retired", model.model_id,
                          model.n_clusters, len(lineage["matched"]), len(lineage["new_ids"]),
                          len(lineage["retired"]))
    return model.model_id
