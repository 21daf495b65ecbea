"""Every estimator the package defines loads by name in a fresh process (a Dask worker that labels with a saved
model imports nothing else first)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import registered_classes

ROOT = Path(__file__).resolve().parents[1]


def test_every_registered_estimator_is_loadable_by_name_in_a_fresh_process() -> None:
    expected = registered_classes()
    assert {"FaissKMeans", "GaussianMixtureClusterer", "NoveltyScorer", "ClusterTree"} <= expected
    out = subprocess.run([sys.executable, "-c", "from imgclust.estimator import list_estimators\n"
                          "print(','.join(list_estimators()))"], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    known = set(out.stdout.strip().split(","))
    assert expected <= known, f"not loadable by name in a fresh process: {sorted(expected - known)}"
