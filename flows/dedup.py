"""Flow: near-duplicate groups over every stored image, in the CURRENT model's near-duplicate space by default."""
from __future__ import annotations

from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from imgclust.exceptions import ConfigError
from imgclust.models.dedup import DedupConfig
from tasks.cluster import current_model_task
from tasks.dedup import dedup_task, near_duplicate_space_task


@flow(name="dedup")
def dedup(store: str, threshold: float = DedupConfig.threshold, k: int = DedupConfig.k,
          rule: Literal["representative", "components"] = DedupConfig.rule,
          extractor_key: str | None = None) -> dict[str, Any]:
    """Group near-duplicate images (cosine similarity >= ``threshold`` among each image's ``k`` nearest
    neighbours, grouped by ``rule``: imgclust.models.dedup) and write ``near_duplicates/<extractor_key>/``. Default
    space: the CURRENT model's near-duplicate search space (its own features, or under a ``deep:`` model the
    newest near-duplicate space of the store's model versions:
    :func:`imgclust.models.dedup.near_duplicate_search_space`); ``extractor_key`` names another."""
    DedupConfig(threshold=threshold, k=k, rule=rule)  # bad settings fail before any work
    key = extractor_key
    if key is None:
        space = near_duplicate_space_task(store, current_model_task(store)[0])
        if space.key is None:
            raise ConfigError(space.reason)
        key = space.key
    summary = dedup_task(store, key, threshold, k, rule)
    create_markdown_artifact(key="near-duplicates", description="Near-duplicate groups", markdown=(
        f"# Near-duplicates in `{key}`\n\n| what | value |\n|---|---|\n"
        + "".join(f"| {name} | {summary[name]} |\n" for name in ("rows", "groups", "images_in_groups", "threshold",
                                                                   "k", "rule", "seconds"))))
    return summary
