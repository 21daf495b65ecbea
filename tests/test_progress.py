"""Long steps say how far they are: throttled progress lines (stage, done/total, elapsed) in the library's log,
and those lines reach the terminal and the Prefect run logs from the flow process and from the Dask workers."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_images import gray_array, png_bytes, write

from imgclust.config import ClusterConfig, Recipe, ReduceConfig
from imgclust.models.model import fit_model
from imgclust.progress import Progress, timed, tracked

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("imgclust.test_progress")


class _Clock:
    """A clock the test moves by hand (the throttle is the thing under test)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_progress_is_throttled_and_ends_with_the_total(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    with caplog.at_level(logging.INFO, logger=log.name):
        p = Progress("pass", 1000, log, unit="rows", every=10.0, clock=clock).start()
        for _ in range(10):  # 100 rows per 3 s: a line at 12 s and at 24 s, not one per block
            clock.now += 3.0
            p.advance(100)
        p.finish()
    assert _lines(caplog) == ["pass: started (1000 rows)",
                              "pass: 400/1000 rows (40%), 12.0 s, ~18 s left",
                              "pass: 800/1000 rows (80%), 24.0 s, ~6 s left",
                              "pass: done 1000/1000 rows (100%) in 30.0 s"]


def test_units_of_work_each_get_a_line_and_failures_no_end_line(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    with caplog.at_level(logging.INFO, logger=log.name):
        with Progress("EM runs", 3, log, unit="runs", every=0, clock=clock) as p:
            for _ in range(3):
                clock.now += 2.0
                p.advance(detail="7 iterations")
        with pytest.raises(RuntimeError), timed("UMAP fit", log, "10 rows"):
            raise RuntimeError("boom")
    assert _lines(caplog) == ["EM runs: started (3 runs)", "EM runs: 1/3 runs (33%), 2.0 s, ~4 s left; 7 iterations",
                              "EM runs: 2/3 runs (67%), 4.0 s, ~2 s left; 7 iterations",
                              "EM runs: done 3/3 runs (100%) in 6.0 s", "UMAP fit: started (10 rows)"]


def test_tracked_source_reports_each_full_pass(caplog: pytest.LogCaptureFixture) -> None:
    X = np.zeros((10, 2), np.float32)
    source = tracked(lambda: iter([X, X, X]), "fit: pass", 30, log)
    with caplog.at_level(logging.INFO, logger=log.name):
        assert sum(b.shape[0] for b in source()) == 30
        next(iter(source()))  # a consumer that stops early: no end line for that pass
    lines = _lines(caplog)
    assert lines[0] == "fit: pass: started (30 rows)" and re.fullmatch(r"fit: pass: done 30/30 rows \(100%\) in "
                                                                       r"\d+\.\d s", lines[1])
    assert lines[2:] == ["fit: pass: started (30 rows)"]


def test_gmm_consensus_with_umap_logs_every_stage_with_done_over_total(caplog: pytest.LogCaptureFixture) -> None:
    """The demo's pixel recipe on a few hundred rows: IPCA -> UMAP -> GMM consensus of 4 EM runs."""
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 6, (3, 40))
    X = (centres[rng.integers(0, 3, 300)] + rng.normal(0, 1, (300, 40))).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="imgclust"):
        model = fit_model(lambda: iter([X[:150], X[150:]]), extractor_key="k",
                          recipe=Recipe(reduce=ReduceConfig(n_components=10, umap_components=3),
                                        cluster=ClusterConfig(method="gmm", k=3, consensus_runs=4, seed=2)))
    assert model.n_clusters == 3
    text = "\n".join(_lines(caplog))
    for expected in (r"fit: IncrementalPCA pass: started \(300 rows\)",
                     r"fit: IncrementalPCA pass: done 300/300 rows \(100%\) in \d+\.\d s",
                     r"fit: UMAP sample pass: done 300/300 rows",
                     r"UMAP fit: started \(300 rows x 10 dims -> 3 dims, 15 neighbours\)",
                     r"UMAP fit: finished in \d+\.\d s",
                     r"fit: clustering sample pass \(UMAP transform\): done 300/300 rows",
                     r"GMM consensus: EM runs: started \(4 runs\)",
                     r"GMM consensus: EM runs: 1/4 runs \(25%\), \d+\.\d s, ~\d+ s left; \d+ iterations",
                     r"GMM consensus: EM runs: 3/4 runs \(75%\)",
                     r"GMM consensus: EM runs: done 4/4 runs \(100%\) in \d+\.\d s",
                     r"consensus: co-association: finished in", r"consensus: average-linkage tree: finished in",
                     r"consensus: cut: finished in"):
        assert re.search(expected, text), f"no line matching {expected!r} in:\n{text}"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "capped" in r.getMessage()]


