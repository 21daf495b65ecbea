"""Import hygiene: the library never pulls in the orchestration stack, and the core sits below imgclust.deep."""
from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import imgclust

PACKAGE = Path(imgclust.__file__).parent
REPO = PACKAGE.parent


def test_importing_every_library_module_pulls_in_neither_prefect_nor_dask() -> None:
    modules = sorted(m.name for m in pkgutil.walk_packages(imgclust.__path__, "imgclust."))
    assert "imgclust.extract.shard" in modules and "imgclust.models.model" in modules
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'prefect_dask', 'dask', 'distributed'))\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imgclust imported orchestration modules: {out.stdout.strip()}"


def _deep_imports(path: Path) -> list[str]:
    """``line: statement`` of every import of imgclust.deep in ``path`` (module level or inside functions,
    ``import_module("imgclust.deep...")`` calls with a literal name included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "imgclust" else [])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        if any(n == "imgclust.deep" or n.startswith("imgclust.deep.") for n in names):
            found.append(f"{getattr(node, 'lineno', 0)}: {ast.unparse(node)}")
    return found


def test_the_core_never_imports_the_deep_package() -> None:
    """imgclust/*.py outside deep/ (backbones/ included) must not import imgclust.deep, not even lazily:
    deep builds on the core, and reaches it through registration hooks (the ``imgclust.backbones`` entry points)."""
    core = [p for p in sorted(PACKAGE.rglob("*.py")) if "deep" not in p.relative_to(PACKAGE).parts[:1]]
    assert PACKAGE / "extract" / "backbones" / "registry.py" in core and PACKAGE / "cluster" / "kmeans_torch.py" in core
    bad = {str(p.relative_to(REPO)): hits for p in core if (hits := _deep_imports(p))}
    assert not bad, f"the core imports imgclust.deep: {bad}"


def test_the_layering_check_sees_function_local_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import os\n\ndef f():\n    from imgclust.deep.backbone import deep_backbone\n"
                     "    import imgclust.deep\n    from imgclust import deep\n    from imgclust.devices import resolve_device\n")
    assert [h.split(":")[0] for h in _deep_imports(probe)] == ["4", "5", "6"]


_FRESH = """
import sys
import numpy as np
import torch
from imgclust.extract.backbones import create_backbone
assert not any(m == "imgclust.deep" or m.startswith("imgclust.deep.") for m in sys.modules), "imported too early"
backbone = create_backbone("deep:" + sys.argv[1])
assert backbone is create_backbone("deep:" + sys.argv[1])  # cached per process
images = np.load(sys.argv[2])
np.save(sys.argv[3], backbone.embed(torch.stack([backbone.preprocess(im) for im in images])))
print(backbone.key())
"""


def test_a_fresh_process_builds_a_deep_backbone_without_importing_imgclust_deep(tmp_path: Path) -> None:
    """A Dask worker only has the extractor string: the ``deep:`` prefix is found through the entry point."""
    from imgclust.deep.methods import create_deep

    images = np.random.default_rng(0).integers(0, 255, size=(48, 16, 16), dtype=np.uint8)
    est = create_deep("convae", k=2, epochs=1, seed=0, device="cpu", augment=False, batch_size=16).fit(images)
    est.save(tmp_path / "deep")
    np.save(tmp_path / "images.npy", images[:6])
    out = subprocess.run([sys.executable, "-c", _FRESH, str(tmp_path / "deep"), str(tmp_path / "images.npy"),
                          str(tmp_path / "feats.npy")], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().startswith("deep-file-")
    np.testing.assert_allclose(np.load(tmp_path / "feats.npy"), est.transform(images[:6]), rtol=1e-4, atol=1e-4)


# ---- flows and tasks compose; the store layout is the library's (imgclust/io/layout.py) ----------------------
_STORE_DIRS = ("manifest", "features", "quarantine", "models", "labels", "near_duplicates", "novelty", "refine",
               "deep", "reports", "scratch", "locks")
_STORE_FILES = ("CURRENT", "model.json", "metrics.json", "gate.json", "candidates.json", "train.npz",
                "cluster_names.csv", "cluster_names_suggested.csv", "labels_vocabulary.txt")
_STORE_IO = ("read_json", "read_bytes", "read_parquet", "write_json", "write_bytes", "write_parquet")


def _store_internals(path: Path) -> list[str]:
    """``line: what`` for each store path literal (a string or f-string piece naming a store folder or file;
    docstrings are documentation and pass) and each store read/write or JSON parse in ``path``."""
    import re

    pattern = re.compile(rf"(^|/)({'|'.join(_STORE_DIRS)})/|(^|/)({'|'.join(map(re.escape, _STORE_FILES))})$")
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    skip = docstrings | {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    found = []
    for node in ast.walk(tree):
        text = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
        elif isinstance(node, ast.JoinedStr):  # f"refine/{run}/train.npz" -> "refine/{}/train.npz"
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        if text is not None and pattern.search(text):
            found.append(f"{node.lineno}: path literal {text!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            if node.func.attr in _STORE_IO or (owner == "json" and node.func.attr in ("load", "loads")):
                found.append(f"{node.lineno}: {ast.unparse(node.func)}(...)")
    return found


def test_flows_and_tasks_build_no_store_path_and_read_no_artifact() -> None:
    """flows/ and tasks/ compose library calls: store paths come from imgclust.io.layout (through the library) and
    stored artifacts are read and parsed by library functions (e.g. imgclust.models.model.n_clusters_of)."""
    sources = sorted((REPO / "flows").glob("*.py")) + sorted((REPO / "tasks").glob("*.py"))
    assert REPO / "flows" / "refine.py" in sources and REPO / "tasks" / "cluster.py" in sources
    bad = {str(p.relative_to(REPO)): hits for p in sources if (hits := _store_internals(p))}
    assert not bad, f"store internals outside the library (use imgclust.io.layout / library functions): {bad}"


def test_the_store_internals_check_sees_literals_fstrings_and_reads(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('"""Writes models/<id>/gate.json (a docstring passes)."""\nimport json\n\n\n'
                     "def f(s, run, m):\n    '''reports/<run>/ documented'''\n    s.uri('models/CURRENT')\n"
                     '    rel = f"refine/{run}/train.npz"\n    s.read_json(rel)\n    json.loads("{}")\n'
                     '    return {"quarantined": 0, "deep_uri": f"deep:{run}", "x": f"{run}/labels/{m}"}\n')
    assert sorted(int(h.split(":")[0]) for h in _store_internals(probe)) == [7, 8, 9, 10, 11]


def test_importing_the_backfill_flow_does_not_import_torch() -> None:
    """Serving, deploying or rendering the backfill form imports the flow: its backbone choice is a static list."""
    code = "import sys, flows.backfill\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", f"importing flows.backfill imported {out.stdout.strip()}"


def test_the_backfill_backbone_choice_is_the_registry() -> None:
    """imgclust.config.BUILTIN_BACKBONES (torch-free, for the run form) names exactly what a fresh process's
    backbone registry holds."""
    from imgclust.config import BUILTIN_BACKBONES, BackfillParams

    code = "from imgclust.extract.backbones import list_backbones\nprint(','.join(list_backbones()))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert sorted(BUILTIN_BACKBONES) == out.stdout.strip().split(","), "update imgclust.config.BUILTIN_BACKBONES"
    assert BackfillParams.model_fields["extractor"].annotation is not None
