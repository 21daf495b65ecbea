"""imgclust: cluster and auto-label large image corpora.

The library needs neither Prefect nor Dask (the pipeline's flows compose it). Its most used names are importable
from here, loaded on first use so that ``import imgclust`` stays light::

    from imgclust import Recipe, create_backbone, fit_model
"""
from __future__ import annotations

import importlib
from typing import Any

_API = {
    "ClusterConfig": "imgclust.config",
    "ReduceConfig": "imgclust.config",
    "Recipe": "imgclust.config",
    "create_backbone": "imgclust.extract.backbones",
    "fit_model": "imgclust.models.model",
    "ClusterModel": "imgclust.models.model",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    """Load ``imgclust.<name>`` of :data:`_API` from its module on first use (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module 'imgclust' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value
