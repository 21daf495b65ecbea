"""Extract one feature shard: read image bytes, decode in threads, embed in batches, write atomically.

Decoding runs ``decode_threads`` ahead of the model (PIL releases the GIL while decoding), so on a
CPU the forward pass and the decode overlap. Every input row ends in exactly one of the feature
shard or the quarantine shard; the done-marker (written last) records the counts and a fingerprint
of everything that determines the output, so a re-run skips finished shards and redoes stale ones.
"""
from __future__ import annotations

import collections
import datetime as dt
import fnmatch
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from imgclust.config import ExtractConfig
from imgclust.devices import resolve_device_name
from imgclust.exceptions import ConfigError, ImageDecodeError
from imgclust.extract.backbones import Backbone, create_backbone
from imgclust.io.features import (
    QUARANTINE_SCHEMA,
    DoneMarker,
    embeddings_table,
    feature_path,
    marker_path,
    quarantine_path,
    read_marker,
)
from imgclust.io.manifest import ShardSpec, read_shard_rows
from imgclust.io.sources import read_uri
from imgclust.io.store import Store
from imgclust.progress import Progress

log = logging.getLogger(__name__)


# Test-only fault hook (tests/flows/test_faults.py). Unset in production: one dict lookup per shard.
# JSON {"action": "kill" | "sleep", "shard": <fnmatch pattern>, "once": <marker file, optional>,
# "seconds": <for sleep>}. "kill" SIGKILLs the worker process after the shard's first batch is embedded
# (mid-shard, nothing written yet); "once" makes it fire only where that file can still be created.
FAULT_ENV = "IMGCLUST_TEST_FAULT"


