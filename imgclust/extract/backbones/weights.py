"""Where backbone weights come from: a library cache (downloaded when allowed), a state_dict file, or a seeded init.

``"imagenet"`` / ``"pretrained"`` mean the entry's published pretrained weights in the library's own
cache: for torchvision the ImageNet checkpoint in ``$TORCH_HOME/hub/checkpoints/``, for timm /
open_clip entries their Hugging Face hub file (:mod:`imgclust.extract.backbones.hf_cache`). A cached file is
used as it is; a missing one is downloaded and verified (:mod:`imgclust.extract.backbones.download`) unless
offline (``IMGCLUST_OFFLINE=1``, ``HF_HUB_OFFLINE=1``, ``--offline``), where the error names the exact
file expected and how to provide it. Any other string is a path to an existing state_dict,
``"random"`` or ``"none"``; anything else (e.g. a hub id) is refused rather than guessed at.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch
from torch import nn

from imgclust.exceptions import ConfigError, WeightsNotFoundError
from imgclust.extract.backbones.download import download_torch_checkpoint, offline_reason
from imgclust.extract.backbones.hf_cache import hf_hub_cache_dir

logger = logging.getLogger(__name__)

WeightsKind = Literal["imagenet", "pretrained", "random", "file", "none"]
_KEYWORDS: tuple[WeightsKind, ...] = ("imagenet", "pretrained", "random", "none")
_STATE_DICT_SUFFIXES = (".pth", ".pt")
_FILE_LIKE_SUFFIXES = (*_STATE_DICT_SUFFIXES, ".bin", ".ckpt", ".safetensors", ".pkl", ".tar")


@dataclass(frozen=True)
class WeightsSpec:
    """A parsed ``--weights`` value.

    Attributes:
        kind: ``"imagenet"`` or ``"pretrained"`` (synonyms: the entry's published weights from a
            local cache), ``"random"`` (seeded init), ``"file"`` (state_dict at ``path``) or
            ``"none"`` (classic features without weights).
        path: absolute path of the state_dict file when ``kind == "file"``.
    """

    kind: WeightsKind
    path: Path | None = None

    @property
    def is_pretrained(self) -> bool:
        """``"imagenet"`` or ``"pretrained"``: the entry's published weights."""
        return self.kind in ("imagenet", "pretrained")

    def cache_token(self) -> tuple[object, ...]:
        """Hashable identity for the per-process model cache; changes when the source changes."""
        if self.kind == "file" and self.path is not None:
            stat = self.path.stat()
            return ("file", str(self.path), stat.st_mtime_ns, stat.st_size)
        if self.is_pretrained:
            return ("pretrained", hub_checkpoint_dir(), hf_hub_cache_dir())
        return (self.kind,)

    def __str__(self) -> str:
        return str(self.path) if self.kind == "file" else self.kind


def parse_weights(weights: str) -> WeightsSpec:
    """``"imagenet"`` | ``"pretrained"`` | ``"random"`` | ``"none"`` | path to an existing ``.pth``/``.pt`` file.

    Raises:
        WeightsNotFoundError: a path that ends like a weights file does not exist.
        ConfigError: a directory, an unsupported file type, or a string that is none of the above
            (a hub id such as ``"facebook/resnet"`` is refused, not guessed at).
    """
    if not isinstance(weights, str) or not weights.strip():
        raise ConfigError(
            f"weights must be 'imagenet', 'pretrained', 'random', 'none' or a file path, got {weights!r}."
        )
    word = weights.strip()
    if word.lower() in _KEYWORDS:
        return WeightsSpec(kind=word.lower())  # type: ignore[arg-type]
    path = Path(word).expanduser()
    if path.is_dir():
        raise ConfigError(f"weights path {path} is a directory; pass the state_dict file (.pth/.pt) inside it.")
    if path.is_file():
        if path.suffix.lower() not in _STATE_DICT_SUFFIXES:
            raise ConfigError(
                f"weights file {path} has suffix {path.suffix!r}; only torch state_dicts saved with "
                f"torch.save(model.state_dict(), 'x.pth') (.pth/.pt) are supported. Convert it first."
            )
        return WeightsSpec(kind="file", path=path.resolve())
    if path.suffix.lower() in _FILE_LIKE_SUFFIXES:
        raise WeightsNotFoundError(f"weights file {path} does not exist (cwd: {Path.cwd()}).")
    raise ConfigError(
        f"weights={weights!r} is not 'imagenet', 'pretrained', 'random', 'none' or an existing file. It looks like a "
        f"hub id or a mistyped path; imgclust downloads only the published weights of its registry entries "
        f"and will not guess. Download the state_dict yourself, then pass --weights /path/to/file.pth."
    )


