"""timm image models as feature extractors: DINOv2, SigLIP, ConvNeXt, EfficientNet (+ a tiny test ViT).

Each entry is a timm model whose classifier is removed (``reset_classifier(0)``), so ``model(x)`` is
the embedding the model is meant to give, not class scores:

* DINOv2 ViT-S/14, ViT-B/14 (Oquab et al., TMLR 2024): the CLS token after the final norm, at 224 px
  (timm resamples the 518-px position embedding on load) with the DINOv2 repository's evaluation
  transform (bicubic resize to 256, centre crop 224, ImageNet mean/std).
* SigLIP ViT-B/16 (Zhai et al., ICCV 2023): the image tower's attention-pooled (MAP) output, which
  *is* SigLIP's image embedding (no projection), L2-normalised for cosine; big_vision's input:
  bicubic squash to 224, mean/std 0.5.
* ConvNeXt-T (Liu et al., CVPR 2022) and EfficientNet-B0 (Tan & Le, ICML 2019): the pooled (for
  ConvNeXt also layer-normed) input of the classifier, with timm's evaluation transform.

Preprocessing comes from ``timm.data.resolve_model_data_config`` on the built model (input size,
mean/std, interpolation, crop_pct, crop mode), after the overrides an entry states. Weights:
``"pretrained"`` reads the entry's Hugging Face hub file from the local cache (downloaded and verified
first when absent, unless offline); ``"random"`` is a seeded init; a ``.pth``/``.pt`` path goes through timm's own loader (so e.g. the
official DINOv2 checkpoints are converted). Checkpoints load strictly into the published
architecture, classifier included (timm itself loads non-strictly when the class count changes, which
would leave a wrong file's layers silently random), and the classifier is dropped afterwards. timm
is imported inside the factory (optional extra).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from imgclust.extract.backbones import library_entries
from imgclust.extract.backbones.base import Backbone, ModuleBackbone
from imgclust.extract.backbones.foundation import EmbeddingHead, package_version, preprocessing_from
from imgclust.extract.backbones.weights import WeightsSpec

logger = logging.getLogger(__name__)

#: Files timm looks for in a hub repo, in its order of preference.
TIMM_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class TimmEntry:
    """One timm registry entry.

    Attributes:
        model: timm name with its pretrained tag, e.g. ``"vit_small_patch14_dinov2.lvd142m"``.
        dim: embedding size ``D`` (the model's output once its classifier is removed).
        input_size: ``S`` after ``data_overlay``.
        paper: model and paper, for the listing.
        embedding: what the vector is (e.g. ``"CLS token"``); part of the fingerprint.
        hub_repo: Hugging Face hub repo of the published weights, or None when there are none.
        l2: L2-normalise the embedding (models meant for cosine similarity).
        model_kwargs: extra ``timm.create_model`` arguments (e.g. ``img_size``).
        data_overlay: overrides of the pretrained config's preprocessing keys (``input_size``,
            ``crop_pct``, ``crop_mode``, ...).
        default_weights: ``"pretrained"``, or ``"random"`` for test models.
    """

    model: str
    dim: int
    input_size: int
    paper: str
    embedding: str
    hub_repo: str | None
    l2: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_overlay: dict[str, Any] = field(default_factory=dict)
    default_weights: str = "pretrained"


_DINOV2_EVAL = {"input_size": (3, 224, 224), "crop_pct": 0.875, "crop_mode": "center"}
TIMM_ENTRIES: dict[str, TimmEntry] = {
    "dinov2-vits14": TimmEntry(
        "vit_small_patch14_dinov2.lvd142m", 384, 224, "DINOv2 ViT-S/14 (Oquab et al., TMLR 2024)",
        "CLS token after the final norm", "timm/vit_small_patch14_dinov2.lvd142m",
        model_kwargs={"img_size": 224}, data_overlay=_DINOV2_EVAL,
    ),
    "dinov2-vitb14": TimmEntry(
        "vit_base_patch14_dinov2.lvd142m", 768, 224, "DINOv2 ViT-B/14 (Oquab et al., TMLR 2024)",
        "CLS token after the final norm", "timm/vit_base_patch14_dinov2.lvd142m",
        model_kwargs={"img_size": 224}, data_overlay=_DINOV2_EVAL,
    ),
    "siglip-vitb16": TimmEntry(
        "vit_base_patch16_siglip_224.webli", 768, 224, "SigLIP ViT-B/16 WebLI (Zhai et al., ICCV 2023)",
        "MAP-pooled image embedding, L2-normalised", "timm/vit_base_patch16_siglip_224.webli",
        l2=True, data_overlay={"crop_pct": 1.0, "crop_mode": "squash"},
    ),
    "convnext-tiny": TimmEntry(
        "convnext_tiny.in12k_ft_in1k", 768, 224, "ConvNeXt-T IN-12k->1k (Liu et al., CVPR 2022)",
        "pooled, layer-normed input of the classifier", "timm/convnext_tiny.in12k_ft_in1k",
    ),
    "efficientnet-b0": TimmEntry(
        "efficientnet_b0.ra4_e3600_r224_in1k", 1280, 224, "EfficientNet-B0 (Tan & Le, ICML 2019)",
        "pooled input of the classifier", "timm/efficientnet_b0.ra4_e3600_r224_in1k",
    ),
    "timm-test-vit": TimmEntry(
        "test_vit.r160_in1k", 64, 160, "timm's tiny test ViT, for tests", "pooled token",
        "timm/test_vit.r160_in1k", default_weights="random",
    ),
}


def _create(timm: Any, entry: TimmEntry, *, overlay: dict[str, Any], pretrained: bool) -> torch.nn.Module:
    """The published architecture (its own class count, so a checkpoint loads strictly), then headless."""
    model = timm.create_model(entry.model, pretrained=pretrained, pretrained_cfg_overlay=overlay, **entry.model_kwargs)
    model.reset_classifier(0)
    return model  # type: ignore[no-any-return]


def build_timm_backbone(*, name: str, weights: WeightsSpec, device: torch.device, seed: int) -> Backbone:
    """Registry factory for every :data:`TIMM_ENTRIES` entry (and entries added by :func:`register_timm_backbone`).

    Raises:
        ConfigError: timm is not installed, ``weights="none"``, pretrained weights requested for an
            entry without any, or a checkpoint file timm cannot load into this architecture.
        WeightsNotFoundError: offline and the published weights are not in the local hub cache.
        WeightsDownloadError: their download failed or did not verify.
    """
    entry = _ENTRIES[name]
    timm = library_entries.library_for(name, weights, "timm", "timm")
    overlay = dict(entry.data_overlay)
    net, weights_id = library_entries.build_with_weights(
        name, weights, seed, hub=_hub(entry), library="timm", pretrained_id=f"pretrained:hf-hub:{entry.hub_repo}",
        create_random=lambda: _create(timm, entry, overlay=overlay, pretrained=False),
        create_from=lambda path: _create(timm, entry, overlay={**overlay, "file": str(path), "source": "file"},
                                         pretrained=True),  # pretrained=True runs the (then overwritten) init first
    )
    cfg = timm.data.resolve_model_data_config(net)
    prep = preprocessing_from(name=name, input_size=cfg["input_size"], mean=cfg["mean"], std=cfg["std"],
                              interpolation=cfg["interpolation"], crop_pct=cfg["crop_pct"],
                              crop_mode=cfg.get("crop_mode", "center"))
    return ModuleBackbone(
        name=name,
        module=EmbeddingHead(net, l2=entry.l2),
        dim=entry.dim,
        preprocessing=prep,
        weights_id=weights_id,
        device=device,
        fingerprint_extra={"source": f"timm:{entry.model}", "embedding": entry.embedding, "l2": entry.l2,
                           "model_kwargs": entry.model_kwargs},
        metadata_extra={"timm_version": package_version("timm"), "weights_source": _source(entry)},
    )


def _hub(entry: TimmEntry) -> library_entries.HubFile:
    return library_entries.HubFile(entry.hub_repo, TIMM_HUB_FILES, f"timm {entry.model}")


def _source(entry: TimmEntry) -> str:
    return f"hf-hub:{entry.hub_repo}" if entry.hub_repo else "random init only (no published weights)"


_ENTRIES: dict[str, TimmEntry] = {}


def register_timm_backbone(name: str, entry: TimmEntry) -> None:
    """Register a timm model under ``name`` (how the built-ins are added; tests add tiny ones)."""
    norm = ", L2-normalised" if entry.l2 and "L2" not in entry.embedding else ""
    library_entries.register_entry(name, build_timm_backbone, entry, _ENTRIES, weights_source=_source(entry),
                                   description=f"{entry.paper}: {entry.dim}-d {entry.embedding}{norm}; "
                                               f"{entry.input_size} RGB (timm {entry.model})")


for _name, _entry in TIMM_ENTRIES.items():
    register_timm_backbone(_name, _entry)
