"""The README's library example runs as printed, on real PNG files, without Prefect or Dask."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from imgclust.data.datasets import load_digits_images, write_image_folder

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_library_example_runs_on_a_folder_of_pngs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## As a library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "the README lost its library example"
    images, labels = load_digits_images()
    keep = np.flatnonzero(np.isin(labels, (0, 1, 2, 3)))[:80]
    write_image_folder(images[keep], labels[keep], [f"digit{c}" for c in range(10)], tmp_path / "images")
    check = ("\nimport sys\n"
             "assert labels.shape == (len(paths),), labels.shape\n"
             "assert not [m for m in sys.modules if m.split('.')[0] in ('prefect', 'dask', 'distributed')]\n"
             "print('clusters', len(set(labels.tolist())))\n")
    out = subprocess.run([sys.executable, "-c", code.group(1) + check], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split("clusters", 1)[1]) >= 4, out.stdout
