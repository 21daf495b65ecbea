"""Store-level leases: one writer at a time for flows that must not overlap (the nightly auto-label).

A lease is the object ``locks/<name>.json`` under the store root: owner, a random token and an
expiry time. It is created only if absent and changed only by whoever still sees the version it
read, so two runs cannot both hold it:

* **local stores**: creation is ``os.link`` of a complete temporary file (fails if the lease
  exists); renew, release and the takeover of an expired lease run under ``fcntl.flock`` on
  ``locks/.<name>.guard`` and re-read the lease first, so none of them can overwrite another
  holder's fresh lease. (POSIX locks on one host; network file systems only as far as their
  ``flock`` is coherent.)
* **S3** (and S3-compatible servers that implement conditional writes, e.g. recent MinIO, moto):
  creation is a PUT with ``If-None-Match: *``; renew and takeover are PUTs with ``If-Match: <ETag>``
  of the version read, so a concurrent change makes them fail with 412 instead of overwriting.
  Release reads the lease, checks the token and deletes it; the delete itself is not conditional,
  which is safe while the lease is kept alive (a holder never deletes after its lease has expired
  and been taken over: it sees the other token and leaves it). Other object stores are refused with a
  ConfigError rather than given a lock that does not exclude.

While held (``with StoreLease(...)``), a daemon thread renews the lease every ``ttl / 3`` seconds,
so ``ttl`` only bounds how long a *crashed* holder (killed process, lost host) blocks the next run.
A lease whose renewal fails is marked lost; leaving the ``with`` block then raises
:class:`LeaseLostError`, so the run fails loudly instead of reporting success without the lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

from imgclust.exceptions import ConfigError, StoreError
from imgclust.io.store import Store

log = logging.getLogger(__name__)

LOCK_DIR = "locks"


class LeaseHeldError(StoreError):
    """Another run holds the lease (and did not release it within the wait)."""


class LeaseLostError(StoreError):
    """The lease expired or was taken over while this run held it."""


@dataclass(frozen=True)
class LeaseInfo:
    """The content of a lease object."""

    name: str
    owner: str
    token: str
    acquired_at: float  # epoch seconds
    expires_at: float  # epoch seconds

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at

    def describe(self) -> str:
        left = self.expires_at - time.time()
        return (f"held by {self.owner} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.acquired_at))}, "
                f"{'expired' if left <= 0 else f'expires in {left:.0f}s unless renewed'}")


def default_owner() -> str:
    """``host:pid`` of this process (for humans reading the lease)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class StoreLease:
    """A named lease on ``store`` (see the module docstring for the guarantees).

    ``wait`` is how long :meth:`acquire` keeps polling (every ``poll`` seconds) while another run
    holds the lease; ``0`` refuses at once. ``ttl`` is the lease lifetime between renewals.
    """

    def __init__(self, store: Store, name: str, *, ttl: float = 600.0, wait: float = 0.0, poll: float = 2.0,
                 owner: str | None = None) -> None:
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"lease name {name!r} may only contain letters, digits, '-' and '_'")
        if ttl <= 0 or wait < 0 or poll <= 0:
            raise ConfigError(f"lease needs ttl > 0, wait >= 0, poll > 0 (got ttl={ttl}, wait={wait}, poll={poll})")
        self.store, self.name, self.ttl, self.wait, self.poll = store, name, float(ttl), float(wait), float(poll)
        self.owner = owner or default_owner()
        self.rel = f"{LOCK_DIR}/{name}.json"
        self.info: LeaseInfo | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        protocols = store.fs.protocol if isinstance(store.fs.protocol, tuple) else (store.fs.protocol,)
        if not store.is_local and "s3" not in protocols:
            raise ConfigError(f"store leases need conditional writes, implemented for local folders and S3; "
                              f"{store.url} uses {store.fs.protocol!r}. Run one flow at a time there by other "
                              "means (the deployments' concurrency limit)")

    # ---- public API ----------------------------------------------------------------------------
    def acquire(self) -> LeaseInfo:
        """Take the lease, waiting up to ``wait`` seconds; raises LeaseHeldError naming the holder."""
        deadline = time.monotonic() + self.wait
        while True:
            info = self._new_info()
            if self._create(info):
                return self._held(info)
            current, etag = self._read()
            if current is None:
                continue  # released between our create and read: try again at once
            if current.expired():
                if self._replace(current, etag, info):
                    log.warning("took over expired lease %s from %s", self.rel, current.owner)
                    return self._held(info)
                continue
            if time.monotonic() >= deadline:
                raise LeaseHeldError(
                    f"{self.store.uri(self.rel)} is {current.describe()}: another run holding the {self.name!r} "
                    f"lease is in progress on this store. Wait for it to finish (or pass a longer lock wait); if that run "
                    f"is known to be dead, delete the lease file or wait for its expiry")
            log.info("lease %s is %s; waiting", self.rel, current.describe())
            time.sleep(min(self.poll, max(0.05, deadline - time.monotonic())))

    def renew(self) -> None:
        """Push the expiry ``ttl`` seconds ahead; marks the lease lost if someone else holds it now."""
        if self.info is None:
            raise LeaseLostError(f"{self.rel}: renew() without holding the lease")
        current, etag = self._read()
        if current is None or current.token != self.info.token:
            self._lose(current)
            return
        new = LeaseInfo(self.name, self.owner, self.info.token, self.info.acquired_at, time.time() + self.ttl)
        if self._replace(current, etag, new):
            self.info = new
        else:
            self._lose(None)

    def release(self) -> None:
        """Give the lease back (only if it is still ours); stops the renewal thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self.info is None:
            return
        token, self.info = self.info.token, None
        with self._guard():
            current, _ = self._read()
            if current is not None and current.token == token:
                self.store.remove(self.rel)
            elif not self.lost:
                self.lost = True
                log.error("lease %s was no longer ours at release (%s)", self.rel,
                          current.describe() if current else "absent")

    def __enter__(self) -> StoreLease:
        self.acquire()
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
        if self.lost and exc is None:
            raise LeaseLostError(f"{self.store.uri(self.rel)}: the lease was lost while this run held it (renewal "
                                 "failed or another run took it over); check the store with `imgclust verify`")

    # ---- internals -----------------------------------------------------------------------------
    def _new_info(self) -> LeaseInfo:
        now = time.time()
        return LeaseInfo(self.name, self.owner, uuid.uuid4().hex, now, now + self.ttl)

    def _held(self, info: LeaseInfo) -> LeaseInfo:
        self.info, self.lost = info, False
        log.info("acquired lease %s (%s, ttl %.0fs)", self.rel, self.owner, self.ttl)
        return info

    def _lose(self, current: LeaseInfo | None) -> None:
        self.lost = True
        log.error("lease %s lost: %s", self.rel, current.describe() if current else "it was deleted or replaced")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except OSError as err:  # a transient store error: try again next beat, the ttl has slack
                log.warning("renewing lease %s failed (%s); retrying in %.0fs", self.rel, err, self.ttl / 3)
            if self.lost:
                return

    @staticmethod
    def _encode(info: LeaseInfo) -> bytes:
        return json.dumps(asdict(info), sort_keys=True).encode()

    def _read(self) -> tuple[LeaseInfo | None, str | None]:
        """The current lease and its version tag (ETag on S3), or ``(None, None)`` when absent."""
        path = self.store.path(self.rel)
        try:
            etag = None if self.store.is_local else str(self.store.fs.info(path)["ETag"])
            raw = self.store.fs.cat_file(path)
        except FileNotFoundError:
            return None, None
        try:
            return LeaseInfo(**json.loads(raw)), etag
        except (ValueError, TypeError) as err:
            raise StoreError(f"{self.store.uri(self.rel)} is not a lease file ({err}); delete it if no run "
                             "is in progress") from err

    def _create(self, info: LeaseInfo) -> bool:
        """Write ``info`` only if no lease exists; False when one does."""
        path, data = self.store.path(self.rel), self._encode(info)
        if self.store.is_local:
            os.makedirs(posixpath.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # atomic, fails if the lease exists; readers never see a partial file
                return True
            except FileExistsError:
                return False
            finally:
                os.remove(tmp)
        try:
            self.store.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True

    def _replace(self, current: LeaseInfo, etag: str | None, new: LeaseInfo) -> bool:
        """Overwrite the lease with ``new`` only if it is still ``current``; False otherwise."""
        path = self.store.path(self.rel)
        if self.store.is_local:
            with self._guard():
                now, _ = self._read()
                if now is None or now.token != current.token or (now.expires_at != current.expires_at):
                    return False
                self.store.write_bytes(self.rel, self._encode(new))
                return True
        try:
            self.store.fs.pipe_file(path, self._encode(new), IfMatch=etag)
        except (FileExistsError, FileNotFoundError):
            return False
        except OSError as err:
            if _precondition_failed(err):
                return False
            raise
        return True

    @contextlib.contextmanager
    def _guard(self) -> Any:
        """An exclusive ``flock`` for local stores (no-op on S3, where writes are conditional)."""
        if not self.store.is_local:
            yield
            return
        path = self.store.path(f"{LOCK_DIR}/.{self.name}.guard")
        os.makedirs(posixpath.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock


def _precondition_failed(err: OSError) -> bool:
    """s3fs maps 412 on If-Match to ``OSError(EINVAL, ...)``; recognise it by code or message."""
    text = f"{err} {getattr(err, '__cause__', '')}"
    return "PreconditionFailed" in text or "412" in text or "At least one of the pre-conditions" in text
