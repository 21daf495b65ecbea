"""Backbones: one registry of feature extractors, each carrying its preprocessing and dim.

Usage::

    bb = create_backbone("resnet50", weights="imagenet", device="cuda")
    batch = torch.stack([bb.preprocess(img) for img in images])   # (N, C, S, S) float32
    feats = bb.embed(batch)                                        # (N, D) float32 numpy
    store_key, meta = bb.key(), bb.metadata()

Built-ins (importing this package registers them): torchvision ``resnet18/34/50/101/152``,
``vgg16``, ``vgg19``; timm ``dinov2-vits14``, ``dinov2-vitb14``, ``siglip-vitb16``,
``convnext-tiny``, ``efficientnet-b0``; open_clip ``clip-vitb32``, ``clip-vitl14`` (these need
``pip install 'imgclust[foundation]'``); classic ``pixels``, ``pixels-rgb32``, ``hog``,
``colorhist``, ``layout``; test ``tinycnn``, ``timm-test-vit``, ``openclip-test-vit``. The project's own
encoders register with :func:`register_backbone`; :func:`backbone_infos` lists each entry's
embedding size, input size and weights source without building anything.
"""
from __future__ import annotations

from imgclust.extract.backbones import (  # noqa: F401  (registration)
    classic,
    openclip_nets,
    timm_nets,
    tinycnn,
    torchvision_nets,
)
from imgclust.extract.backbones.base import Backbone, ModuleBackbone
from imgclust.extract.backbones.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    preprocess_image,
)
from imgclust.extract.backbones.registry import (
    BackboneInfo,
    backbone_infos,
    clear_backbone_cache,
    create_backbone,
    describe_backbones,
    list_backbones,
    register_backbone,
)
from imgclust.extract.backbones.weights import WeightsSpec, parse_weights

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "BackboneInfo",
    "ModuleBackbone",
    "Preprocessing",
    "WeightsSpec",
    "backbone_infos",
    "clear_backbone_cache",
    "create_backbone",
    "describe_backbones",
    "list_backbones",
    "parse_weights",
    "preprocess_image",
    "register_backbone",
]
