"""torchvision ResNet-18/34/50/101/152 and VGG-16/19 as feature extractors.

Features are the vector that enters the fully connected head, not class scores (Kuznetsov et
al.: ImageNet classes are not the user's clusters):

* ResNet (He et al., CVPR 2016): the global-average-pooled output of the last stage, i.e.
  ``model.fc`` replaced by identity -> 512-d (18/34) or 2048-d (50/101/152).
* VGG (Simonyan & Zisserman, ICLR 2015): torchvision's VGG head flattens a 7x7x512 map into a
  25088-d vector and then runs two 4096-d FC layers. The project's method uses 512-d VGG
  features, so we take the output of ``model.features`` (last conv block after its max-pool) and
  global-average-pool it to 512-d. The FC layers are dropped.

Weights: the architecture is built with ``torchvision.models.<name>(weights=None)``; the
``IMAGENET1K_V1`` weights enum gives the checkpoint URL (cached in ``$TORCH_HOME/hub/checkpoints/``,
downloaded and hash-checked by :mod:`imgclust.extract.backbones.download` when absent and not offline) and
the normalisation. V1 is the original release the paper's table refers to; a V2 file (e.g.
``resnet50-11ad3fa6.pth``) can be used with ``--weights PATH``.

Preprocessing: short side resized to 224 (bilinear, antialiased) then the central 224x224 crop,
ImageNet mean/std. torchvision's evaluation recipe resizes to 256 first; resizing to 224 keeps the
whole short side, which matters more for clustering than the 12% zoom.
"""
from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from imgclust.extract.backbones.base import Backbone, ModuleBackbone
from imgclust.extract.backbones.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from imgclust.extract.backbones.registry import register_backbone
from imgclust.extract.backbones.weights import WeightsSpec, build_with_weights

# name -> (weights enum class name in torchvision.models, feature dim, paper)
_NETS: dict[str, tuple[str, int, str]] = {
    "resnet18": ("ResNet18_Weights", 512, "ResNet-18 (He et al., CVPR 2016)"),
    "resnet34": ("ResNet34_Weights", 512, "ResNet-34 (He et al., CVPR 2016)"),
    "resnet50": ("ResNet50_Weights", 2048, "ResNet-50 (He et al., CVPR 2016)"),
    "resnet101": ("ResNet101_Weights", 2048, "ResNet-101 (He et al., CVPR 2016)"),
    "resnet152": ("ResNet152_Weights", 2048, "ResNet-152 (He et al., CVPR 2016)"),
    "vgg16": ("VGG16_Weights", 512, "VGG-16 (Simonyan & Zisserman, ICLR 2015)"),
    "vgg19": ("VGG19_Weights", 512, "VGG-19 (Simonyan & Zisserman, ICLR 2015)"),
}
_INPUT_SIZE = 224
#: File names of the IMAGENET1K_V1 checkpoints in the torch hub cache (for the listing, without
#: importing torchvision; tests check them against the weights enums' URLs).
CHECKPOINT_FILES: dict[str, str] = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-63fe2227.pth",
    "resnet152": "resnet152-394f9c45.pth",
    "vgg16": "vgg16-397923af.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
}


def imagenet_url(name: str) -> str:
    """Download URL of ``name``'s ``IMAGENET1K_V1`` checkpoint, from torchvision's weights enum."""
    import torchvision

    return str(getattr(torchvision.models, _NETS[name][0]).IMAGENET1K_V1.url)


def _imagenet_preprocessing(weights_enum: Any) -> Preprocessing:
    """Normalisation from the weights enum's transforms (constructing them downloads nothing)."""
    transforms = weights_enum.transforms()
    return Preprocessing(
        input_size=_INPUT_SIZE,
        mode="RGB",
        mean=tuple(float(m) for m in getattr(transforms, "mean", IMAGENET_MEAN)),
        std=tuple(float(s) for s in getattr(transforms, "std", IMAGENET_STD)),
        resize="short_side_center_crop",
    )


class _VGGFeatures(nn.Module):
    """VGG conv features + global average pooling: ``(N, 3, S, S)`` -> ``(N, 512)``."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


def build_torchvision_backbone(*, name: str, weights: WeightsSpec, device: torch.device, seed: int) -> Backbone:
    """Registry factory for every entry of ``_NETS`` (see the module docstring for the layers)."""
    import torchvision  # local: keeps `import imgclust.extract.backbones` light

    enum_name, dim, _ = _NETS[name]
    weights_enum = getattr(torchvision.models, enum_name).IMAGENET1K_V1  # its url: the download when not cached
    constructor = getattr(torchvision.models, name)
    model, weights_id = build_with_weights(
        lambda: constructor(weights=None), weights, name=name, url=weights_enum.url, seed=seed
    )
    if name.startswith("resnet"):
        model.fc = nn.Identity()
        module: nn.Module = model
        layer = "avgpool (input of fc)"
    else:
        module = _VGGFeatures(cast(nn.Module, model.features))
        layer = "features + global average pool"
        del model  # drop the 4096-d FC layers (~120M parameters)
    return ModuleBackbone(
        name=name,
        module=module,
        dim=dim,
        preprocessing=_imagenet_preprocessing(weights_enum),
        weights_id=weights_id,
        device=device,
        fingerprint_extra={"layer": layer, "source": f"torchvision.models.{name}"},
    )


def _register() -> None:
    for name, (_, dim, paper) in _NETS.items():
        pool = "GAP of conv features" if name.startswith("vgg") else "pooled input of the FC head"
        register_backbone(
            name,
            build_torchvision_backbone,
            description=f"{paper}: {dim}-d {pool}; 224 RGB, ImageNet normalisation",
            default_weights="imagenet",
            dim=dim,
            input_size=_INPUT_SIZE,
            weights_source=f"torch hub: $TORCH_HOME/hub/checkpoints/{CHECKPOINT_FILES[name]} (torchvision IMAGENET1K_V1)",
        )


_register()
