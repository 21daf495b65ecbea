"""What the timm and open_clip entries share: their weights and their registration.

Weights: ``"random"`` builds the architecture under :func:`~imgclust.extract.backbones.weights.seeded_init`;
``"pretrained"`` takes the entry's Hugging Face hub file from the local cache (downloaded and verified
first when absent, unless offline) and checks the cached copy against its ETag; a path is used as
given. A file is hashed, then loaded by the library's own loader
(:func:`~imgclust.extract.backbones.foundation.load_with_library`), and the weights id names its sha256.
The library itself is an optional extra, imported only when an entry is built.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Protocol, TypeVar

from torch import nn

from imgclust.exceptions import ConfigError
from imgclust.extract.backbones.download import fetch_hf_file, verify_hf_cached_file
from imgclust.extract.backbones.foundation import FOUNDATION_EXTRA, import_optional, load_with_library
from imgclust.extract.backbones.registry import BackboneFactory, register_backbone
from imgclust.extract.backbones.weights import WeightsSpec, file_sha256, seeded_init

logger = logging.getLogger(__name__)

__all__ = ["HubFile", "LibraryEntry", "build_with_weights", "checkpoint_path", "library_for", "register_entry"]


@dataclass(frozen=True)
class HubFile:
    """Where an entry's published weights live: ``repo`` (None: there are none), accepted ``files`` in
    order of preference, and ``source``, what they are (for messages)."""

    repo: str | None
    files: tuple[str, ...]
    source: str


class LibraryEntry(Protocol):
    """What :func:`register_entry` reads of a timm or open_clip entry."""

    @property
    def dim(self) -> int: ...
    @property
    def input_size(self) -> int: ...
    @property
    def default_weights(self) -> str: ...


EntryT = TypeVar("EntryT", bound=LibraryEntry)


def register_entry(name: str, factory: BackboneFactory, entry: EntryT, entries: dict[str, EntryT], *,
                   description: str, weights_source: str) -> None:
    """Register ``entry`` under ``name`` (an optional-extra backbone built by ``factory``) and record it in ``entries``.

    Raises:
        ConfigError: the name is taken or not filesystem-safe.
    """
    register_backbone(
        name,
        factory,
        description=description,
        default_weights=entry.default_weights,
        dim=entry.dim,
        input_size=entry.input_size,
        weights_source=weights_source,
        extra=FOUNDATION_EXTRA,
    )
    entries[name] = entry


def library_for(name: str, weights: WeightsSpec, module: str, distribution: str) -> ModuleType:
    """The library that builds backbone ``name`` (``import module``), once ``weights`` are known to be usable.

    Raises:
        ConfigError: ``weights="none"`` (a neural net needs weights), or ``distribution`` is not installed.
    """
    if weights.kind == "none":
        raise ConfigError(f"{name!r} is a neural net and needs weights: use 'pretrained', 'random' or a path.")
    return import_optional(module, distribution, name=name)


def checkpoint_path(name: str, weights: WeightsSpec, hub: HubFile) -> Path:
    """The checkpoint file ``weights`` names: the hub file (pretrained; cached, else downloaded unless offline) or the path.

    Raises:
        ConfigError: pretrained weights for an entry without any, or a file spec without a path.
        WeightsNotFoundError: offline and the hub file is not cached.
        WeightsDownloadError: its download failed or did not verify.
    """
    if weights.is_pretrained:
        if hub.repo is None:
            raise ConfigError(f"{name!r} has no published pretrained weights; use --weights random or --weights PATH.")
        return fetch_hf_file(hub.repo, hub.files, name=name, source=hub.source)
    if weights.path is None:
        raise ConfigError(f"weights spec {weights!r} of kind 'file' has no path; build it with parse_weights().")
    return weights.path


def build_with_weights(name: str, weights: WeightsSpec, seed: int, *, hub: HubFile, library: str,
                       pretrained_id: str, create_random: Callable[[], nn.Module],
                       create_from: Callable[[Path], nn.Module]) -> tuple[nn.Module, str]:
    """The model with ``weights`` (``"random"`` or a checkpoint, not ``"none"``: see :func:`library_for`) and its weights id.

    Args:
        hub: the entry's published weights (for ``"pretrained"``).
        library: the loader's name, for messages (``"timm"``, ``"open_clip"``).
        pretrained_id: the weights id of the published weights, before ``":sha256:<hex>"``.
        create_random: builds the architecture with random init (run under ``seeded_init(seed)``).
        create_from: builds it with the library loading a checkpoint file (also run under ``seeded_init(seed)``:
            some loaders run the, then overwritten, init first).

    Returns:
        ``(model, weights_id)``: ``"random-seed<seed>"``, ``"<pretrained_id>:sha256:<hex>"`` or ``"file:sha256:<hex>"``.

    Raises:
        ConfigError, WeightsNotFoundError, WeightsDownloadError: as :func:`checkpoint_path` and
            :func:`~imgclust.extract.backbones.foundation.load_with_library`.
    """
    if weights.kind == "random":
        with seeded_init(seed):
            return create_random(), f"random-seed{seed}"
    path = checkpoint_path(name, weights, hub)
    sha = file_sha256(path)
    if weights.is_pretrained:
        verify_hf_cached_file(path, sha256=sha)  # a corrupt or truncated cache copy is refused
    with seeded_init(seed):
        model = load_with_library(lambda: create_from(path), path, name=name, library=library, sha256=sha)
    weights_id = f"{pretrained_id}:sha256:{sha}" if weights.is_pretrained else f"file:sha256:{sha}"
    logger.info("%s: loaded %s weights from %s (sha256 %s)", name, weights, path, sha[:12])
    return model, weights_id
