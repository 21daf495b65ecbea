"""``tinycnn``: a 3-conv random-init network, 32x32 RGB -> 64-d, so the whole path runs on CPU in ms.

Registered like a real backbone (timm's test-model habit); default weights ``"random"`` (seeded).
A state_dict path works too, so a test can exercise the file-loading path cheaply.
"""
from __future__ import annotations

import torch
from torch import nn

from imgclust.extract.backbones.base import Backbone, ModuleBackbone
from imgclust.extract.backbones.preprocessing import Preprocessing
from imgclust.extract.backbones.registry import register_backbone
from imgclust.extract.backbones.weights import WeightsSpec, build_with_weights

TINYCNN_DIM = 64


class TinyCNN(nn.Module):
    """``(N, 3, 32, 32)`` -> ``(N, 64)``: conv16-pool-conv32-pool-conv64-global average pool."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, TINYCNN_DIM, 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TinyCNNBackbone(ModuleBackbone):
    """Key without the input size (fixed at 32): ``"tinycnn-random0"``."""

    def key(self) -> str:
        return super().key().removesuffix(f"-{self.preprocessing.input_size}")


def build_tinycnn(*, name: str, weights: WeightsSpec, device: torch.device, seed: int) -> Backbone:
    """Registry factory: seeded random init, or a state_dict file (no ImageNet weights exist)."""
    model, weights_id = build_with_weights(TinyCNN, weights, name=name, url=None, seed=seed)
    return TinyCNNBackbone(
        name=name,
        module=model,
        dim=TINYCNN_DIM,
        preprocessing=Preprocessing(32, "RGB", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "squash"),
        weights_id=weights_id,
        device=device,
        fingerprint_extra={"arch": "conv16-conv32-conv64-gap"},
    )


register_backbone(
    "tinycnn",
    build_tinycnn,
    description="tiny 3-conv CNN for tests: 32x32 RGB -> 64-d, random init",
    default_weights="random",
    dim=TINYCNN_DIM,
    input_size=32,
    weights_source="random init only (no published weights)",
)
