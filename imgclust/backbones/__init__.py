"""Backbones: one registry of feature extractors, each carrying its preprocessing and dim.

Usage::

    bb = create_backbone("resnet50", weights="imagenet", device="cuda")
    batch = torch.stack([bb.preprocess(img) for img in images])   # (N, C, S, S) float32
    feats = bb.embed(batch)                                        # (N, D) float32 numpy
    store_key, meta = bb.key(), bb.metadata()

Built-ins (importing this package registers them): torchvision ``resnet18/34/50/101/152``,
``vgg16``, ``vgg19``; classic ``pixels``, ``pixels-rgb32``, ``hog``, ``colorhist``; test
``tinycnn``. The project's own encoders register with :func:`register_backbone`.
"""
from __future__ import annotations

from imgclust.backbones import classic, tinycnn, torchvision_nets  # noqa: F401  (registration)
from imgclust.backbones.base import Backbone, ModuleBackbone
from imgclust.backbones.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, preprocess_image
from imgclust.backbones.registry import (
    clear_backbone_cache,
    create_backbone,
    describe_backbones,
    list_backbones,
    register_backbone,
)
from imgclust.backbones.weights import WeightsSpec, parse_weights

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "ModuleBackbone",
    "Preprocessing",
    "WeightsSpec",
    "clear_backbone_cache",
    "create_backbone",
    "describe_backbones",
    "list_backbones",
    "parse_weights",
    "preprocess_image",
    "register_backbone",
]
