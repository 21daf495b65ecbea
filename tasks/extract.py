"""Extraction tasks: plan shards, resolve the extractor key, extract one shard.

:mod:`imgclust.extract.shard` (torch) is imported inside the tasks that run it, so importing a flow (to serve or
deploy it, or to render its parameter form) does not load torch.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import get_run_logger, task

from imgclust.config import ExtractConfig
from imgclust.io.features import done_shards
from imgclust.io.manifest import ShardSpec, list_parts, plan_shards
from tasks._common import open_store, retry_transient


@task(name="plan-shards", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient)
def plan_shards_task(store: str, shard_size: int, start: dt.date | None = None, end: dt.date | None = None,
                     parts: list[str] | None = None) -> list[dict[str, Any]]:
    """Deterministic shard specs (small dicts) over the manifest parts in the date range."""
    specs = plan_shards(open_store(store), shard_size=shard_size, start=start, end=end, parts=parts)
    get_run_logger().info("planned %d shards", len(specs))
    return [s.as_dict() for s in specs]


@task(name="extractor-key")
def extractor_key_task(config: ExtractConfig) -> str:
    """The store key of the configured backbone (validates name and weights before any work)."""
    from imgclust.extract.shard import backbone_for

    return backbone_for(config).key()


@task(name="extract-shard", task_run_name="extract-{spec[shard_id]}", retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=retry_transient)
def extract_shard_task(store: str, spec: dict[str, Any], config: ExtractConfig, force: bool = False
                       ) -> dict[str, Any]:
    """Extract one shard (skipped when its done-marker matches); returns the marker as a dict."""
    from imgclust.extract.shard import extract_shard

    result = extract_shard(open_store(store), ShardSpec(**spec), config, force=force)
    get_run_logger().info("shard %s: %d features, %d quarantined%s", spec["shard_id"], result["n_features"],
                          result["n_quarantined"], " (already done)" if result["skipped"] else "")
    return result


@task(name="done-shards", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient)
def done_shards_task(store: str, extractor_key: str) -> list[str]:
    """Ids of the feature shards of ``extractor_key`` that have a done-marker."""
    return done_shards(open_store(store), extractor_key)


@task(name="list-parts", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient)
def list_parts_task(store: str, start: dt.date | None = None, end: dt.date | None = None) -> list[str]:
    """Manifest part paths dated ``start..end`` (inclusive)."""
    return list_parts(open_store(store), start, end)