def hub_checkpoint_dir() -> str:
    """``torch.hub.get_dir()/checkpoints`` (honours ``$TORCH_HOME`` at call time)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def expected_checkpoint_path(url: str) -> Path:
    """Where torchvision would have cached ``url``: ``$TORCH_HOME/hub/checkpoints/<basename>``."""
    return Path(hub_checkpoint_dir()) / os.path.basename(urlparse(url).path)


def find_cached_checkpoint(name: str, url: str, *, offline: str | None = None) -> Path:
    """Return the cached torchvision checkpoint for ``url`` or explain how to provide it (never downloads).

    Args:
        offline: why nothing is downloaded (``"IMGCLUST_OFFLINE is set"``), for the message.

    Raises:
        WeightsNotFoundError: naming the exact expected path, the download URL and alternatives.
    """
    path = expected_checkpoint_path(url)
    if path.is_file():
        return path
    why = f" (offline: {offline})" if offline else ""
    raise WeightsNotFoundError(
        f"Pretrained ImageNet weights for {name!r} not found: expected the file {path}. Nothing is "
        f"downloaded{why}. Either run `imgclust weights pull {name}` (or download {url}) on a machine with "
        f"internet and copy it to {path} (or point $TORCH_HOME at a directory holding "
        f"hub/checkpoints/{path.name}), or pass --weights PATH to a state_dict file, or --weights random for a "
        f"seeded random init."
    )


def torchvision_checkpoint(name: str, url: str) -> Path:
    """The cached checkpoint for ``url``; when absent, downloaded and hash-checked first, unless offline.

    Raises:
        WeightsNotFoundError: offline and not cached (the message names the expected file).
        WeightsDownloadError: the download failed or did not verify (nothing is left in the cache).
    """
    path = expected_checkpoint_path(url)
    if path.is_file():
        return path
    reason = offline_reason()
    if reason is not None:
        return find_cached_checkpoint(name, url, offline=reason)  # raises
    return download_torch_checkpoint(url, path, name=name)


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def check_torchvision_hash(path: Path, sha256: str) -> None:
    """Warn when a torchvision-named file (``<arch>-<hex8>.pth``) does not match its name's hash."""
    stem = path.stem
    prefix = stem.rsplit("-", 1)[-1] if "-" in stem else ""
    if prefix and not sha256.startswith(prefix):
        logger.warning(
            "%s: sha256 %s... does not start with %r from its torchvision file name; this is not the "
            "official checkpoint. Loading it anyway; its hash is recorded in weights_id.",
            path, sha256[:12], prefix,
        )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)`` on CPU, checked to be a tensor mapping.

    Raises:
        ConfigError: the file is not a loadable state_dict (corrupt, a pickled module, ...).
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise ConfigError(
            f"could not load {path} with torch.load(weights_only=True): {exc.__class__.__name__}: {exc}. "
            f"Save weights with torch.save(model.state_dict(), path), not the whole model."
        ) from exc
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        hint = ""
        if isinstance(obj, Mapping):
            nested = [k for k in ("state_dict", "model", "model_state_dict") if isinstance(obj.get(k), Mapping)]
            if nested:
                hint = f" It looks like a training checkpoint; save checkpoint[{nested[0]!r}] on its own."
        raise ConfigError(f"{path} does not hold a flat state_dict of tensors (got {type(obj).__name__}).{hint}")
    return dict(obj)


def _summary(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str, name: str) -> None:
    """Strictly load ``state_dict`` into ``model``, assigning its tensors (so ``model`` may be on ``meta``).

    Raises:
        ConfigError: missing/unexpected keys or shape mismatches, summarised (first 5 of each).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        hint = ""
        if unexpected and all(k.startswith("module.") for k in unexpected):
            hint = " Keys start with 'module.' (saved from DataParallel/DDP): save model.module.state_dict()."
        raise ConfigError(
            f"{source} is not a state_dict for {name!r}: missing keys {_summary(missing)}; unexpected keys "
            f"{_summary(unexpected)}; shape mismatches {_summary(mismatched)}.{hint} Pass the weights "
            f"saved from this architecture, or --weights imagenet / --weights random."
        )
    model.load_state_dict(state_dict, strict=True, assign=True)
    still_meta = [k for k, v in [*model.named_parameters(), *model.named_buffers()] if v.is_meta]
    if still_meta:
        raise ConfigError(f"{source}: tensors {_summary(still_meta)} of {name!r} were not filled by the state_dict.")


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Seed the CPU RNG for a model's random init without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_with_weights(
    constructor: Callable[[], nn.Module], spec: WeightsSpec, *, name: str, url: str | None, seed: int
) -> tuple[nn.Module, str]:
    """Build an architecture on CPU and fill it according to ``spec``.

    For ``"random"`` the constructor runs under :func:`seeded_init`. For a file it runs on the
    ``meta`` device (no wasted random init: seconds for VGG) and the checked state_dict is
    assigned, cast to float32.

    Args:
        constructor: builds the architecture, e.g. ``lambda: torchvision.models.resnet50(weights=None)``.
        spec: parsed weights value; ``"none"`` is refused for a neural net; ``"pretrained"`` is
            ``"imagenet"`` here.
        name: registry name, for messages.
        url: torchvision download URL of the ImageNet checkpoint (the cache file name, the download
            when it is not cached and not offline), or None when the entry has no pretrained weights.
        seed: seed of the random init (recorded in the weights id).

    Returns:
        ``(model, weights_id)`` with weights id ``"random-seed<k>"``, ``"imagenet:sha256:<hex>"``
        or ``"file:sha256:<hex>"``.
    """
    if spec.kind == "random":
        with seeded_init(seed):
            return constructor(), f"random-seed{seed}"
    if spec.kind == "none":
        raise ConfigError(f"{name!r} is a neural net and needs weights: use 'imagenet', 'random' or a path.")
    if spec.is_pretrained:
        if url is None:
            raise ConfigError(
                f"{name!r} has no pretrained ImageNet weights; use --weights random or --weights PATH."
            )
        path = torchvision_checkpoint(name, url)
    elif spec.path is not None:
        path = spec.path
    else:
        raise ConfigError(f"weights spec {spec!r} of kind 'file' has no path; build it with parse_weights().")
    sha = file_sha256(path)
    if spec.is_pretrained:
        check_torchvision_hash(path, sha)
    state_dict = {
        k: v.float() if v.is_floating_point() else v for k, v in read_state_dict(path).items()
    }
    with torch.device("meta"):
        model = constructor()
    load_into(model, state_dict, source=str(path), name=name)
    logger.info("%s: loaded %s weights from %s (sha256 %s)", name, spec.kind, path, sha[:12])
    return model, f"{'imagenet' if spec.is_pretrained else 'file'}:sha256:{sha}"
