"""Model tasks: fit a model version from stored features, label shards, evaluate, promote."""
from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import get_run_logger, task

from imgclust.config import ClusterConfig, ReduceConfig
from imgclust.labels import evaluate, label_shard
from imgclust.model import fit_from_store, promote
from tasks._common import open_store, retry_transient


@task(name="fit-model", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def fit_model_task(store: str, extractor_key: str, reduce: ReduceConfig, cluster: ClusterConfig,
                   shard_ids: list[str] | None = None) -> str:
    """Fit reducer + clusterer on the stored features; returns the new model id."""
    model = fit_from_store(open_store(store), extractor_key, reduce=reduce, cluster=cluster, shard_ids=shard_ids)
    get_run_logger().info("fitted model %s with %d clusters", model.model_id, model.n_clusters)
    return model.model_id


@task(name="label-shard", task_run_name="label-{shard_id}", retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=retry_transient)
def label_shard_task(store: str, model_id: str, extractor_key: str, shard_id: str, date: dt.date
                     ) -> dict[str, Any]:
    """Write the labels of one feature shard (idempotent: same path, same content)."""
    return label_shard(open_store(store), model_id, extractor_key, shard_id, date=date)


@task(name="evaluate")
def evaluate_task(store: str, model_id: str, extractor_key: str, truth: str = "none") -> dict[str, Any]:
    """Cluster sizes, internal metrics and, with ground truth, ACC/NMI/ARI."""
    return evaluate(open_store(store), model_id, extractor_key, truth=truth)


@task(name="promote")
def promote_task(store: str, model_id: str) -> str:
    """Make ``model_id`` the CURRENT model."""
    promote(open_store(store), model_id)
    get_run_logger().info("promoted %s", model_id)
    return model_id
