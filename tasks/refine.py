"""Deep refinement tasks: sample training images from the store, train a deep clusterer."""
from __future__ import annotations

from typing import Any, Literal

from prefect import get_run_logger, task

from imgclust.deep.refine import prepare_training_set, train_deep_from_store
from tasks._common import open_store, retry_transient


@task(name="prepare-training-set", retries=1, retry_condition_fn=retry_transient)
def prepare_training_set_task(store: str, run: str, sample: int | None, size: int, mode: str, seed: int) -> str:
    """Decode a seeded sample of manifest images to the run's training set; returns its store path."""
    rel, n, shape = prepare_training_set(open_store(store), run, sample=sample, size=size,
                                         mode=mode, seed=seed)  # type: ignore[arg-type]
    get_run_logger().info("training set: %d images %s", n, shape)
    return rel


@task(name="train-deep", task_run_name="train-{method}", retries=1, retry_condition_fn=retry_transient)
def train_deep_task(store: str, run: str, train_rel: str, method: str, k: int | Literal["auto"], epochs: int, max_iter: int,
                    device: str, seed: int, truth: str = "none",
                    options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (resuming from this run's checkpoints after a crash) and save the run's deep model; ``options``
    override the method's parameters."""
    result = train_deep_from_store(open_store(store), train_rel, method=method, k=k, epochs=epochs,
                                   max_iter=max_iter, device=device, seed=seed, run=run, truth=truth,
                                   options=options)
    get_run_logger().info("trained %s (k=%s) in %ss; training metrics %s", method, result["k"],
                          result["train_seconds"], result.get("train_metrics"))
    return result
