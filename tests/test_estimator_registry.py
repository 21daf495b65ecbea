"""Every estimator the package defines loads by name in a fresh process (a Dask worker that labels with a saved
model imports nothing else first)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def registered_classes() -> set[str]:
    """Names of the classes decorated with ``@register_estimator`` anywhere in ``imgclust/``."""
    names: set[str] = set()
    for path in (ROOT / "imgclust").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(d, "id", getattr(d, "attr", None)) == "register_estimator" for d in node.decorator_list):
                names.add(node.name)
    return names


def test_every_registered_estimator_is_loadable_by_name_in_a_fresh_process() -> None:
    expected = registered_classes()
    assert {"FaissKMeans", "GaussianMixtureClusterer", "NoveltyScorer", "ClusterTree"} <= expected
    out = subprocess.run([sys.executable, "-c", "from imgclust.estimator import list_estimators\n"
                          "print(','.join(list_estimators()))"], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    known = set(out.stdout.strip().split(","))
    assert expected <= known, f"not loadable by name in a fresh process: {sorted(expected - known)}"
