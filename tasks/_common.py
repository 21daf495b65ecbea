"""Shared task plumbing: retry policy for transient errors only, and store construction."""
from __future__ import annotations

import logging
from typing import Any

from imgclust.exceptions import ConfigError, CorruptArtifactError, ImageDecodeError, StoreError
from imgclust.io.store import Store

# Errors that retrying cannot fix: configuration, corrupt artifacts, programming errors.
PERMANENT = (ConfigError, CorruptArtifactError, ImageDecodeError, StoreError, TypeError, ValueError, KeyError)


def is_transient(err: BaseException) -> bool:
    """True for errors that may go away on retry: I/O and connection errors.

    The store separates the two failure modes of reading an artifact: a fetch that fails (an
    object store's 5xx or reset connection after the client's own retries, raised by s3fs as a
    plain OSError) propagates as OSError and is retried; content that does not parse is a
    CorruptArtifactError and is not.
    """
    return not isinstance(err, PERMANENT)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only on errors that may go away (I/O, connection)."""
    try:
        state.result()
    except Exception as err:
        return is_transient(err)
    return False


def open_store(url: str) -> Store:
    """A Store for ``url`` (folder or ``s3://bucket/prefix``).

    Credentials and endpoint come from the worker's AWS environment / profile (see imgclust.io.storage),
    never from task parameters; a URL carrying credentials is refused with a ConfigError.
    """
    return Store(url)


def enable_library_logs() -> None:
    """Let the library's INFO lines (progress of long steps, per-shard summaries) through in this process.

    Prefect's logging configuration leaves the root logger at WARNING, and ``PREFECT_LOGGING_EXTRA_LOGGERS=imgclust``
    (set by the CLI and for the deployments) attaches the API handler to the ``imgclust`` logger but not a level,
    so in a flow-run process without a console configuration (``serve``, a work-pool worker) and in every Dask
    worker the library's INFO records were dropped before reaching the console or the run logs. This sets the
    ``imgclust`` logger to INFO unless it, or a logger above it, was configured to let more through; and when
    ``PREFECT_LOGGING_EXTRA_LOGGERS`` names ``imgclust`` but the API handler is missing (the setting arrived after
    Prefect configured logging in this process), it attaches one. Run when the task modules are imported, which
    happens in the flow process and, through the pickled tasks, in each Dask worker.
    """
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_LOGGING_EXTRA_LOGGERS

    lib = logging.getLogger("imgclust")
    if lib.level == logging.NOTSET and lib.getEffectiveLevel() > logging.INFO:
        lib.setLevel(logging.INFO)
    extra = PREFECT_LOGGING_EXTRA_LOGGERS.value() or []
    names = [n.strip() for n in (extra.split(",") if isinstance(extra, str) else extra)]
    if "imgclust" in names and not any(isinstance(h, APILogHandler) for h in lib.handlers):
        lib.addHandler(APILogHandler())


enable_library_logs()
