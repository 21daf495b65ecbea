"""One registry for backbones: ``register_backbone`` / ``create_backbone`` / ``list_backbones``.

A factory is called as ``factory(name=..., weights=WeightsSpec, device=torch.device, seed=int)``
and returns a :class:`~imgclust.extract.backbones.base.Backbone`. Built backbones are cached per process
keyed by ``(name, weights source, device, seed)``: a Dask worker builds its model once, not once
per task. Names with a prefix (``deep:<folder>``: the project's own trained encoders) go to the
provider :func:`register_prefix` registered for it, found through the ``imgclust.backbones`` entry points.

Each entry also carries what ``imgclust backbones`` lists without building anything: embedding
size, input size, where its default weights come from and the optional extra it needs
(:class:`BackboneInfo`).
"""
from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import torch

from imgclust.devices import backbone_device
from imgclust.exceptions import ConfigError, UnknownNameError
from imgclust.extract.backbones.base import Backbone
from imgclust.extract.backbones.weights import WeightsSpec, parse_weights

logger = logging.getLogger(__name__)

BackboneFactory = Callable[..., Backbone]
PrefixFactory = Callable[[str, torch.device], Backbone]
"""``factory(location, device)``: the backbone a ``<prefix><location>`` name stands for (:func:`register_prefix`)."""
ENTRY_POINT_GROUP = "imgclust.backbones"
"""Entry-point group of prefix providers: each entry is a zero-argument hook that calls :func:`register_prefix`."""
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9._-]*:$")


@dataclass(frozen=True)
class BackboneInfo:
    """What a registry entry promises, known without building it.

    Attributes:
        name: registry name.
        description: one line (embedding, input, paper).
        default_weights: weights used when none are given (``"pretrained"``, ``"imagenet"``, ...).
        dim: embedding size ``D`` (None when it depends on the weights).
        input_size: side ``S`` of the preprocessed input (None when it depends on the weights).
        weights_source: where the published weights come from (hub repo, open_clip tag, torch hub
            file), or a short note (``"none"``, ``"random init only"``).
        extra: pip extra the entry needs (``"foundation"``), or None.
    """

    name: str
    description: str
    default_weights: str
    dim: int | None = None
    input_size: int | None = None
    weights_source: str = ""
    extra: str | None = None


@dataclass(frozen=True)
class _Entry:
    factory: BackboneFactory
    info: BackboneInfo


_REGISTRY: dict[str, _Entry] = {}
_CACHE: dict[tuple[object, ...], Backbone] = {}
_PREFIXES: dict[str, PrefixFactory] = {}
_ENTRY_POINTS_LOADED = False
_LOCK = threading.RLock()


