"""Reduction tasks: per-shard-group PCA statistics, summed on the Dask workers (exact PCA scale-out)."""
from __future__ import annotations

from prefect import task

from imgclust.config import ReduceConfig
from imgclust.models.model import write_pca_statistics
from tasks._common import open_store, retry_transient


@task(name="pca-statistics", task_run_name="pca-statistics-{shard_ids[0]}", retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=retry_transient)
def pca_statistics_task(store: str, extractor_key: str, shard_ids: list[str], reduce: ReduceConfig) -> str:
    """Scatter statistics (n, mean, D x D scatter) of a group of feature shards; returns their store path.

    The path is a function of the shard group, so a retry or a re-run overwrites the same object.
    """
    return write_pca_statistics(open_store(store), extractor_key, shard_ids, reduce)
