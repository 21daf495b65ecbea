"""The estimator contract every reducer and clusterer shares, and save/load by class name.

Estimator contract (scikit-learn's)
-----------------------------------
Keyword-only parameters are only stored in ``__init__`` and validated in ``fit``; ``fit`` returns
``self``; learned state ends in ``_``; methods that need a fitted model call
:meth:`Estimator._check_fitted` first. Inputs are arrays or batch sources (:mod:`imgclust.batches`),
checked with :mod:`imgclust.validation`.

Save / load
-----------
:meth:`Estimator.save` writes one directory in the format of :mod:`imgclust.artifacts`;
:func:`load_estimator` reads its manifest's ``class`` and restores that registered class. The builtin
estimator modules register themselves when imported (``_BUILTIN_MODULES``); the torch-backed ones are
imported only when a saved artifact names them (``_LAZY_MODULES``).
"""
from __future__ import annotations

import importlib
import inspect
import io
import json
import logging
import os
import pickle
from datetime import datetime, timezone
from typing import Any, ClassVar, TypeVar

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from imgclust.artifacts import (
    ARRAYS_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    OBJECT_NAME,
    join,
    jsonable,
    read_manifest,
    read_verified,
    resolve,
    versions,
    write_atomic,
)
from imgclust.exceptions import ConfigError, CorruptArtifactError, NotFittedError, UnknownNameError
from imgclust.plugins import load_plugins
from imgclust.validation import check_array

logger = logging.getLogger(__name__)

__all__ = ["Estimator", "register_estimator", "list_estimators", "load_estimator"]

_BUILTIN_MODULES = ("imgclust.reduce.streaming", "imgclust.reduce.pca", "imgclust.cluster.classic", "imgclust.cluster.hierarchy", "imgclust.cluster.gmm",
                    "imgclust.models.novelty")
_LAZY_MODULES = {"TorchKMeans": "imgclust.cluster.kmeans_torch", "ScanClusterer": "imgclust.cluster.scan"}  # imported on first load: torch

E = TypeVar("E", bound="Estimator")


# ----------------------------------------------------------------------------- estimator base

_REGISTRY: dict[str, type[Estimator]] = {}


def register_estimator(cls: type[E]) -> type[E]:
    """Class decorator: make ``cls`` loadable by :func:`load_estimator` under its class name."""
    _REGISTRY[cls.__name__] = cls
    return cls


def list_estimators() -> list[str]:
    """Names of every estimator class :func:`load_estimator` can restore."""
    _import_builtins()
    return sorted({*_REGISTRY, *_LAZY_MODULES})


