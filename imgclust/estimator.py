"""The estimator contract every reducer and clusterer shares, the data interface, and save/load.

Data interface
--------------
Algorithms accept either an in-memory array ``X`` of shape ``(n, D)`` or a :data:`BatchSource`: a
zero-argument callable whose every call starts a fresh pass and yields float32 blocks
``(n_i, D)``. A Parquet-backed feature store provides the latter, :func:`as_batch_source` wraps an
array. Algorithms only need a pass over the blocks (:func:`iter_blocks`) and a seeded row sample
(:func:`sample_rows`), so the two are interchangeable (faiss ``contrib/clustering.py`` codes
k-means against the same small interface).

Estimator contract (scikit-learn's)
-----------------------------------
Keyword-only parameters are only stored in ``__init__`` and validated in ``fit``; ``fit`` returns
``self``; learned state ends in ``_``; methods that need a fitted model call
:meth:`Estimator._check_fitted` first.

Artifact layout (one directory, local or ``s3://``)
---------------------------------------------------
``arrays.npz``
    learned arrays, loaded with ``allow_pickle=False``.
``object.pkl``
    only for UMAP / HDBSCAN objects, whose libraries offer no other save; its sha256 is checked
    before unpickling.
``estimator.json``
    written last (it is the done-marker): ``class``, ``params``, ``meta`` (learned scalars),
    ``arrays`` (name, dtype, shape), ``files`` (sha256 of every other file), ``versions``.

Each file goes to ``<name>.tmp`` and is renamed with :func:`os.replace` on a local filesystem; on an
object store a single PUT of the full bytes is already atomic.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import io
import json
import logging
import os
import pickle
import platform
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, ClassVar, TypeVar

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from imgclust.exceptions import ConfigError, CorruptArtifactError, NotFittedError, UnknownNameError
from imgclust.storage import url_to_fs

logger = logging.getLogger(__name__)

BatchSource = Callable[[], Iterator[np.ndarray]]
"""Zero-argument callable; each call starts a fresh pass yielding float32 blocks ``(n_i, D)``.
A producer may reuse a block's buffer once the next block is requested; consumers copy what they keep."""

ArrayOrSource = np.ndarray | BatchSource
"""What ``fit`` accepts: an in-memory array ``(n, D)`` or a :data:`BatchSource`."""

FORMAT_VERSION = 1
MANIFEST_NAME = "estimator.json"
ARRAYS_NAME = "arrays.npz"
OBJECT_NAME = "object.pkl"
_VERSION_PACKAGES = ("imgclust", "numpy", "scikit-learn", "faiss-cpu", "umap-learn", "hdbscan")
_BUILTIN_MODULES = ("imgclust.reduce", "imgclust.pca", "imgclust.cluster", "imgclust.hierarchy")
_LAZY_MODULES = {"TorchKMeans": "imgclust.kmeans_torch", "ScanClusterer": "imgclust.scan"}  # imported on first load: torch

E = TypeVar("E", bound="Estimator")


# ----------------------------------------------------------------------------- data interface


def check_array(X: Any, *, n_features: int | None = None, name: str = "X") -> np.ndarray:
    """Return ``X`` as a finite, C-contiguous float32 array of shape ``(n, D)``.

    Float64 input is cast to float32 (the project keeps features in float32 end to end).
    Raises :class:`ConfigError` for a wrong rank, non-finite values, or when ``n_features`` is
    given and ``D`` differs.
    """
    if callable(X):
        raise ConfigError(f"{name} is a batch source here, but this method needs an array; "
                          "iterate the source and call it per block")
    try:
        arr = np.ascontiguousarray(X, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} cannot be converted to a float32 array ({exc}); pass a dense "
                          "numeric array of shape (n_samples, n_features)") from exc
    if arr.ndim != 2:
        raise ConfigError(f"{name} must be 2-D (n_samples, n_features); got shape {arr.shape}. "
                          "Use X.reshape(1, -1) for a single sample or X.reshape(-1, 1) for one feature")
    if n_features is not None and arr.shape[1] != n_features:
        raise ConfigError(f"{name} has {arr.shape[1]} features, but the estimator was fitted with "
                          f"{n_features}; transform features from the same extractor/reducer it was fitted on")
    if arr.size and not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise ConfigError(f"{name} contains NaN or inf (first at row {bad}); drop or impute those rows first")
    return arr