def register_backbone(
    name: str,
    factory: BackboneFactory,
    *,
    description: str,
    default_weights: str,
    dim: int | None = None,
    input_size: int | None = None,
    weights_source: str = "",
    extra: str | None = None,
) -> None:
    """Add a backbone to the registry.

    Args:
        name: lower-case ``[a-z0-9._-]`` (it becomes part of store paths).
        factory: ``factory(name=str, weights=WeightsSpec, device=torch.device, seed=int) -> Backbone``.
        description: one line for ``imgclust backbones`` listings (dim, input, paper).
        default_weights: used when ``create_backbone(weights=None)``: ``"imagenet"``, ``"pretrained"``,
            ``"random"``, ``"none"`` or a path.
        dim, input_size, weights_source, extra: listed by ``imgclust backbones`` (:class:`BackboneInfo`).

    Raises:
        ConfigError: the name is taken or not filesystem-safe.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"backbone name {name!r} must match {_NAME.pattern} (it is used in store paths).")
    if not callable(factory):
        raise ConfigError(f"factory for backbone {name!r} is not callable: {factory!r}.")
    with _LOCK:
        if name in _REGISTRY:
            raise ConfigError(f"backbone {name!r} is already registered; pick another name.")
        info = BackboneInfo(name=name, description=description, default_weights=default_weights, dim=dim,
                            input_size=input_size, weights_source=weights_source, extra=extra)
        _REGISTRY[name] = _Entry(factory=factory, info=info)


def list_backbones() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


def describe_backbones() -> dict[str, str]:
    """``{name: "description (default weights: ...)"}`` for every registered backbone, sorted by name."""
    return {
        name: f"{entry.info.description} (default weights: {entry.info.default_weights})"
        for name, entry in sorted(_REGISTRY.items())
    }


def backbone_infos() -> list[BackboneInfo]:
    """:class:`BackboneInfo` of every registered backbone, sorted by name (nothing is built or imported)."""
    return [entry.info for _, entry in sorted(_REGISTRY.items())]


def create_backbone(
    name: str, *, weights: str | None = None, device: str = "cpu", seed: int = 0
) -> Backbone:
    """Build (or fetch from the per-process cache) a registered backbone.

    Args:
        name: a name from :func:`list_backbones`, or ``<prefix><location>`` for a prefix provider
            (:func:`register_prefix`; ``deep:<folder>``), whose ``weights`` and ``seed`` are ignored.
        weights: ``"imagenet"`` / ``"pretrained"`` (the entry's published weights, from the local
            torch hub or Hugging Face hub cache, downloaded there first unless offline), ``"random"``
            (seeded init), a path to a ``.pth``/``.pt`` checkpoint, ``"none"`` (classic features), or None for the entry's
            default.
        device: torch device string.
        seed: seed of the random init (used when ``weights == "random"``).

    Returns:
        The same object for identical arguments within a process (until
        :func:`clear_backbone_cache`).

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the names).
        WeightsNotFoundError: requested weights are not on this machine (the message says where
            they are expected and how to provide them).
        ConfigError: invalid weights string (e.g. a hub id), a state_dict for another
            architecture, a bad device.
    """
    prefix = _prefix_of(name)
    if prefix is not None:
        return _create_prefixed(name, prefix, device)
    entry = _REGISTRY.get(name)
    if entry is None:
        raise UnknownNameError(f"unknown backbone {name!r}; available: {', '.join(list_backbones())}.")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an int, got {seed!r}.")
    spec: WeightsSpec = parse_weights(entry.info.default_weights if weights is None else weights)
    dev = backbone_device(device)
    cache_key = (name, spec.cache_token(), str(dev), seed)
    with _LOCK:
        cached = _CACHE.get(cache_key)
        if cached is not None:
            return cached
        logger.info("building backbone %s (weights=%s, device=%s, seed=%d)", name, spec, dev, seed)
        backbone = entry.factory(name=name, weights=spec, device=dev, seed=seed)
        if not isinstance(backbone, Backbone):
            raise ConfigError(f"factory of {name!r} returned {type(backbone).__name__}, not a Backbone.")
        _CACHE[cache_key] = backbone
        return backbone


def clear_backbone_cache() -> None:
    """Drop every cached backbone (frees their memory once no one else holds them)."""
    with _LOCK:
        _CACHE.clear()


# ----------------------------------------------------------------------------- prefixed names (``deep:<dir>``)


def register_prefix(prefix: str, factory: PrefixFactory) -> None:
    """Resolve every backbone name that starts with ``prefix`` (``"deep:"``) by ``factory(rest, device)``.

    For backbones named by a location rather than registered one by one (the project's trained encoders:
    ``deep:<folder or URL of a saved estimator>``). Packages that provide a prefix declare a zero-argument hook
    calling this function in the ``imgclust.backbones`` entry-point group, which :func:`create_backbone` loads
    the first time it meets an unknown prefix, so a fresh process (a Dask worker) resolves the name from the
    string alone and this module never imports the provider. Registering the same factory again is a no-op.

    Raises:
        ConfigError: ``prefix`` is not ``[a-z0-9][a-z0-9._-]*:``, ``factory`` is not callable, or the prefix
            is taken by another factory.
    """
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise ConfigError(f"backbone prefix {prefix!r} must match {_PREFIX.pattern} (e.g. 'deep:').")
    if not callable(factory):
        raise ConfigError(f"factory for backbone prefix {prefix!r} is not callable: {factory!r}.")
    with _LOCK:
        taken = _PREFIXES.get(prefix)
        if taken is not None and taken is not factory:
            raise ConfigError(f"backbone prefix {prefix!r} is already registered (by {taken!r}); pick another prefix.")
        _PREFIXES[prefix] = factory


def list_prefixes() -> list[str]:
    """Registered name prefixes, sorted (providers from entry points appear once one was needed)."""
    return sorted(_PREFIXES)


def _prefix_of(name: str) -> str | None:
    """``"deep:"`` for ``"deep:/some/dir"``; None for a plain registry name (those never contain ``:``)."""
    head, sep, _ = name.partition(":")
    return head + sep if sep else None


def _load_entry_points() -> None:
    """Run every hook of the :data:`ENTRY_POINT_GROUP` entry points, once per process."""
    global _ENTRY_POINTS_LOADED
    with _LOCK:
        if _ENTRY_POINTS_LOADED:
            return
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                hook = ep.load()
            except (ImportError, AttributeError) as exc:
                raise ConfigError(f"backbone provider {ep.name!r} ({ep.value}, entry point group {ENTRY_POINT_GROUP!r}) "
                                  f"cannot be loaded ({exc}); reinstall the package that declares it") from exc
            hook()
        _ENTRY_POINTS_LOADED = True


def _create_prefixed(name: str, prefix: str, device: str | torch.device) -> Backbone:
    """Build (or fetch from the per-process cache) the backbone ``<prefix><location>`` names."""
    factory = _PREFIXES.get(prefix)
    if factory is None:
        _load_entry_points()
        factory = _PREFIXES.get(prefix)
    if factory is None:
        raise UnknownNameError(f"unknown backbone {name!r}: no provider handles the prefix {prefix!r} (known prefixes: "
                               f"{', '.join(list_prefixes()) or 'none'}; providers come from the {ENTRY_POINT_GROUP!r} "
                               "entry points: reinstall imgclust, e.g. `pip install -e .`, if 'deep:' is missing).")
    dev = backbone_device(device)
    cache_key = (name, prefix[:-1], str(dev), 0)
    with _LOCK:
        cached = _CACHE.get(cache_key)
        if cached is None:
            built = factory(name[len(prefix):], dev)
            if not isinstance(built, Backbone):
                raise ConfigError(f"the {prefix!r} provider returned {type(built).__name__} for {name!r}, not a Backbone.")
            cached = _CACHE[cache_key] = built
        return cached
