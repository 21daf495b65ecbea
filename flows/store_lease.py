"""One writer at a time per store: the lease the flows that ingest, label or promote hold while they work.

The nightly auto-label run, recluster, refine, backfill and the pipeline all write labels of a model and may
change ``models/CURRENT``. If a recluster promoted a model while a nightly run was labelling new images with
the previous one, the new CURRENT model would never label that night's images. So each of those flows holds
the store lease ``locks/writer.json`` (:class:`imgclust.io.lock.StoreLease`, renewed while held) for its
whole body; another one waits up to ``wait`` seconds for it, then fails with ``LeaseHeldError`` naming the
holder, before touching the store.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from imgclust.io.lock import StoreLease
from tasks._common import open_store

WRITER_LEASE = "writer"
DEFAULT_LOCK_WAIT_SECONDS = 3600.0
"""How long a flow waits for another writer by default: longer than a recluster of a large store takes, so a
scheduled run that collides with another waits for it instead of failing."""
DEFAULT_LOCK_TTL_SECONDS = 600.0


@contextlib.contextmanager
def store_writer(store: str, *, wait: float = DEFAULT_LOCK_WAIT_SECONDS,
                 ttl: float = DEFAULT_LOCK_TTL_SECONDS) -> Iterator[StoreLease]:
    """Hold the writer lease of ``store`` (see the module docstring)."""
    with StoreLease(open_store(store), WRITER_LEASE, ttl=ttl, wait=wait) as lease:
        yield lease
