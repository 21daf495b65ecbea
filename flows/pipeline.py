"""Flow: the whole job once: ingest -> extract -> fit + label -> evaluate -> promote."""
from __future__ import annotations

import time
from typing import Any

from prefect import flow

from flows.build_clusters import run_build
from flows.extract_features import run_extraction
from flows.runtime import default_task_runner
from flows.store_lease import store_writer
from imgclust.config import PipelineConfig
from tasks.ingest import check_corpus_size_task, ingest_source


@flow(name="pipeline", task_runner=default_task_runner())
def pipeline(config: PipelineConfig) -> dict[str, Any]:
    """Ingest ``config.source`` into ``config.store``, extract every shard, cluster, label, evaluate."""
    t0 = time.perf_counter()
    with store_writer(config.store):  # one writer per store (flows/store_lease.py)
        ingested = ingest_source(config.source, config.store, config.ingest, config.date)
        check_corpus_size_task(config.store, config.cluster)  # fewer images than clusters: refused before extraction
        extraction = run_extraction(config.store, config.extract)
        build = run_build(config.store, config.extract, extraction["extractor_key"], config.reduce,
                          config.cluster, truth=config.truth)
    return {"ingest": ingested, "extraction": {k: v for k, v in extraction.items() if k != "shard_ids"},
            "build": build, "seconds": round(time.perf_counter() - t0, 2), "store": config.store}
