"""Training images for the deep methods, sampled from the store's manifest.

Images are decoded with the same code as extraction (:func:`imgclust.extract.images.decode_image`) and
resized (squash) to ``size x size``; undecodable ones are skipped and counted (they are already
quarantined by extraction).
"""
from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
from PIL import Image

from imgclust.exceptions import ConfigError, ImageDecodeError, StoreError
from imgclust.extract.images import decode_image
from imgclust.io.manifest import read_manifest
from imgclust.io.sources import read_uri
from imgclust.io.store import Store

log = logging.getLogger(__name__)


def _load(uri: str, size: int, mode: str, storage_options: dict[str, Any] | None) -> np.ndarray | None:
    try:
        arr = decode_image(read_uri(uri, storage_options), mode=mode)  # type: ignore[arg-type]
    except (ImageDecodeError, OSError) as err:
        log.debug("skipping %s: %s", uri, err)
        return None
    if arr.shape[:2] != (size, size):
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))
    return arr


def sample_store_images(store: Store, *, n: int | None, size: int = 28, mode: Literal["L", "RGB"] = "L",
                        seed: int = 0, threads: int = 8, storage_options: dict[str, Any] | None = None
                        ) -> tuple[list[str], np.ndarray]:
    """A seeded sample of at most ``n`` manifest images: ``(image_ids, uint8 (m, size, size[, 3]))``."""
    if size < 8:
        raise ConfigError(f"image size {size} is too small for the conv networks; use >= 8")
    manifest = read_manifest(store, columns=["image_id", "uri"])
    if manifest.num_rows == 0:
        raise StoreError(f"the manifest in {store.url} is empty; ingest images first")
    idx = np.arange(manifest.num_rows)
    if n is not None and n < manifest.num_rows:
        idx = np.sort(np.random.default_rng(seed).choice(manifest.num_rows, size=n, replace=False))
    ids = manifest.column("image_id").take(idx).to_pylist()
    uris = manifest.column("uri").take(idx).to_pylist()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        loaded = list(pool.map(lambda u: _load(u, size, mode, storage_options), uris))
    keep = [i for i, a in enumerate(loaded) if a is not None]
    if not keep:
        raise StoreError(f"none of the {len(uris)} sampled images in {store.url} could be decoded")
    log.info("loaded %d training images (%d undecodable skipped) at %dx%d %s", len(keep), len(uris) - len(keep),
             size, size, mode)
    return [ids[i] for i in keep], np.stack([a for a in loaded if a is not None])


def save_training_set(store: Store, rel: str, ids: list[str], images: np.ndarray) -> None:
    """Write the sample as one ``.npz`` object (ids + uint8 images), atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, ids=np.asarray(ids), images=images)
    store.write_bytes(rel, buf.getvalue())


def load_training_set(store: Store, rel: str) -> tuple[list[str], np.ndarray]:
    data = np.load(io.BytesIO(store.read_bytes(rel)), allow_pickle=False)
    return data["ids"].tolist(), data["images"]
