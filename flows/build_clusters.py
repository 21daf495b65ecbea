"""Flow: fit a model version on stored features, label every shard, evaluate, gate, promote."""
from __future__ import annotations

from typing import Any

from prefect import flow, unmapped

from flows._gather import gather
from flows.artifacts import publish_model_artifacts
from flows.runtime import default_task_runner
from imgclust.config import ClusterConfig, ExtractConfig, Recipe, ReduceConfig
from imgclust.models.promotion import GateConfig
from tasks.cluster import evaluate_task, fit_model_task, gate_and_promote_task, label_shard_task
from tasks.extract import done_shards_task, extractor_key_task
from tasks.reduce import pca_statistics_task

PCA_GROUPS = 32
"""At most this many PCA statistics tasks (each D x D float64 on the store) per fit."""


def label_all(store: str, model_id: str, extractor_key: str, shard_ids: list[str], *, force: bool = True,
              novelty_rate: float | None = None) -> list[dict[str, Any]]:
    """Compose: label the given feature shards on the Dask workers."""
    futures = label_shard_task.map(store, unmapped(model_id), unmapped(extractor_key), shard_ids, unmapped(force),
                                   unmapped(novelty_rate))
    return gather(futures, "label")


def pca_statistics(store: str, extractor_key: str, shard_ids: list[str], reduce: ReduceConfig
                   ) -> list[str] | None:
    """Compose: for exact PCA, summarise groups of shards on the Dask workers; None for other reducers."""
    if reduce.method != "pca" or not shard_ids:
        return None
    size = -(-len(shard_ids) // PCA_GROUPS)
    groups = [shard_ids[i:i + size] for i in range(0, len(shard_ids), size)]
    futures = pca_statistics_task.map(store, unmapped(extractor_key), groups, unmapped(reduce))
    return gather(futures, "pca-statistics")


def run_build(store: str, extract: ExtractConfig, extractor_key: str, reduce: ReduceConfig,
              cluster: ClusterConfig, *, truth: str = "none", gate: GateConfig | None = None) -> dict[str, Any]:
    """Compose: fit -> label shards on Dask -> evaluate -> gate + promote -> artifacts."""
    shard_ids = done_shards_task(store, extractor_key)
    stats = pca_statistics(store, extractor_key, shard_ids, reduce)
    recipe = Recipe(reduce=reduce, cluster=cluster)
    model_id = fit_model_task(store, extractor_key, recipe, extract, shard_ids, stats)
    labeled = label_all(store, model_id, extractor_key, shard_ids)
    metrics = evaluate_task(store, model_id, extractor_key, truth)
    decision = gate_and_promote_task(store, model_id, gate or GateConfig())
    publish_model_artifacts(model_id, metrics, decision)
    return {"model_id": model_id, "labeled": sum(r["n"] for r in labeled), "metrics": metrics,
            "promoted": decision["promoted"], "gate": decision}


@flow(name="build-clusters", task_runner=default_task_runner())
def build_clusters(store: str, extract: ExtractConfig = ExtractConfig(), reduce: ReduceConfig = ReduceConfig(),
                   cluster: ClusterConfig = ClusterConfig(), truth: str = "none") -> dict[str, Any]:
    """Fit reduction + clustering on the features of ``extract``'s backbone and label everything."""
    key = extractor_key_task(extract)
    return run_build(store, extract, key, reduce, cluster, truth=truth)
