"""Modules outside the package that extend imgclust (clustering methods, estimators), named in ``IMGCLUST_PLUGINS``.

Each process imports them before a registry lookup that misses: the CLI, served flow runs and Dask workers alike
(export the variable where they start). A plugin module registers what it adds at import, e.g. with
:func:`imgclust.cluster.registry.register_clusterer` and :func:`imgclust.estimator.register_estimator`.
"""
from __future__ import annotations

import importlib
import os

from imgclust.exceptions import ConfigError

__all__ = ["PLUGINS_ENV", "load_plugins"]

PLUGINS_ENV = "IMGCLUST_PLUGINS"
"""Environment variable: comma-separated module names."""

_loaded: set[str] = set()


def load_plugins() -> None:
    """Import the modules named in ``IMGCLUST_PLUGINS`` (once each per process); a module that does not import is a
    :class:`ConfigError` naming it."""
    for name in (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",")):
        if not name or name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"{PLUGINS_ENV} names {name!r}, which does not import ({exc}); fix the module name "
                              "or the Python path of this process") from exc
        _loaded.add(name)
