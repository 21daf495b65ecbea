"""Import hygiene: the library never pulls in the orchestration stack."""
from __future__ import annotations

import pkgutil
import subprocess
import sys

import imgclust


def test_importing_every_library_module_pulls_in_neither_prefect_nor_dask() -> None:
    modules = sorted(m.name for m in pkgutil.walk_packages(imgclust.__path__, "imgclust."))
    assert "imgclust.extract" in modules and "imgclust.model" in modules
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'prefect_dask', 'dask', 'distributed'))\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imgclust imported orchestration modules: {out.stdout.strip()}"