def as_batch_source(X: np.ndarray, batch_size: int = 65536) -> BatchSource:
    """Wrap an in-memory array ``(n, D)`` as a :data:`BatchSource` of ``batch_size``-row views."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    arr = check_array(X)

    def source() -> Iterator[np.ndarray]:
        for start in range(0, arr.shape[0], batch_size):
            yield arr[start:start + batch_size]

    return source


def iter_blocks(data: ArrayOrSource, *, batch_size: int = 65536, n_features: int | None = None) -> Iterator[np.ndarray]:
    """Yield validated float32 blocks ``(n_i, D)`` from an array or a :data:`BatchSource`.

    Every block is checked with :func:`check_array`; all blocks must share ``D`` (and equal
    ``n_features`` when given). Empty blocks are skipped.
    """
    if not callable(data):
        arr = check_array(data, n_features=n_features)
        for start in range(0, arr.shape[0], batch_size):
            yield arr[start:start + batch_size]
        return
    blocks = data()
    if not isinstance(blocks, Iterable):
        raise ConfigError("a BatchSource must return an iterator of arrays when called; got "
                          f"{type(blocks).__name__}. Pass `lambda: iter(blocks)` or use as_batch_source(X)")
    dim = n_features
    for i, block in enumerate(blocks):
        arr = check_array(block, n_features=dim, name=f"block {i} of the batch source")
        dim = arr.shape[1]
        if arr.shape[0]:
            yield arr


@dataclass(frozen=True)
class RowSample:
    """A seeded uniform sample of rows: ``rows`` ``(m, D)`` float32, ``indices`` ``(m,)`` int64
    global row positions (ascending), ``n_total`` rows seen in the pass."""

    rows: np.ndarray
    indices: np.ndarray
    n_total: int


def sample_rows(data: ArrayOrSource, max_rows: int | None, seed: int) -> RowSample:
    """Uniform sample without replacement of at most ``max_rows`` rows, in one pass.

    Bottom-k sampling: every row gets a key from ``np.random.default_rng(seed)`` (drawn in row
    order) and the rows with the ``max_rows`` smallest keys are kept, so the sample is
    deterministic given the seed and identical for an array and for any blocking of the same rows
    into a :data:`BatchSource` (a vectorised reservoir sample). ``max_rows=None`` keeps every row.
    Memory stays at ``O(max_rows * D)`` (at most ``2 * max_rows`` rows are buffered).
    """
    if max_rows is not None and max_rows < 1:
        raise ConfigError(f"the sample size must be >= 1 or None, got {max_rows}")
    rng = np.random.default_rng(seed)
    keys_l: list[np.ndarray] = []
    idx_l: list[np.ndarray] = []
    rows_l: list[np.ndarray] = []
    buffered = 0
    threshold = np.inf  # rows with a key >= the current max_rows-th smallest can never enter
    n_total = 0

    def compact() -> float:
        keys, idx, rows = np.concatenate(keys_l), np.concatenate(idx_l), np.concatenate(rows_l)
        sel = np.argpartition(keys, max_rows - 1)[:max_rows]  # type: ignore[operator]
        keys_l[:], idx_l[:], rows_l[:] = [keys[sel]], [idx[sel]], [rows[sel]]
        return float(keys[sel].max())

    for block in iter_blocks(data):
        n = block.shape[0]
        keys = np.asarray(rng.random(n))
        idx = np.arange(n_total, n_total + n, dtype=np.int64)
        n_total += n
        take = keys < threshold
        keys_l.append(keys[take])
        idx_l.append(idx[take])
        rows_l.append(block[take])  # boolean indexing copies: the source may reuse its buffer
        buffered += int(take.sum())
        if max_rows is not None and buffered >= 2 * max_rows:  # amortised O(1) per row
            threshold, buffered = compact(), max_rows
    if n_total == 0:
        raise ConfigError("the input has no rows; fit needs at least one sample")
    if max_rows is not None and buffered > max_rows:
        compact()
    rows, idx = np.concatenate(rows_l), np.concatenate(idx_l)
    order = np.argsort(idx, kind="stable")
    return RowSample(np.ascontiguousarray(rows[order]), idx[order], n_total)


def check_int(name: str, value: Any, *, minimum: int, allow_none: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an int ``>= minimum`` (or ``None`` if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        extra = " or None" if allow_none else ""
        raise ConfigError(f"{name} must be an int >= {minimum}{extra}, got {value!r}")


def l2_normalize(X: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation of ``(n, D)`` float32; all-zero rows stay zero."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.maximum(norms, np.finfo(np.float32).tiny)).astype(np.float32, copy=False)


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
        meta = {name: _jsonable(getattr(self, name)) for name in self._meta_attrs}
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
        fs, root = _resolve(directory, fs)
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
        files = {ARRAYS_NAME: _write_atomic(fs, _join(root, ARRAYS_NAME), buf.getvalue())}
        if obj is not None:
            files[OBJECT_NAME] = _write_atomic(fs, _join(root, OBJECT_NAME),
                                               pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        doc = {
            "format_version": FORMAT_VERSION,
            "class": type(self).__name__,
            "params": params,
            "meta": meta,
            "arrays": [{"name": k, "dtype": str(v.dtype), "shape": list(v.shape)} for k, v in arrays.items()],
            "files": files,
            "versions": _versions(),
            "created_at": datetime.now(timezone.utc).isoformat(),
        }
        _write_atomic(fs, _join(root, MANIFEST_NAME), json.dumps(doc, indent=2, sort_keys=True).encode())
        logger.info("saved %s to %s", type(self).__name__, root)

    @classmethod
    def load(cls: type[E], directory: str | os.PathLike[str], fs: fsspec.AbstractFileSystem | None = None) -> E:
        """Restore an estimator written by :meth:`save`, verifying every file's sha256 first.

        ``Estimator.load`` dispatches on the saved class name; ``SomeClass.load`` requires it.
        Raises :class:`CorruptArtifactError` for a missing, half-written or modified directory.
        """
        fs, root = _resolve(directory, fs)
        doc = _read_manifest(fs, root)
        name = doc["class"]
        if cls is Estimator:
            _import_builtins()
            if name not in _REGISTRY and name in _LAZY_MODULES:
                importlib.import_module(_LAZY_MODULES[name])
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
            raise CorruptArtifactError(f"{_join(root, MANIFEST_NAME)}: saved params do not match "
                                       f"{name}'s signature ({exc}); it was written by another version "
                                       f"({doc.get('versions')}); refit and save again") from exc
        files = doc["files"]
        npz = np.load(io.BytesIO(_read_verified(fs, root, ARRAYS_NAME, files)), allow_pickle=False)
        arrays: dict[str, np.ndarray] = {}
        for spec in doc["arrays"]:
            key = spec["name"]
            if key not in npz.files:
                raise CorruptArtifactError(f"{_join(root, ARRAYS_NAME)} lacks array {key!r}; save again")
            arr = npz[key]
            if str(arr.dtype) != spec["dtype"] or list(arr.shape) != spec["shape"]:
                raise CorruptArtifactError(f"{_join(root, ARRAYS_NAME)}: array {key!r} is {arr.dtype}"
                                           f"{arr.shape}, the manifest says {spec['dtype']}{tuple(spec['shape'])}")
            arrays[key] = arr
        obj = None
        if OBJECT_NAME in files:
            obj = pickle.loads(_read_verified(fs, root, OBJECT_NAME, files))  # sha256 verified above
        est._set_state(doc["meta"], arrays, obj)
        return est  # type: ignore[return-value]


def load_estimator(directory: str | os.PathLike[str], fs: fsspec.AbstractFileSystem | None = None) -> Estimator:
    """Load any registered estimator saved with :meth:`Estimator.save` (dispatch on ``class``)."""
    return Estimator.load(directory, fs)


# ----------------------------------------------------------------------------- helpers


def _import_builtins() -> None:
    for module in _BUILTIN_MODULES:  # they register themselves; imported here to avoid a cycle
        importlib.import_module(module)


def _resolve(directory: str | os.PathLike[str], fs: fsspec.AbstractFileSystem | None) -> tuple[Any, str]:
    """``(fs, path)``: the given filesystem with ``directory`` as its path (already without protocol),
    or the filesystem of a path/URL (credentials and endpoint from the environment, see imgclust.storage)."""
    if fs is not None:
        return fs, os.fspath(directory)
    return url_to_fs(os.fspath(directory))


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(fs: Any, path: str, data: bytes) -> str:
    """Write ``data`` so readers see the old file or the whole new one; returns its sha256."""
    if isinstance(fs, LocalFileSystem):
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    else:  # object stores: one PUT of the full bytes is atomic
        fs.pipe_file(path, data)
    return _sha256(data)


def _read_manifest(fs: Any, root: str) -> dict[str, Any]:
    path = _join(root, MANIFEST_NAME)
    try:
        raw = fs.cat_file(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise CorruptArtifactError(f"no {MANIFEST_NAME} in {root}: the directory is missing or its save did "
                                   "not finish; point at a directory written by Estimator.save or refit") from exc
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptArtifactError(f"{path} is not valid JSON ({exc}); the save was interrupted or the "
                                   "file was edited; save the estimator again") from exc
    missing = {"class", "params", "meta", "arrays", "files"} - set(doc) if isinstance(doc, dict) else {"all"}
    if missing:
        raise CorruptArtifactError(f"{path} lacks keys {sorted(missing)}; it was not written by Estimator.save")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CorruptArtifactError(f"{path} has format_version {doc.get('format_version')!r}, this "
                                   f"imgclust reads {FORMAT_VERSION}; refit and save with this version")
    return doc


def _read_verified(fs: Any, root: str, name: str, files: dict[str, str]) -> bytes:
    path = _join(root, name)
    if name not in files:
        raise CorruptArtifactError(f"{_join(root, MANIFEST_NAME)} records no checksum for {name}; save again")
    try:
        data = fs.cat_file(path)
    except FileNotFoundError as exc:
        raise CorruptArtifactError(f"{path} is missing (half-written or partly deleted save); "
                                   "save the estimator again") from exc
    if _sha256(data) != files[name]:
        raise CorruptArtifactError(f"{path} was modified after it was saved (sha256 mismatch); refusing "
                                   "to load it. Restore the original file or refit and save again")
    return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in _VERSION_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out
