"""Download published weights into the libraries' own caches, verified; the offline switch; a quick probe.

* torchvision ImageNet checkpoints go through torch's own mechanism,
  :func:`torch.hub.download_url_to_file`, into ``$TORCH_HOME/hub/checkpoints/<file>``: it writes a
  ``<file>.<uuid>.partial`` beside the target and renames it only once the sha256 of the bytes starts
  with the hex prefix torchvision puts in every file name (``resnet50-0676ba61.pth``); anything else
  is deleted.
* timm / open_clip files go through :func:`huggingface_hub.hf_hub_download` into the Hugging Face hub
  cache (``blobs/<etag>`` + ``snapshots/<commit>/<file>`` link + ``refs/main``), with the cache folder
  and ``$HF_ENDPOINT`` read *now* and passed explicitly. huggingface_hub checks the size the hub
  reports (``X-Linked-Size`` / ``Content-Length``) and renames a process-unique ``.incomplete`` file;
  imgclust then checks the file's bytes against the checksum the hub recorded for it, the ETag its
  blob is named by (``X-Linked-Etag``: the sha256 of an LFS file, or the git blob sha1 of a small
  file). A mismatch deletes the blob and its snapshot link: nothing unverified stays in the cache.
* Offline (:func:`offline_reason`): ``IMGCLUST_OFFLINE=1``, ``HF_HUB_OFFLINE=1`` (also when it was set
  at huggingface_hub's import) or the CLI's ``--offline``: nothing here opens a connection and callers
  keep the cache-only "expected the file X at Y" error.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch

from imgclust.exceptions import ConfigError, WeightsDownloadError
from imgclust.extract.backbones.hf_cache import cached_hf_file, find_hf_cached_file, hf_hub_cache_dir

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_HF_ENDPOINT",
    "OFFLINE_VARIABLES",
    "download_hf_file",
    "download_torch_checkpoint",
    "fetch_hf_file",
    "hf_endpoint",
    "hf_file_url",
    "is_offline",
    "offline_reason",
    "probe_url",
    "verify_hf_cached_file",
]

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
#: Environment variables that switch every weights lookup to the local caches only.
OFFLINE_VARIABLES = ("IMGCLUST_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = ("1", "true", "yes", "on")
#: torch.hub's rule for the hash prefix in a checkpoint's file name (``<name>-<hex>.<ext>``).
_HASH_PREFIX = re.compile(r"-([a-f0-9]*)\.")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_SHA1 = re.compile(r"^[0-9a-f]{40}$")


def offline_reason() -> str | None:
    """Why the network must not be used for weights (``"IMGCLUST_OFFLINE is set"``, ...), or None when it may."""
    for var in OFFLINE_VARIABLES:
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var} is set"
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None and bool(getattr(hub, "HF_HUB_OFFLINE", False)):
        return "HF_HUB_OFFLINE was set when huggingface_hub was imported"
    return None


def is_offline() -> bool:
    """True when :func:`offline_reason` gives a reason."""
    return offline_reason() is not None


def hf_endpoint() -> str:
    """``$HF_ENDPOINT`` read now (huggingface_hub reads it once at import), default ``https://huggingface.co``."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")


def hf_file_url(repo_id: str, filename: str, revision: str = "main") -> str:
    """``<endpoint>/<repo_id>/resolve/<revision>/<filename>``, what the hub serves a model file at."""
    return f"{hf_endpoint()}/{repo_id}/resolve/{revision}/{filename}"


def _one_line(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {' '.join(str(exc).split())}"[:600]


def _refuse_offline(what: str) -> None:
    reason = offline_reason()
    if reason is not None:  # callers check first; this guards every network path once more
        raise ConfigError(f"refusing to download {what}: offline ({reason}).")


# --- torch hub --------------------------------------------------------------------------------------

def download_torch_checkpoint(url: str, dst: Path, *, name: str) -> Path:
    """Download ``url`` to ``dst`` with torch's ``download_url_to_file``, checked against the name's hash prefix.

    Args:
        url: the checkpoint URL (torchvision's weights enum ``url``).
        dst: ``$TORCH_HOME/hub/checkpoints/<file>``; its name must carry the sha256 prefix.
        name: registry name, for messages.

    Returns:
        ``dst``, complete and verified.

    Raises:
        ConfigError: offline, or the file name records no hash to verify against.
        WeightsDownloadError: the download failed, was truncated or its sha256 does not match;
            no file (final or partial) is left in ``dst.parent``.
    """
    _refuse_offline(url)
    match = _HASH_PREFIX.search(dst.name)
    if match is None or not match.group(1):
        raise ConfigError(f"{name!r}: {dst.name} records no sha256 prefix (<name>-<hex>.pth), so a download "
                          f"could not be verified; download {url} yourself and pass --weights PATH.")
    _check_reachable(url, timeout=10.0, what=f"{dst.name} for {name!r}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    logger.info("%s: downloading %s to %s (sha256 must start with %s)", name, url, dst, match.group(1))
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=match.group(1),
                                       progress=sys.stderr.isatty())
    except RuntimeError as exc:  # torch's "invalid hash value (expected ..., got ...)"
        raise WeightsDownloadError(
            f"download of {url} for {name!r} did not verify ({_one_line(exc)}): the file is corrupt or not the "
            f"published checkpoint, so nothing was kept in {dst.parent}. Retry, or copy a good {dst.name} there."
        ) from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError; IncompleteRead
        raise WeightsDownloadError(
            f"could not download {url} for {name!r} ({_one_line(exc)}); nothing was kept in {dst.parent}. "
            f"Check the network, or run with --offline / IMGCLUST_OFFLINE=1 and copy {dst.name} there."
        ) from exc
    return dst


# --- Hugging Face hub -------------------------------------------------------------------------------

def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())  # git object id, not a security use
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _blob_etag(path: Path) -> str | None:
    """The ETag a cached hub file is stored under (``.../blobs/<etag>``), or None when it is not a blob link."""
    real = Path(os.path.realpath(path))
    return real.name if real.parent.name == "blobs" else None


