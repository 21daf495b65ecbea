"""open_clip image towers as feature extractors: CLIP ViT-B/32 and ViT-L/14 (+ a tiny test model).

The embedding is CLIP's image embedding (Radford et al., ICML 2021): the image tower's output after
its projection, L2-normalised, i.e. ``model.encode_image(x, normalize=True)``. Only the image tower
(``model.visual``) is kept; the text tower is dropped after loading.

Preprocessing is open_clip's evaluation transform for the pretrained tag: for the OpenAI weights a
bicubic resize of the short side to 224, a centre crop and OpenAI's mean/std. Weights:
``"pretrained"`` reads the tag's Hugging Face hub file from the local cache (downloaded and verified
first when absent, unless offline) and builds the architecture the tag was trained with (QuickGELU for OpenAI's); ``"random"`` is a seeded
init of that architecture; a ``.pth``/``.pt`` path goes through open_clip's own loader (a full CLIP
checkpoint of this architecture). open_clip is imported inside the factory (optional extra).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from imgclust.exceptions import ConfigError
from imgclust.extract.backbones import library_entries
from imgclust.extract.backbones.base import Backbone, ModuleBackbone
from imgclust.extract.backbones.foundation import EmbeddingHead, package_version, preprocessing_from
from imgclust.extract.backbones.weights import WeightsSpec

logger = logging.getLogger(__name__)

#: Files open_clip looks for in a hub repo whose tag names no file, in its order of preference.
OPENCLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class OpenClipEntry:
    """One open_clip registry entry.

    Attributes:
        arch: open_clip model config, e.g. ``"ViT-B-32"``.
        tag: pretrained tag, e.g. ``"openai"``; its preprocessing and QuickGELU setting are used
            for every weights choice. None for test models.
        dim: embedding size ``D`` (the model config's ``embed_dim``).
        input_size: ``S`` (the vision config's ``image_size``).
        paper: model and paper, for the listing.
        hub_repo: Hugging Face hub repo of the tag's weights (open_clip's ``hf_hub``), or None.
        hub_files: accepted files in that repo, in order of preference.
        model_kwargs: extra ``open_clip.create_model`` arguments (config overrides for tiny test models).
        default_weights: ``"pretrained"``, or ``"random"`` for test models.
    """

    arch: str
    tag: str | None
    dim: int
    input_size: int
    paper: str
    hub_repo: str | None
    hub_files: tuple[str, ...] = OPENCLIP_HUB_FILES
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    default_weights: str = "pretrained"


#: A 2-layer, 64-wide, 32-px CLIP (32-d embedding): builds and runs in milliseconds.
TINY_CLIP_KWARGS: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}

OPENCLIP_ENTRIES: dict[str, OpenClipEntry] = {
    "clip-vitb32": OpenClipEntry("ViT-B-32", "openai", 512, 224, "CLIP ViT-B/32 OpenAI (Radford et al., ICML 2021)",
                                 "timm/vit_base_patch32_clip_224.openai"),
    "clip-vitl14": OpenClipEntry("ViT-L-14", "openai", 768, 224, "CLIP ViT-L/14 OpenAI (Radford et al., ICML 2021)",
                                 "timm/vit_large_patch14_clip_224.openai"),
    "openclip-test-vit": OpenClipEntry("ViT-B-32", None, 32, 32, "tiny open_clip ViT (2 layers, width 64), for tests",
                                       None, model_kwargs=TINY_CLIP_KWARGS, default_weights="random"),
}


def _create(open_clip: Any, entry: OpenClipEntry, pretrained: str | None, quick_gelu: bool) -> nn.Module:
    """``open_clip.create_model`` with no tower-level weights fetched (the flag is ``pretrained_hf`` before 3.0)."""
    import inspect

    text_flag = "pretrained_text" if "pretrained_text" in inspect.signature(open_clip.create_model).parameters \
        else "pretrained_hf"
    model: nn.Module = open_clip.create_model(
        entry.arch, pretrained=pretrained, force_quick_gelu=quick_gelu, pretrained_image=False,
        **{text_flag: False}, **entry.model_kwargs,
    )
    return model


def build_clip(name: str, entry: OpenClipEntry, weights: WeightsSpec, seed: int
               ) -> tuple[Any, nn.Module, str, dict[str, Any], bool]:
    """The whole CLIP model of ``entry`` (both towers) with ``weights``: seeded init or a checkpoint through
    open_clip's loader (a cached hub copy verified first). Shared by the image backbone and the text tower.

    Returns:
        ``(open_clip module, model, weights_id, the tag's pretrained config, quick_gelu)``.

    Raises:
        ConfigError, WeightsNotFoundError, WeightsDownloadError: as :func:`build_openclip_backbone`.
    """
    open_clip = library_entries.library_for(name, weights, "open_clip", "open_clip_torch")
    tag_cfg: dict[str, Any] = dict(open_clip.get_pretrained_cfg(entry.arch, entry.tag)) if entry.tag else {}
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    clip, weights_id = library_entries.build_with_weights(
        name, weights, seed, hub=_hub(entry), library="open_clip",
        pretrained_id=f"pretrained:open_clip:{_arch_tag(entry)}",
        create_random=lambda: _create(open_clip, entry, None, quick_gelu),
        create_from=lambda path: _create(open_clip, entry, str(path), quick_gelu),
    )
    return open_clip, clip, weights_id, tag_cfg, quick_gelu


def build_openclip_backbone(*, name: str, weights: WeightsSpec, device: torch.device, seed: int) -> Backbone:
    """Registry factory for every :data:`OPENCLIP_ENTRIES` entry (and those of :func:`register_openclip_backbone`).

    Raises:
        ConfigError: open_clip is not installed, ``weights="none"``, pretrained weights requested
            for an entry without any, or a checkpoint open_clip cannot load into this architecture.
        WeightsNotFoundError: offline and the tag's weights are not in the local hub cache.
        WeightsDownloadError: their download failed or did not verify.
    """
    entry = _ENTRIES[name]
    open_clip, clip, weights_id, tag_cfg, quick_gelu = build_clip(name, entry, weights, seed)
    visual: nn.Module = clip.visual  # type: ignore[assignment]
    del clip  # the text tower is not needed
    base_cfg = getattr(visual, "preprocess_cfg", None)  # set by open_clip.create_model
    if not isinstance(base_cfg, dict):
        raise ConfigError(f"{name!r}: open_clip {package_version('open_clip_torch')} did not attach "
                          f"preprocess_cfg to the image tower; install open_clip_torch>=2.24.")
    cfg: dict[str, Any] = dict(base_cfg)
    cfg.update({k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg})
    prep = preprocessing_from(name=name, input_size=cfg["size"], mean=cfg["mean"], std=cfg["std"],
                              interpolation=cfg["interpolation"], crop_pct=1.0, crop_mode=cfg["resize_mode"])
    return ModuleBackbone(
        name=name,
        module=EmbeddingHead(visual, l2=True),
        dim=entry.dim,
        preprocessing=prep,
        weights_id=weights_id,
        device=device,
        fingerprint_extra={"source": f"open_clip:{_arch_tag(entry)}", "quick_gelu": quick_gelu,
                           "embedding": "image tower output (projected), L2-normalised",
                           "model_kwargs": entry.model_kwargs},
        metadata_extra={"open_clip_version": package_version("open_clip_torch"), "weights_source": _source(entry)},
    )


def _hub(entry: OpenClipEntry) -> library_entries.HubFile:
    return library_entries.HubFile(entry.hub_repo, entry.hub_files,
                                   f"open_clip {entry.arch} pretrained={entry.tag!r}")


def _arch_tag(entry: OpenClipEntry) -> str:
    """``"ViT-B-32/openai"``, or the bare architecture for an entry without a tag."""
    return f"{entry.arch}/{entry.tag}" if entry.tag else entry.arch


def _source(entry: OpenClipEntry) -> str:
    if entry.hub_repo is None:
        return "random init only (no published weights)"
    return f"open_clip {entry.arch} pretrained={entry.tag} (hf-hub:{entry.hub_repo})"


_ENTRIES: dict[str, OpenClipEntry] = {}


def register_openclip_backbone(name: str, entry: OpenClipEntry) -> None:
    """Register an open_clip image tower under ``name`` (how the built-ins are added; tests add tiny ones)."""
    library_entries.register_entry(name, build_openclip_backbone, entry, _ENTRIES, weights_source=_source(entry),
                                   description=f"{entry.paper}: {entry.dim}-d image embedding (image tower output), "
                                               f"L2-normalised; {entry.input_size} RGB (open_clip {entry.arch})")


for _name, _entry in OPENCLIP_ENTRIES.items():
    register_openclip_backbone(_name, _entry)
