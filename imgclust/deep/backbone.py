"""A trained deep clusterer's encoder as a feature extractor (``deep:<saved estimator folder>``).

So the normal extract -> reduce -> cluster -> label path can use an encoder trained by
``flows/refine.py``: ``ExtractConfig(extractor="deep:s3://bucket/store/deep/<run>")``. The backbone registry
does not import this package: :func:`register` is declared in ``pyproject.toml`` under the
``imgclust.backbones`` entry points, and :func:`imgclust.extract.backbones.registry.create_backbone` calls it the first
time a process meets the ``deep:`` prefix.
"""
from __future__ import annotations

import hashlib
import logging

import fsspec
import torch
from torch import nn

from imgclust.deep.networks import extractor_method
from imgclust.exceptions import ConfigError
from imgclust.extract.backbones.base import Backbone, ModuleBackbone
from imgclust.extract.backbones.preprocessing import Preprocessing
from imgclust.extract.backbones.registry import register_prefix

log = logging.getLogger(__name__)


class _Encode(nn.Module):
    """What the extractor stores as a module: ``network.encode_with_statistics`` when the network has novelty
    statistics (:meth:`imgclust.deep.base.DeepEstimator.extractor_features`), else ``network.encode``:
    (N, C, H, W) -> (N, D)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.method = extractor_method(network)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.network, self.method)(x)  # type: ignore[no-any-return]


def deep_backbone(location: str, device: torch.device) -> Backbone:
    """Load the estimator saved at ``location`` and wrap its encoder (weights identity = sha256)."""
    from imgclust.deep.methods import load_deep

    est = load_deep(location)
    fs, root = fsspec.core.url_to_fs(location)
    sha = hashlib.sha256(fs.cat_file(f"{root.rstrip('/')}/weights.pt")).hexdigest()
    shape = list(est.input_shape_)
    channels = 1 if len(shape) == 2 else int(shape[2])
    std = 1.0 / (255.0 * float(est.input_scale_))  # preprocess: (x/255 - 0) / std == x * input_scale
    prep = Preprocessing(input_size=int(shape[0]), mode="L" if channels == 1 else "RGB",
                         mean=(0.0,) * channels, std=(std,) * channels, resize="squash")
    if shape[0] != shape[1]:
        raise ConfigError(f"deep extractor at {location} was trained on {shape[0]}x{shape[1]} images; only square "
                          "inputs are supported")
    dim, representation = est.extractor_dims()
    log.info("deep extractor %s (%s, %d-d representation, %d columns of novelty statistics) from %s", sha[:12],
             type(est).__name__, representation, dim - representation, location)
    return ModuleBackbone(name="deep", module=_Encode(est.network_), dim=dim, representation_dim=representation,
                          preprocessing=prep, weights_id=f"file:sha256:{sha}", device=device,
                          fingerprint_extra={"estimator": type(est).__name__},
                          near_duplicate_space=False)  # trained to pull one kind's images together


DEEP_PREFIX = "deep:"


def register() -> None:
    """Entry-point hook (group ``imgclust.extract.backbones``): resolve ``deep:<location>`` with :func:`deep_backbone`."""
    register_prefix(DEEP_PREFIX, deep_backbone)
