"""Flow: scan a source into the store's manifest."""
from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow

from imgclust.config import IngestConfig
from tasks.ingest import ingest_source


@flow(name="ingest")
def ingest(source: str, store: str, config: IngestConfig = IngestConfig(), date: dt.date | None = None
           ) -> dict[str, Any]:
    """Append the images of ``source`` that the manifest does not hold yet."""
    return ingest_source(source, store, config, date)
