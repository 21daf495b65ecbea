"""Shared task plumbing: retry policy for transient errors only, and store construction."""
from __future__ import annotations

from typing import Any

from imgclust.exceptions import ConfigError, CorruptArtifactError, ImageDecodeError, StoreError
from imgclust.store import Store

# Errors that retrying cannot fix: configuration, corrupt artifacts, programming errors.
PERMANENT = (ConfigError, CorruptArtifactError, ImageDecodeError, StoreError, TypeError, ValueError, KeyError)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only on errors that may go away (I/O, connection)."""
    try:
        state.result()
    except PERMANENT:
        return False
    except Exception:
        return True
    return False


def open_store(url: str) -> Store:
    """A Store for ``url`` (folder or ``s3://bucket/prefix``).

    Credentials and endpoint come from the worker's AWS environment / profile (see imgclust.storage),
    never from task parameters; a URL carrying credentials is refused with a ConfigError.
    """
    return Store(url)