def _test_fault(shard_id: str) -> None:
    """Inject the fault ``$IMGCLUST_TEST_FAULT`` describes into this shard (no-op when unset)."""
    raw = os.environ.get(FAULT_ENV)
    if not raw:
        return
    fault = json.loads(raw)
    if not fnmatch.fnmatchcase(shard_id, fault["shard"]):
        return
    if fault.get("once"):
        try:
            os.close(os.open(fault["once"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    log.warning("test fault %s injected into shard %s (pid %d)", fault["action"], shard_id, os.getpid())
    if fault["action"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault["action"] == "sleep":
        time.sleep(float(fault["seconds"]))
    else:
        raise ConfigError(f"{FAULT_ENV}: unknown action {fault['action']!r} (kill or sleep)")


def backbone_for(config: ExtractConfig) -> Backbone:
    """The (per-process cached) backbone an ExtractConfig names."""
    return create_backbone(config.extractor, weights=config.weights, device=resolve_device_name(config.device),
                           seed=config.seed)


def decodes_on_device(backbone: Backbone, config: ExtractConfig) -> bool:
    """Whether this shard's images are decoded/resized on the backbone's device (imgclust.extract.gpu_pipeline)."""
    if config.decode_on == "auto":
        return backbone.device.type == "cuda"
    return config.decode_on == "device"


def shard_fingerprint(backbone: Backbone, spec: ShardSpec, config: ExtractConfig) -> str:
    """Everything that determines a shard's content; a marker with another fingerprint is stale.

    The decode path is part of it: the device path resizes with torch's antialiased bilinear kernel
    instead of PIL's (values differ by ~0.01 in normalised units), and the CPU path decodes large JPEGs
    at reduced scale (``decode_image(target_side=...)``), so stores never mix either with the other or
    with shards extracted before reduced decoding (whose markers had no ``decode`` entry)."""
    payload: dict[str, Any] = {"backbone": backbone.fingerprint(), "shard": spec.as_dict(),
                               "max_pixels": config.max_pixels,
                               "decode": "device" if decodes_on_device(backbone, config) else "cpu-reduced"}
    blob = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _load(backbone: Backbone, image_id: str, uri: str, max_pixels: int,
          storage_options: dict[str, Any] | None) -> torch.Tensor:
    # rows with an ``unreadable-`` id failed to read at ingest; this second read either works or
    # raises OSError, which quarantines the row with its reason.
    return backbone.decode(read_uri(uri, storage_options), max_pixels=max_pixels)


def _ahead(rows: pa.Table, config: ExtractConfig, work: Callable[[str, str], Any]
           ) -> Iterator[tuple[str, str, Any, str, str]]:
    """Run ``work(image_id, uri)`` for every row in ``config.decode_threads`` threads, a window ahead;
    yield ``(image_id, uri, result or None, error_kind, message)`` in input order (see :func:`_result`)."""
    ids, uris = rows.column("image_id").to_pylist(), rows.column("uri").to_pylist()
    window = max(2 * config.batch_size, 4 * config.decode_threads)
    with ThreadPoolExecutor(max_workers=config.decode_threads, thread_name_prefix="decode") as pool:
        pending: collections.deque[tuple[str, str, Future[Any]]] = collections.deque()
        for image_id, uri in zip(ids, uris, strict=True):
            pending.append((image_id, uri, pool.submit(work, image_id, uri)))
            if len(pending) >= window:
                yield _result(*pending.popleft())
        while pending:
            yield _result(*pending.popleft())


def _decoded(backbone: Backbone, rows: pa.Table, config: ExtractConfig, storage_options: dict[str, Any] | None,
             ) -> Iterator[tuple[str, str, torch.Tensor | None, str, str]]:
    """Yield ``(image_id, uri, tensor or None, error_kind, message)`` in input order, decoding ahead."""
    return _ahead(rows, config, lambda image_id, uri: _load(backbone, image_id, uri, config.max_pixels,
                                                             storage_options))


def _read_ahead(rows: pa.Table, config: ExtractConfig, storage_options: dict[str, Any] | None
                ) -> Iterator[tuple[str, str, bytes | None, str, str]]:
    """Yield ``(image_id, uri, bytes or None, error_kind, message)`` in input order, reading ahead in threads."""
    return _ahead(rows, config, lambda image_id, uri: read_uri(uri, storage_options))


def _decoded_on_device(backbone: Backbone, rows: pa.Table, config: ExtractConfig,
                       storage_options: dict[str, Any] | None) -> Iterator[tuple[str, str, torch.Tensor | None, str, str]]:
    """As :func:`_decoded`, with JPEGs decoded in batches by nvJPEG and every image resized/normalised on
    the backbone's device (:mod:`imgclust.extract.gpu_pipeline`); yields ``(C, S, S)`` tensors on that device."""
    from imgclust.extract.gpu_pipeline import decode_batch, preprocess_on_device

    def flush(group: list[tuple[str, str, bytes]]) -> Iterator[tuple[str, str, torch.Tensor | None, str, str]]:
        dec = decode_batch([d for _, _, d in group], backbone.preprocessing.mode, backbone.device,
                           max_pixels=config.max_pixels)
        ok = sorted(dec.images)
        tensors = dict(zip(ok, preprocess_on_device([dec.images[i] for i in ok], backbone.preprocessing)
                           if ok else [], strict=True))
        for i, (image_id, uri, _) in enumerate(group):
            if i in tensors:
                yield image_id, uri, tensors[i], "", ""
            else:
                yield image_id, uri, None, dec.errors[i].kind, dec.errors[i].message

    group: list[tuple[str, str, bytes]] = []
    for image_id, uri, data, kind, message in _read_ahead(rows, config, storage_options):
        if data is None:
            yield image_id, uri, None, kind, message
            continue
        group.append((image_id, uri, data))
        if len(group) >= config.batch_size:
            yield from flush(group)
            group = []
    if group:
        yield from flush(group)


def _result(image_id: str, uri: str, fut: Future[Any]) -> tuple[str, str, Any, str, str]:
    try:
        return image_id, uri, fut.result(), "", ""
    except ImageDecodeError as err:
        return image_id, uri, None, err.kind, err.message
    except FileNotFoundError as err:
        return image_id, uri, None, "missing", f"file no longer exists: {err}"
    except OSError as err:
        return image_id, uri, None, "io_error", f"{type(err).__name__}: {err}"
    except Exception as err:  # a preprocessing bug must not kill the shard; it is recorded with its type
        log.exception("unexpected error preparing %s", uri)
        return image_id, uri, None, "unreadable", f"{type(err).__name__}: {err}"


def extract_shard(store: Store, spec: ShardSpec, config: ExtractConfig, *, force: bool = False,
                  storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``features/<key>/shard-<id>`` (+ quarantine) for one shard and return its marker as a dict.

    Skips the shard when its done-marker carries the same fingerprint (unless ``force``).
    """
    backbone = backbone_for(config)
    key = backbone.key()
    fp = shard_fingerprint(backbone, spec, config)
    existing = read_marker(store, key, spec.shard_id)
    if existing is not None and existing.fingerprint == fp and not force:
        log.info("shard %s already done for %s; skipping", spec.shard_id, key)
        return {**asdict(existing), "skipped": True, "extractor_key": key}
    if existing is not None:
        log.info("redoing shard %s (%s)", spec.shard_id, "forced" if force else "fingerprint changed")
        # the marker goes first: until the new one is written, readers must not pair the old
        # marker's counts with the new files (nor see the shard as done after a crash mid-way)
        store.remove(marker_path(key, spec.shard_id))
    t0 = time.perf_counter()
    rows = read_shard_rows(store, spec)
    ids: list[str] = []
    chunks: list[np.ndarray] = []
    quarantined: list[dict[str, str]] = []
    batch_ids: list[str] = []
    batch: list[torch.Tensor] = []
    t_embed = 0.0

    def flush() -> None:
        nonlocal t_embed
        if not batch:
            return
        t = time.perf_counter()
        chunks.append(backbone.embed(torch.stack(batch)))
        t_embed += time.perf_counter() - t
        ids.extend(batch_ids)
        batch.clear()
        batch_ids.clear()
        if len(chunks) == 1:
            _test_fault(spec.shard_id)

    decoded = (_decoded_on_device if decodes_on_device(backbone, config) else _decoded)(
        backbone, rows, config, storage_options)
    progress = Progress(f"extract shard {spec.shard_id}", rows.num_rows, log, unit="images")  # throttled lines
    for image_id, uri, tensor, kind, message in decoded:
        progress.advance()
        if tensor is None:
            quarantined.append({"image_id": image_id, "uri": uri, "error_kind": kind, "message": message[:1000]})
            continue
        batch.append(tensor)
        batch_ids.append(image_id)
        if len(batch) >= config.batch_size:
            flush()
    flush()
    emb = np.concatenate(chunks) if chunks else np.zeros((0, backbone.dim), np.float32)
    metadata = {**backbone.metadata(), "shard_id": spec.shard_id, "shard_fingerprint": fp,
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat()}
    store.write_parquet(feature_path(key, spec.shard_id), embeddings_table(ids, emb, metadata))
    store.write_parquet(quarantine_path(key, spec.shard_id),
                        pa.Table.from_pylist(quarantined, schema=QUARANTINE_SCHEMA))
    wall = time.perf_counter() - t0
    kinds = collections.Counter(q["error_kind"] for q in quarantined)
    marker = DoneMarker(shard_id=spec.shard_id, fingerprint=fp, n_features=len(ids), n_quarantined=len(quarantined),
                        n_input=rows.num_rows, seconds={"wall": round(wall, 4), "embed": round(t_embed, 4)},
                        error_kinds=dict(kinds))
    if marker.n_features + marker.n_quarantined != marker.n_input:
        raise RuntimeError(f"shard {spec.shard_id}: {marker.n_features}+{marker.n_quarantined} != {marker.n_input}")
    store.write_json(marker_path(key, spec.shard_id), asdict(marker))
    log.info("shard %s: %d features, %d quarantined in %.2fs (%.0f img/s)", spec.shard_id, len(ids),
             len(quarantined), wall, rows.num_rows / max(wall, 1e-9))
    return {**asdict(marker), "skipped": False, "extractor_key": key}
