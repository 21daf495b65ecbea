"""Prefect events the flows emit, named once for the flows that emit them and the triggers that match them."""
from __future__ import annotations

import hashlib
from typing import Any

from prefect.events import emit_event

NOVELTY_EVENT = "imgclust.novelty.high"
"""Emitted by the nightly auto-label run when the night's novel count passes its calibrated limit, its scores sit
above the calibration scores as a whole, or its novel images form a candidate new cluster
(:mod:`imgclust.models.novelty_night`)."""
STORE_LABEL = "imgclust.store"
"""Resource label holding the store URL exactly as the flow was given it, so a trigger can match one store."""


def store_resource(store: str, model_id: str) -> dict[str, str]:
    """The event resource of a store: ``imgclust.store.<hash>`` with the store URL and model id as labels."""
    token = hashlib.sha256(store.encode()).hexdigest()[:16]
    return {"prefect.resource.id": f"imgclust.store.{token}", STORE_LABEL: store, "imgclust.model_id": model_id}


def emit_novelty(store: str, model_id: str, payload: dict[str, Any]) -> None:
    """Emit :data:`NOVELTY_EVENT` for ``store`` (the novelty automation of ``recluster/weekly`` acts on it)."""
    emit_event(event=NOVELTY_EVENT, resource=store_resource(store, model_id), payload=payload)
