"""Train a deep clusterer on images sampled from the store (the body of the refine flow's training task)."""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Literal

from imgclust.deep.data import load_training_set, sample_store_images, save_training_set
from imgclust.deep.methods import create_deep
from imgclust.io import layout as layout
from imgclust.io.manifest import read_manifest
from imgclust.io.sources import parent_name
from imgclust.io.store import Store
from imgclust.metrics import supervised_metrics

log = logging.getLogger(__name__)


def checkpoint_dir_for(store: Store, run: str) -> str:
    """Local checkpoints: inside a local store, else under ``$IMGCLUST_HOME/checkpoints`` (object stores
    cannot rename atomically; a retry on the same host resumes from there)."""
    if store.is_local:
        return store.path(layout.refine_checkpoints(run))
    return os.path.join(os.environ.get("IMGCLUST_HOME", ".imgclust"), "checkpoints", run)


def prepare_training_set(store: Store, run: str, *, sample: int | None, size: int, mode: Literal["L", "RGB"],
                         seed: int) -> tuple[str, int, tuple[int, ...]]:
    """Decode a seeded sample of up to ``sample`` manifest images (None: all) to ``size`` px in ``mode`` and save
    it as the run's training set; returns ``(store path, images, shape of one image)``."""
    ids, images = sample_store_images(store, n=sample, size=size, mode=mode, seed=seed)
    rel = layout.training_set_path(run)
    save_training_set(store, rel, ids, images)
    return rel, len(ids), tuple(images.shape[1:])


def train_deep_from_store(store: Store, train_rel: str, *, method: str, k: int | Literal["auto"], epochs: int,
                          max_iter: int, device: str, seed: int, run: str, truth: str = "none",
                          options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit ``method`` (its parameters overridden by ``options``, as :func:`create_deep`'s ``extra``) on the saved
    training sample, save the estimator in the run's deep-model folder (``deep_uri`` in the summary; the
    ``deep:<uri>`` extractor), return a summary (``k``: the number of clusters it trained with, the choice
    when ``k="auto"``, whose sweep is ``k_sweep``).

    With ``truth == "parent_dir"`` the summary has ACC/NMI/ARI of the training labels against folder
    names (for monitoring; never used to choose parameters).
    """
    ids, images = load_training_set(store, train_rel)
    est = create_deep(method, k=k, epochs=epochs, max_iter=max_iter, seed=seed, device=device,
                      checkpoint_dir=checkpoint_dir_for(store, run), **(options or {}))
    out_rel = layout.deep_model_dir(run)
    t0 = time.perf_counter()
    est.fit(images)
    seconds = time.perf_counter() - t0
    est.save(store.path(out_rel), fs=store.fs)
    out: dict[str, Any] = {"method": method, "n_train": len(ids), "train_seconds": round(seconds, 1),
                           "deep_uri": store.uri(out_rel), "history": getattr(est, "history_", [])[-5:],
                           "k": int(getattr(est, "n_clusters_", k))}
    sweep = getattr(est, "k_sweep_", None)
    if sweep is not None:
        out["k_sweep"] = sweep
    if truth == "parent_dir":
        manifest = read_manifest(store, columns=["image_id", "uri"])
        uri_of = dict(zip(manifest.column("image_id").to_pylist(), manifest.column("uri").to_pylist(), strict=True))
        out["train_metrics"] = supervised_metrics([parent_name(uri_of[i]) for i in ids], est.labels_)
    log.info("trained %s on %d images in %.0fs: %s", method, len(ids), seconds, out.get("train_metrics", ""))
    return out
