"""Deep refinement tasks: sample training images from the store, train a deep clusterer."""
from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from imgclust.deep.data import sample_store_images, save_training_set
from imgclust.deep.refine import train_deep_from_store
from tasks._common import open_store, retry_transient


@task(name="prepare-training-set", retries=1, retry_condition_fn=retry_transient)
def prepare_training_set_task(store: str, run: str, sample: int | None, size: int, mode: str, seed: int) -> str:
    """Decode a seeded sample of manifest images to ``refine/<run>/train.npz``; returns that path."""
    s = open_store(store)
    ids, images = sample_store_images(s, n=sample, size=size, mode=mode, seed=seed)  # type: ignore[arg-type]
    rel = f"refine/{run}/train.npz"
    save_training_set(s, rel, ids, images)
    get_run_logger().info("training set: %d images %s", len(ids), images.shape[1:])
    return rel


@task(name="train-deep", task_run_name="train-{method}", retries=1, retry_condition_fn=retry_transient)
def train_deep_task(store: str, run: str, train_rel: str, method: str, k: int, epochs: int, max_iter: int,
                    device: str, seed: int, truth: str = "none",
                    options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (resuming from this run's checkpoints after a crash) and save under ``deep/<run>/``; ``options``
    override the method's parameters."""
    result = train_deep_from_store(open_store(store), train_rel, f"deep/{run}", method=method, k=k, epochs=epochs,
                                   max_iter=max_iter, device=device, seed=seed, run=run, truth=truth,
                                   options=options)
    get_run_logger().info("trained %s in %ss; training metrics %s", method, result["train_seconds"],
                          result.get("train_metrics"))
    return result