def test_kmeans_restarts_and_scan_epochs_report_progress(caplog: pytest.LogCaptureFixture) -> None:
    X = np.random.default_rng(1).normal(size=(200, 6)).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="imgclust"):
        fit_model(lambda: iter([X]), extractor_key="k", recipe=Recipe(reduce=ReduceConfig(n_components=4),
                                                                      cluster=ClusterConfig(k=3, n_redo=3)))
        fit_model(lambda: iter([X]), extractor_key="k", recipe=Recipe(reduce=ReduceConfig(n_components=4),
                                                                      cluster=ClusterConfig(method="scan", k=3)))
    text = "\n".join(_lines(caplog))
    assert re.search(r"k-means restarts \(k=3, 200 rows\): 1/3 runs", text), text
    assert re.search(r"k-means restarts \(k=3, 200 rows\): done 3/3 runs", text), text
    assert re.search(r"SCAN training \(200 rows, 10 heads\): started \(200 epochs\)", text), text
    assert re.search(r"SCAN training \(200 rows, 10 heads\): done 200/200 epochs", text), text


@pytest.mark.integration
def test_library_logs_reach_the_prefect_run_logs_from_flow_process_and_workers(tmp_path: Path, prefect_api: str
                                                                               ) -> None:
    """`imgclust run` as deployed (its own process and Dask worker), reporting to the test harness's API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    for i in range(12):
        write(tmp_path / "src" / f"img_{i:02d}.png", png_bytes(gray_array(i)))
    write(tmp_path / "src" / "broken.jpg", b"not an image")
    store = tmp_path / "store"
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "IMGCLUST_HOME": str(tmp_path / "home")}
    env.pop("PREFECT_LOGGING_EXTRA_LOGGERS", None)  # what the CLI sets for itself is under test
    proc = subprocess.run([sys.executable, "-m", "imgclust_cli.main", "run", str(tmp_path / "src"), "--store",
                           str(store), "--workers", "1", "--k", "3", "--pca", "5"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    terminal = proc.stdout + proc.stderr
    assert re.search(r"imgclust\.extract\.shard - shard \S+: 12 features, 1 quarantined", terminal), terminal[-5000:]
    assert "fit: IncrementalPCA pass: done 12/12 rows" in terminal

    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["pipeline"])),
                                                 sort=FlowRunSort.START_TIME_DESC, limit=50)
                if r.parameters.get("config", {}).get("store") == str(store)]
        assert len(runs) == 1
        logs = []
        while batch := client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[runs[0].id])),
                                        limit=200, offset=len(logs)):
            logs += batch
    lib = [(g.name, g.message, g.task_run_id) for g in logs if g.name.startswith("imgclust")]
    flow_process = [m for n, m, _ in lib if n == "imgclust.models.model"]
    assert any("fit: IncrementalPCA pass: done 12/12 rows" in m for m in flow_process), lib
    worker = [(m, t) for n, m, t in lib if n == "imgclust.extract.shard"]
    assert any(re.search(r"shard \S+: 12 features, 1 quarantined", m) and t is not None for m, t in worker), lib
