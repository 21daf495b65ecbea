"""Flow: fit a model version on stored features, label every shard, evaluate, promote."""
from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows._gather import gather
from imgclust.config import ClusterConfig, ExtractConfig, ReduceConfig
from tasks.cluster import evaluate_task, fit_model_task, label_shard_task, promote_task
from tasks.extract import done_shards_task, extractor_key_task


def run_build(store: str, extractor_key: str, reduce: ReduceConfig, cluster: ClusterConfig, *,
              truth: str = "none", date: dt.date | None = None, promote: bool = True) -> dict[str, Any]:
    """Compose: fit -> label shards on Dask -> evaluate -> promote -> artifacts."""
    date = date or dt.datetime.now(dt.timezone.utc).date()
    shard_ids = done_shards_task(store, extractor_key)
    model_id = fit_model_task(store, extractor_key, reduce, cluster, shard_ids)
    labeled = gather(label_shard_task.map(store, unmapped(model_id), unmapped(extractor_key), shard_ids,
                                          unmapped(date)), "label")
    metrics = evaluate_task(store, model_id, extractor_key, truth)
    if promote:
        promote_task(store, model_id)
    sizes = metrics.get("cluster_sizes", {})
    create_table_artifact(key="cluster-sizes", table=[{"cluster_id": c, "images": n} for c, n in sizes.items()],
                          description=f"Cluster sizes of model {model_id}")
    scalar = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    create_markdown_artifact(key="build-summary", markdown=_summary_md(model_id, scalar, promote),
                             description="Model build summary")
    return {"model_id": model_id, "labeled": sum(r["n"] for r in labeled), "metrics": metrics,
            "promoted": promote}


def _summary_md(model_id: str, metrics: dict[str, Any], promoted: bool) -> str:
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    return f"# Model {model_id}\n\npromoted: {promoted}\n\n| metric | value |\n|---|---|\n{rows}\n"


@flow(name="build-clusters")
def build_clusters(store: str, extract: ExtractConfig = ExtractConfig(), reduce: ReduceConfig = ReduceConfig(),
                   cluster: ClusterConfig = ClusterConfig(), truth: str = "none", promote: bool = True
                   ) -> dict[str, Any]:
    """Fit reduction + clustering on the features of ``extract``'s backbone and label everything."""
    key = extractor_key_task(extract)
    return run_build(store, key, reduce, cluster, truth=truth, promote=promote)
