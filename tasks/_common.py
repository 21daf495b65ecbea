"""Shared task plumbing: retry policy for transient errors only, and store construction."""
from __future__ import annotations

from typing import Any

from imgclust.exceptions import ConfigError, CorruptArtifactError, ImageDecodeError, StoreError
from imgclust.store import Store

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

    Credentials and endpoint come from the worker's AWS environment / profile (see imgclust.storage),
    never from task parameters; a URL carrying credentials is refused with a ConfigError.
    """
    return Store(url)
