"""Every exception imgclust raises on purpose, in one place.

Messages say what went wrong *and* what to do next. Callers catch the narrowest class.
"""
from __future__ import annotations


class ImgclustError(Exception):
    """Base class of all imgclust errors."""


class ConfigError(ImgclustError, ValueError):
    """A configuration or parameter is invalid; raised before any work starts."""


class StoreError(ImgclustError):
    """The store is unreadable, inconsistent, or a path escapes its root."""


class CorruptArtifactError(StoreError):
    """A Parquet file, marker or model file exists but cannot be trusted (corrupt, truncated, tampered)."""


class NotFittedError(ImgclustError, AttributeError):
    """An estimator method that needs learned state was called before ``fit``."""


class WeightsNotFoundError(ImgclustError, FileNotFoundError):
    """Pretrained weights were requested but the expected file is not available offline."""


class WeightsDownloadError(ImgclustError, OSError):
    """A weights download failed or did not verify (checksum, size); nothing was left in the cache."""


class UnknownNameError(ImgclustError, KeyError):
    """A registry lookup (backbone, method, backend) used a name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ImageDecodeError(ImgclustError):
    """An image could not be used. ``kind`` is the quarantine ``error_kind``.

    Kinds: ``empty``, ``not_an_image``, ``truncated``, ``unreadable``, ``too_large``, ``too_small``,
    ``unsupported_mode``, ``io_error``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