class Estimator:
    """Base class: parameter introspection, fitted/shape checks and artifact save/load.

    Subclasses declare what to persist with ``_array_attrs`` (numpy arrays, go to ``arrays.npz``),
    ``_meta_attrs`` (JSON scalars) and ``_object_attr`` (one opaque library object that can only
    be pickled), or override :meth:`_get_state` / :meth:`_set_state`.
    """

    _array_attrs: ClassVar[tuple[str, ...]] = ()
    _meta_attrs: ClassVar[tuple[str, ...]] = ("n_features_in_",)
    _object_attr: ClassVar[str | None] = None
    _params_added: ClassVar[dict[str, Any]] = {}
    """Constructor parameters added after artifacts of the class were first written, each with the value a
    model saved without it was trained with (not the new default): :meth:`saved_params` fills them in."""

    n_features_in_: int

    @classmethod
    def saved_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Constructor parameters of a saved artifact's manifest, with :attr:`_params_added` filled in where the
        artifact predates them, so a loaded model reports how it was trained rather than today's defaults."""
        return {**cls._params_added, **params}

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters, as passed (scikit-learn's ``get_params(deep=False)``)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        shown = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if defaults.get(k) != v)
        return f"{type(self).__name__}({shown})"

    def _check_fitted(self, *attrs: str) -> None:
        """Raise :class:`NotFittedError` unless every attribute in ``attrs`` (default: the persisted
        arrays and ``n_features_in_``) is set."""
        needed = attrs or (*self._array_attrs, "n_features_in_")
        if any(getattr(self, a, None) is None for a in needed):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit(...) first")

    def _check_dim(self, X: Any) -> np.ndarray:
        """``X`` as float32 C-contiguous ``(n, D)``; :class:`ConfigError` if ``D`` differs from fit."""
        return check_array(X, n_features=getattr(self, "n_features_in_", None))

    # -- persistence hooks
    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray], Any]:
        meta = {name: jsonable(getattr(self, name)) for name in self._meta_attrs}
        arrays = {name: np.asarray(getattr(self, name)) for name in self._array_attrs}
        obj = getattr(self, self._object_attr) if self._object_attr else None
        return meta, arrays, obj

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray], obj: Any) -> None:
        for name in self._meta_attrs:
            setattr(self, name, meta.get(name))
        for name in self._array_attrs:
            setattr(self, name, arrays[name])
        if self._object_attr:
            setattr(self, self._object_attr, obj)

    # -- save / load
    def save(self, directory: str | os.PathLike[str], fs: fsspec.AbstractFileSystem | None = None) -> None:
        """Write the fitted estimator to ``directory`` (local path or fsspec URL such as ``s3://``).

        Files: ``arrays.npz``, ``object.pkl`` (UMAP/HDBSCAN only), then ``estimator.json`` last.
        Parameters must be JSON values. Overwrites an existing save in place, file by file; the
        sha256 list in ``estimator.json`` makes a mixed directory detectable on load.
        """
        self._check_fitted()
        fs, root = resolve(directory, fs)
        meta, arrays, obj = self._get_state()
        params = self.get_params()
        try:
            json.dumps(params)
        except TypeError as exc:
            raise ConfigError(f"{type(self).__name__} parameters must be JSON values to be saved ({exc}); "
                              "pass plain ints/floats/strings") from exc
        if isinstance(fs, LocalFileSystem):  # object stores have no directories (and s3fs would create a bucket)
            fs.makedirs(root, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=False, **arrays)
        files = {ARRAYS_NAME: write_atomic(fs, join(root, ARRAYS_NAME), buf.getvalue())}
        if obj is not None:
            files[OBJECT_NAME] = write_atomic(fs, join(root, OBJECT_NAME),
                                              pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        doc = {
            "format_version": FORMAT_VERSION,
            "class": type(self).__name__,
            "params": params,
            "meta": meta,
            "arrays": [{"name": k, "dtype": str(v.dtype), "shape": list(v.shape)} for k, v in arrays.items()],
            "files": files,
            "versions": versions(),
            "created_at": datetime.now(timezone.utc).isoformat(),
        }
        write_atomic(fs, join(root, MANIFEST_NAME), json.dumps(doc, indent=2, sort_keys=True).encode())
        logger.info("saved %s to %s", type(self).__name__, root)

    @classmethod
    def load(cls: type[E], directory: str | os.PathLike[str], fs: fsspec.AbstractFileSystem | None = None) -> E:
        """Restore an estimator written by :meth:`save`, verifying every file's sha256 first.

        ``Estimator.load`` dispatches on the saved class name; ``SomeClass.load`` requires it.
        Raises :class:`CorruptArtifactError` for a missing, half-written or modified directory.
        """
        fs, root = resolve(directory, fs)
        doc = read_manifest(fs, root)
        name = doc["class"]
        if cls is Estimator:
            _import_builtins()
            if name not in _REGISTRY and name in _LAZY_MODULES:
                importlib.import_module(_LAZY_MODULES[name])
            if name not in _REGISTRY:
                load_plugins()  # a method added by a module named in IMGCLUST_PLUGINS
            if name not in _REGISTRY:
                raise UnknownNameError(f"{root} holds a {name!r}, which is not a registered estimator; "
                                       f"known: {sorted(_REGISTRY)}")
            target: type[Estimator] = _REGISTRY[name]
        elif name != cls.__name__:
            raise ConfigError(f"{root} holds a {name}, not a {cls.__name__}; use load_estimator(...) "
                              f"or {name}.load(...)")
        else:
            target = cls
        try:
            est = target(**target.saved_params(doc["params"]))
        except TypeError as exc:
            raise CorruptArtifactError(f"{join(root, MANIFEST_NAME)}: saved params do not match "
                                       f"{name}'s signature ({exc}); it was written by another version "
                                       f"({doc.get('versions')}); refit and save again") from exc
        files = doc["files"]
        npz = np.load(io.BytesIO(read_verified(fs, root, ARRAYS_NAME, files)), allow_pickle=False)
        arrays: dict[str, np.ndarray] = {}
        for spec in doc["arrays"]:
            key = spec["name"]
            if key not in npz.files:
                raise CorruptArtifactError(f"{join(root, ARRAYS_NAME)} lacks array {key!r}; save again")
            arr = npz[key]
            if str(arr.dtype) != spec["dtype"] or list(arr.shape) != spec["shape"]:
                raise CorruptArtifactError(f"{join(root, ARRAYS_NAME)}: array {key!r} is {arr.dtype}"
                                           f"{arr.shape}, the manifest says {spec['dtype']}{tuple(spec['shape'])}")
            arrays[key] = arr
        obj = None
        if OBJECT_NAME in files:
            obj = pickle.loads(read_verified(fs, root, OBJECT_NAME, files))  # sha256 verified above
        est._set_state(doc["meta"], arrays, obj)
        return est  # type: ignore[return-value]


def load_estimator(directory: str | os.PathLike[str], fs: fsspec.AbstractFileSystem | None = None) -> Estimator:
    """Load any registered estimator saved with :meth:`Estimator.save` (dispatch on ``class``)."""
    return Estimator.load(directory, fs)


# ----------------------------------------------------------------------------- helpers


def _import_builtins() -> None:
    for module in _BUILTIN_MODULES:  # they register themselves; imported here to avoid a cycle
        importlib.import_module(module)