def verify_hf_cached_file(path: Path, *, sha256: str | None = None, etag: str | None = None) -> str:
    """Check a cached hub file against the checksum its blob is named by; return its sha256.

    Args:
        path: the snapshot path (a link into ``blobs/``) or the blob itself.
        sha256: the file's sha256 when the caller has it already (saves a read).
        etag: the hub's ETag when known; default: the blob's name. A 64-hex ETag is the sha256 of
            an LFS file, a 40-hex one the git blob sha1 of a small file; other ETags (a file placed
            in the cache by hand, no blob) are not checked.

    Raises:
        WeightsDownloadError: the bytes do not match; the message says how to repair the cache.
    """
    digest = sha256 or _sha256(path)
    expected = etag or _blob_etag(path)
    if expected is None:
        return digest
    if _SHA256.match(expected):
        ok = digest == expected
    elif _GIT_SHA1.match(expected):
        ok = _git_blob_sha1(path) == expected
    else:
        return digest
    if not ok:
        raise WeightsDownloadError(
            f"{path} does not match the checksum the hub recorded for it (ETag {expected}, sha256 {digest}): "
            f"it is corrupt or truncated. Delete it (and the blob it links to) and pull it again with "
            f"`imgclust weights pull`, or copy an intact cache."
        )
    return digest


def _remove_download(path: Path) -> None:
    """Delete a downloaded hub file: the blob, the snapshot link, and snapshot folders left empty."""
    real = Path(os.path.realpath(path))
    for target in (path, real):
        if target.is_symlink() or target.exists():
            target.unlink()
    if "snapshots" not in path.parts:
        return
    parent = path.parent
    while parent.name != "snapshots":
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break
        parent = parent.parent


def download_hf_file(repo_id: str, filenames: tuple[str, ...], *, name: str, timeout: float = 10.0) -> Path:
    """Download the first of ``filenames`` the hub has for ``repo_id`` (main) into the hub cache, verified.

    Args:
        repo_id: hub model repo, e.g. ``"timm/vit_small_patch14_dinov2.lvd142m"``.
        filenames: accepted files in order of preference; a 404 moves on to the next one.
        name: registry name, for messages.
        timeout: seconds for the metadata (HEAD) request.

    Returns:
        The snapshot path of the verified file.

    Raises:
        ConfigError: offline.
        WeightsDownloadError: the hub is unreachable, has none of the files, refuses access, or the
            bytes are truncated or do not match the ETag; nothing of that file stays in the cache.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    _refuse_offline(f"{repo_id} from the Hugging Face hub")
    cache, endpoint = hf_hub_cache_dir(), hf_endpoint()
    _check_reachable(endpoint, timeout=timeout, what=f"{repo_id} for {name!r}")
    absent: list[str] = []
    for filename in filenames:
        logger.info("%s: downloading %s/%s from %s into %s", name, repo_id, filename, endpoint, cache)
        try:
            path = Path(hf_hub_download(repo_id, filename, cache_dir=str(cache), endpoint=endpoint,
                                        etag_timeout=timeout))
        except RemoteEntryNotFoundError:
            absent.append(filename)
            continue
        except Exception as exc:  # huggingface_hub raises OSError subclasses, httpx errors, ValueError
            # huggingface_hub deletes its own process-unique .incomplete file on any failure; another
            # process's download of the same file may be under way, so nothing else is touched here.
            raise WeightsDownloadError(
                f"could not download {filename} of {repo_id} from {endpoint} for {name!r} ({_one_line(exc)}); "
                f"nothing of it was kept in {cache}. Check the network (and $HF_ENDPOINT), or run with --offline "
                f"/ IMGCLUST_OFFLINE=1 and copy a cache holding it."
            ) from exc
        etag = _blob_etag(path) or _remote_etag(repo_id, filename, timeout)
        if etag is None or not (_SHA256.match(etag) or _GIT_SHA1.match(etag)):
            _remove_download(path)
            raise WeightsDownloadError(
                f"{endpoint} gave no checksum (ETag {etag!r}) for {repo_id}/{filename}, so the download for "
                f"{name!r} could not be verified; it was removed from {cache}."
            )
        try:
            verify_hf_cached_file(path, etag=etag)
        except WeightsDownloadError as exc:
            _remove_download(path)
            raise WeightsDownloadError(
                f"download of {repo_id}/{filename} from {endpoint} for {name!r} is corrupt or truncated: its "
                f"bytes do not match the hub's checksum (ETag {etag}); it was removed from {cache}. Retry."
            ) from exc
        logger.info("%s: %s/%s verified (ETag %s) at %s", name, repo_id, filename, etag[:12], path)
        return path
    raise WeightsDownloadError(f"{endpoint}/{repo_id} has none of {', '.join(absent)} (404) for {name!r}; "
                               f"check the repo, or pass --weights PATH.")


def fetch_hf_file(repo_id: str, filenames: tuple[str, ...], *, name: str, source: str) -> Path:
    """The cached file for ``repo_id`` (first of ``filenames``), downloaded and verified first unless offline.

    Raises:
        WeightsNotFoundError: offline and not cached (the message names the expected path).
        WeightsDownloadError: see :func:`download_hf_file`.
    """
    cached = cached_hf_file(repo_id, filenames)
    if cached is not None:
        return cached
    reason = offline_reason()
    if reason is not None:
        return find_hf_cached_file(repo_id, filenames, name=name, source=source, offline=reason)  # raises
    return download_hf_file(repo_id, filenames, name=name)


def _remote_etag(repo_id: str, filename: str, timeout: float) -> str | None:
    """The hub's ETag for a file (where the cache keeps no blob links, e.g. without symlinks)."""
    from huggingface_hub import get_hf_file_metadata

    try:
        return get_hf_file_metadata(hf_file_url(repo_id, filename), timeout=timeout).etag
    except OSError:
        return None


