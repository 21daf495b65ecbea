"""The project installs cleanly: its pyproject.toml uses no metadata form setuptools has deprecated."""
from __future__ import annotations

import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_has_no_deprecated_metadata() -> None:
    """`pip install -e .` printed setuptools' deprecation of ``project.license`` as a TOML table (unsupported
    after 2027-02-18); the SPDX string form does not warn."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), REPO / "pyproject.toml")
    assert [str(w.message).splitlines()[0] for w in caught if "deprecat" in str(w.message).lower()] == []
    assert dist.metadata.license_expression == "Apache-2.0"
