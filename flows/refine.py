"""Flow: deep-clustering refinement: train a deep method on store images, use its encoder as the
extractor, refit with stable ids, relabel, and hand the candidate to the promotion gate."""
from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.extract_features import run_extraction
from flows.recluster import run_refit
from flows.runtime import default_task_runner
from flows.store_lease import DEFAULT_LOCK_WAIT_SECONDS, store_writer
from imgclust.config import AUTO_K, RECOMMENDED_REFINE_METHOD, ExtractConfig
from imgclust.deep.methods import AUTO_K_METHODS, DeepMethod, check_deep_options, refit_recipe
from imgclust.models.promotion import GateConfig
from tasks.cluster import cluster_count_task, current_model_task
from tasks.refine import prepare_training_set_task, train_deep_task


@flow(name="refine", task_runner=default_task_runner())
def refine(store: str, method: DeepMethod = RECOMMENDED_REFINE_METHOD,  # type: ignore[assignment]
           k: int | Literal["auto"] = AUTO_K, epochs: int = 20, max_iter: int = 2000,
           sample: int | None = 20000, image_size: int = 28, mode: str = "L", device: str = "auto", seed: int = 0,
           truth: str = "none", gate_metric: str | None = None, gate_tolerance: float = 0.02,
           options: dict[str, Any] | None = None,
           lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS) -> dict[str, Any]:
    """Train ``method`` on up to ``sample`` store images, then extract every image with its encoder
    (``deep:`` extractor), refit the clusterer (k-means; UMAP + GMM consensus for ``n2d`` / ``n2d-scae`` /
    ``n2d-ensemble`` / ``simclr``; SCAN's head with ``options={"clusterer": "scan"}``) with lineage against
    CURRENT, relabel, evaluate, gate. ``options`` override the method's parameters (e.g. ``{"encoder":
    "resnet18"}`` for ``simclr``); they are checked before any work.

    ``k="auto"`` (default): the methods of :data:`~imgclust.deep.methods.AUTO_K_METHODS` choose k while they train
    (DEC, IDEC and NNC where they place their initial centroids, so they fine-tune with that k); the others
    (ASCAE/SCAE, ``n2d-scae``, ``n2d-ensemble``, DeepCluster: k-wide layers or k pseudo-labels) train with CURRENT's
    number of clusters. Either way the refit chooses k again on the new features (:mod:`imgclust.cluster.choose_k`);
    the lineage records the splits and merges.

    The gate compares against CURRENT on ``gate_metric`` (default: NMI with ground truth, else
    silhouette; internal metrics of different feature spaces are only roughly comparable). Training runs
    without the store's writer lease; extraction, refit, relabelling and promotion hold it
    (``flows/store_lease.py``), so a nightly run cannot label with the old model in between.
    """
    logger = get_run_logger()
    gate = GateConfig(metric=gate_metric or ("nmi" if truth == "parent_dir" else "internal_silhouette"),
                      tolerance=gate_tolerance)  # validated before any work
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be L or RGB, got {mode!r}")
    current, _ = current_model_task(store)  # no model yet: a clear error before training
    train_k: int | Literal["auto"] = int(k) if k != AUTO_K else (
        AUTO_K if method in AUTO_K_METHODS else cluster_count_task(store, current))
    check_deep_options(method, train_k, options)
    run = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{method}-{uuid.uuid4().hex[:6]}"
    train_rel = prepare_training_set_task(store, run, sample, image_size, mode, seed)
    trained = train_deep_task(store, run, train_rel, method, train_k, epochs, max_iter, device, seed, truth, options)
    extract = ExtractConfig(extractor=f"deep:{trained['deep_uri']}", batch_size=256,
                            device=device)  # type: ignore[arg-type]
    recipe = refit_recipe(method, k, seed, options)
    with store_writer(store, wait=lock_wait_seconds):
        previous, _ = current_model_task(store)  # CURRENT may have changed while training
        extraction = run_extraction(store, extract)
        result = run_refit(store, extraction["extractor_key"], extract, recipe, previous, truth=truth, gate=gate,
                           trigger=f"refine:{method}")
    create_markdown_artifact(key="refine-summary", markdown=(
        f"# Refine {method} {options or ''}\n\ntrained on {trained['n_train']} images in {trained['train_seconds']} s\n\n"
        f"training metrics: {trained.get('train_metrics')}\n\ncandidate {result['model_id']} promoted: "
        f"{result['promoted']} ({result['gate']['reason']})\n"))
    logger.info("refine %s: candidate %s promoted=%s", method, result["model_id"], result["promoted"])
    return {"run": run, "training": trained, **result}
