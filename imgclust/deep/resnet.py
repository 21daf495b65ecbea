"""A ResNet-18 encoder for small images, the CIFAR variant SimCLR trains on 32x32 images.

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (basic blocks, two per
stage, widths ``w, 2w, 4w, 8w``); Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive
Learning of Visual Representations", ICML 2020, Appendix B.9: on CIFAR-10 the ImageNet stem (7x7 conv of
stride 2, then a max-pool) is replaced by a 3x3 conv of stride 1 with no pool, because a 32-pixel image
would be 8 pixels wide before the first block. The same holds for 28x28 Fashion-MNIST: the stages run at
28, 14, 7 and 4 pixels.

It is ``ContrastiveNet(encoder="resnet18")``'s encoder (:mod:`imgclust.deep.networks`); torchvision's
``resnet18`` fixes the base width at 64 and the ImageNet stem, so it is written out here.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["BasicBlock", "resnet18_encoder"]


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with an identity (or 1x1 conv + BatchNorm) shortcut:
    ``(N, c_in, H, W) -> (N, c_out, ceil(H / stride), ceil(W / stride))``."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18_encoder(in_channels: int, width: int = 64) -> nn.Sequential:
    """ResNet-18 with the CIFAR stem, global-average-pooled: ``(N, in_channels, H, W) -> (N, 8·width)``.

    Stem: 3x3 conv (stride 1) + BatchNorm + ReLU to ``width`` channels; then four stages of two
    :class:`BasicBlock` with ``width, 2·width, 4·width, 8·width`` channels at strides 1, 2, 2, 2; then
    the global average pool. ``width=64`` is the published network (11.2M parameters with one input channel).
    """
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                               nn.ReLU(inplace=True)]
    c_in = width
    for i, stride in enumerate((1, 2, 2, 2)):
        c_out = width * 2 ** i
        layers += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)
