"""One place that turns a path or URL (store root, source, model folder) into an fsspec filesystem.

Credentials and endpoint
------------------------
They come from the standard AWS configuration of the process, never from parameters, URLs, flow
parameters or model metadata:

* ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``), or ``AWS_PROFILE`` with
  ``~/.aws/credentials`` + ``~/.aws/config``, or an instance / container role;
* ``AWS_DEFAULT_REGION`` (or the profile's ``region``);
* an S3-compatible endpoint (MinIO, moto, Ceph): ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, or
  ``endpoint_url`` in the profile's config. botocore (>= 1.31) reads these itself, and s3fs passes
  them through unchanged (checked with s3fs 2026.9.0 / aiobotocore 3.10.0 against a moto server),
  so no imgclust-specific variable exists. fsspec's own ``FSSPEC_S3_*`` variables work as well.

On a Dask cluster every worker process needs the same environment (set it before the workers start).
A URL that carries credentials (``s3://KEY:SECRET@bucket/...``) is refused, so they cannot end up
in the manifest, logs or Prefect parameters; the error message does not repeat the URL.

Listing cache
-------------
Several processes write to one store, so filesystems for object stores are created with
``use_listings_cache=False``: ``exists`` / ``glob`` / ``find`` always ask the object store instead of
a per-process listing that another worker's write has made stale.

Filesystem instances are cached per process and option set (not per thread as fsspec does), so the
decode and hash thread pools share one client and its connection pool.
"""
from __future__ import annotations

import json
import os
import threading
from typing import Any
from urllib.parse import urlsplit

import fsspec
from fsspec.core import split_protocol

from imgclust.exceptions import ConfigError

_LOCAL_PROTOCOLS = {None, "", "file", "local"}
# defaults for object stores; explicit storage_options win
OBJECT_STORE_DEFAULTS: dict[str, Any] = {"use_listings_cache": False}

_CACHE: dict[tuple[int, str, str], fsspec.AbstractFileSystem] = {}
_LOCK = threading.Lock()


def protocol_of(url: str) -> str | None:
    """``"s3"`` for ``s3://b/p``; None for a plain path. Chained URLs give their outermost protocol."""
    proto, _ = split_protocol(url.split("::", 1)[0])
    return proto


def is_local(url: str) -> bool:
    return protocol_of(url) in _LOCAL_PROTOCOLS


def check_url(url: str, what: str = "URL") -> None:
    """Refuse a URL that carries credentials in its user-info part (without echoing it)."""
    if is_local(url):
        return
    for part in url.split("::"):
        if "://" not in part:
            continue
        netloc = urlsplit(part).netloc
        if "@" in netloc:
            raise ConfigError(f"the {what} has user credentials in it (scheme://USER:SECRET@bucket/...); that "
                              "is refused so that they cannot leak into manifests, logs or flow parameters. "
                              "Use s3://bucket/prefix and give credentials through the environment "
                              "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)")


def storage_options_for(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fsspec options used for ``url``: object-store defaults overridden by ``storage_options``."""
    if is_local(url):
        return dict(storage_options or {})
    return {**OBJECT_STORE_DEFAULTS, **(storage_options or {})}


def url_to_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(filesystem, path without protocol)`` for ``url``, like :func:`fsspec.core.url_to_fs`.

    Remote filesystems are shared by every thread of the process (one client, one connection pool).
    """
    check_url(url)
    opts = storage_options_for(url, storage_options)
    if is_local(url) or "::" in url:
        return fsspec.core.url_to_fs(url, **opts)
    protocol = protocol_of(url)
    assert protocol is not None
    cls = fsspec.get_filesystem_class(protocol)
    opts = {**cls._get_kwargs_from_urls(url), **opts}
    key = (os.getpid(), protocol, json.dumps(opts, sort_keys=True, default=repr))
    with _LOCK:
        fs = _CACHE.get(key)
        if fs is None:  # fsspec's own instance cache is per thread; this one is per process
            fs = _CACHE[key] = cls(**opts, skip_instance_cache=True)
    return fs, fs._strip_protocol(url)


def clear_cache() -> None:
    """Forget cached filesystems (tests that change the AWS environment call this)."""
    with _LOCK:
        _CACHE.clear()
