"""Input validation shared by every estimator: arrays, integer parameters, row normalisation."""
from __future__ import annotations

from typing import Any

import numpy as np

from imgclust.exceptions import ConfigError

__all__ = ["check_array", "check_int", "l2_normalize"]


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