# --- a quick reachability probe ---------------------------------------------------------------------

def probe_url(url: str, *, timeout: float, hub: bool) -> tuple[str | None, bool]:
    """Whether ``url`` can be fetched now, in at most about ``timeout`` seconds.

    A HEAD request (``hub``: huggingface_hub's, which follows the hub's redirects and needs its
    ``X-Repo-Commit``; else urllib's) runs in a daemon thread that is abandoned after ``timeout``
    seconds, so a resolver or proxy that hangs cannot hold up the caller. Offline, nothing is sent.

    Returns:
        ``(problem, answered)``: ``problem`` is None when the file is there, else a one-line reason;
        ``answered`` says whether the host gave an HTTP answer at all (a 404 is an answer; a
        resolver error, refused connection or timeout is not).
    """
    reason = offline_reason()
    if reason is not None:
        return f"offline ({reason})", False
    result: list[tuple[str | None, bool]] = []

    def head() -> None:
        try:
            if hub:
                from huggingface_hub import get_hf_file_metadata
                from huggingface_hub.errors import HfHubHTTPError

                try:
                    meta = get_hf_file_metadata(url, timeout=timeout)
                except HfHubHTTPError as exc:
                    result.append((_one_line(exc), True))
                    return
                result.append((None, True) if meta.etag and meta.commit_hash else (f"{url} gives no ETag", True))
            else:
                request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "torch.hub"})
                try:
                    with urllib.request.urlopen(request, timeout=timeout):
                        result.append((None, True))
                except urllib.error.HTTPError as exc:
                    result.append((_one_line(exc), True))
        except Exception as exc:  # resolver, connection, TLS, timeout: the host did not answer
            result.append((_one_line(exc), False))

    _run_with_deadline(head, timeout)
    return result[0] if result else (f"no answer from {url} within {timeout:g} s", False)


def _check_reachable(url: str, *, timeout: float, what: str) -> None:
    """Fail in seconds, not after the libraries' retries, when ``url``'s host cannot even be connected to.

    A TCP connect (no HTTP request) in a thread abandoned after ``timeout``; skipped behind a proxy
    (``*_PROXY`` set), where only the proxy is reachable.

    Raises:
        WeightsDownloadError: the host does not resolve or refuses / drops the connection.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                       "all_proxy")):
        return
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        raise ConfigError(f"{url!r} names no host.")
    problem: list[str] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            problem.append("")
        except OSError as exc:
            problem.append(_one_line(exc))

    _run_with_deadline(connect, timeout)
    reason = problem[0] if problem else f"no answer within {timeout:g} s"
    if reason:
        raise WeightsDownloadError(
            f"cannot download {what}: {host}:{port} is unreachable ({reason}). Check the network (and "
            f"$HF_ENDPOINT / proxies), or run with --offline / IMGCLUST_OFFLINE=1 and copy a cache holding it."
        )


def _run_with_deadline(fn: Callable[[], None], timeout: float) -> None:
    thread = threading.Thread(target=fn, name="imgclust-weights-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
