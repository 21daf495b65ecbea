"""Naming tasks: a CLIP model's suggested cluster names (cluster_names_suggested.csv) and their table."""
from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from imgclust.models.naming import NamingConfig, suggest_names, suggestions_table, write_suggestions
from tasks._common import open_store, retry_transient


@task(name="suggest-cluster-names", task_run_name="suggest-cluster-names-{model_id}", retries=1,
      retry_delay_seconds=10, retry_condition_fn=retry_transient)
def suggest_names_task(store: str, model_id: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``cluster_names_suggested.csv`` for ``model_id`` (``config``: :class:`NamingConfig` fields; the
    same inputs write the same file); returns where from, and the rows beside the current names."""
    s = open_store(store)
    result = suggest_names(s, model_id, NamingConfig(**(config or {})))
    path = write_suggestions(s, result)
    get_run_logger().info("%d cluster names suggested by %s (%s): %s", len(result.suggestions), result.backbone,
                          result.source, s.uri(path))
    return {"path": path, "uri": s.uri(path), "backbone": result.backbone, "source": result.source,
            "rows": suggestions_table(s, model_id) or []}


@task(name="suggested-names")
def suggestions_table_task(store: str, model_id: str) -> list[dict[str, Any]]:
    """The suggestions for ``model_id`` beside the current names (empty when there are none for it)."""
    return suggestions_table(open_store(store), model_id) or []
