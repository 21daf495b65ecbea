"""The backbone contract: decoded image -> preprocess -> batch -> embed -> ``(N, D)`` float32.

Subclasses implement :meth:`Backbone._forward` (a batch on the backbone's device -> ``(N, D)``);
the base class owns device placement, ``torch.inference_mode``, AMP and ``channels_last``, the
store key, the fingerprint and the Parquet metadata, so every backbone behaves the same.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgclust.devices import mixed_precision
from imgclust.exceptions import ConfigError, ImageDecodeError
from imgclust.extract.backbones.preprocessing import Preprocessing, preprocess_image
from imgclust.extract.images import DEFAULT_MAX_PIXELS, decode_image

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_key(text: str) -> str:
    """Make ``text`` usable as one path component: only ``[A-Za-z0-9._-]``, no leading dot."""
    cleaned = _UNSAFE.sub("-", text).strip("-")
    return cleaned.lstrip(".") or "unnamed"


def weights_tag(weights_id: str) -> str:
    """Short, filesystem-safe form of a weights id for the store key.

    ``"imagenet:sha256:<hex>"`` -> ``"imagenet"``, ``"pretrained:<source>:sha256:<hex>"`` ->
    ``"pretrained"``, ``"random-seed0"`` -> ``"random0"``, ``"file:sha256:<hex>"`` ->
    ``"file-<first 12 hex>"``, ``"none"`` -> ``""``.
    """
    if weights_id == "none":
        return ""
    if weights_id.startswith("imagenet:"):
        return "imagenet"
    if weights_id.startswith("pretrained:"):
        return "pretrained"
    if weights_id.startswith("random-seed"):
        return "random" + weights_id[len("random-seed"):]
    if weights_id.startswith("file:sha256:"):
        return "file-" + weights_id[len("file:sha256:"):][:12]
    return safe_key(weights_id)


class Backbone(ABC):
    """A feature extractor registered by name.

    Attributes:
        name: registry name, e.g. ``"resnet50"``.
        dim: embedding dimension ``D``.
        representation_dim: the leading columns a model clusters (``dim`` unless the backbone appends
            statistics for the novelty score after its representation, as the ``deep:`` extractor does).
        preprocessing: input contract (size ``S``, colour mode, normalisation, resize policy).
        weights_id: identity of the weights actually loaded: ``"random-seed<k>"``,
            ``"imagenet:sha256:<hex>"`` (torchvision), ``"pretrained:<hub repo or tag>:sha256:<hex>"``
            (timm / open_clip), ``"file:sha256:<hex>"``, or ``"none"`` for classic features.
        device: where :meth:`embed` computes.
        near_duplicate_space: whether a high cosine similarity in this space means "a version of the same
            picture" (pixels, descriptors, pretrained networks), or only "the same kind of picture" (an encoder
            trained on the corpus to pull different images of one kind together: the ``deep:`` extractor).
            Recorded in the feature files' metadata; near-duplicate searches refuse spaces where it is false
            (:func:`imgclust.models.dedup.near_duplicate_problem`).
    """

    #: Autocast to bfloat16 and use channels_last on CUDA (neural nets); classic features: False.
    uses_amp: bool = True

    def __init__(
        self, *, name: str, dim: int, preprocessing: Preprocessing, weights_id: str, device: torch.device,
        representation_dim: int | None = None, near_duplicate_space: bool = True,
    ) -> None:
        if representation_dim is not None and not 0 < representation_dim <= dim:
            raise ConfigError(f"{name}: representation_dim={representation_dim} must be in 1..dim={dim}")
        self.name = name
        self.dim = dim
        self.representation_dim = dim if representation_dim is None else representation_dim
        self.near_duplicate_space = near_duplicate_space
        self.preprocessing = preprocessing
        self.weights_id = weights_id
        self.device = device

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, weights_id={self.weights_id!r}, "
            f"input={self.preprocessing.describe()!r}, device={str(self.device)!r})"
        )

    @abstractmethod
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, C, S, S)`` float32 on ``self.device`` -> ``(N, D)`` (any float dtype)."""

    def _fingerprint_extra(self) -> dict[str, Any]:
        """Backbone-specific settings that change the output (layer choice, bins, ...)."""
        return {}

    def key(self) -> str:
        """Extractor key for the store path ``features/<key>/``, e.g. ``"resnet50-imagenet-224"``; a backbone
        that appends novelty statistics says how many (``"...-stats256"``), so its rows never share a folder
        with the representation-only rows of the same weights."""
        parts = [self.name, weights_tag(self.weights_id), str(self.preprocessing.input_size)]
        if self.representation_dim != self.dim:
            parts.append(f"stats{self.dim - self.representation_dim}")
        return safe_key("-".join(p for p in parts if p))

    def fingerprint(self) -> str:
        """First 16 hex chars of the sha256 of everything that determines the output.

        Covers name, weights id (so the sha256 of the checkpoint file, or the seed: other weights
        re-extract instead of mixing spaces), preprocessing, dim and :meth:`_fingerprint_extra`; not
        the torch version (recorded in :meth:`metadata` instead, so an upgrade does not orphan the store).
        """
        payload = {
            "name": self.name,
            "weights_id": self.weights_id,
            "preprocessing": self.preprocessing.fingerprint_fields(),
            "dim": self.dim,
            "extra": self._fingerprint_extra(),
        }
        if self.representation_dim != self.dim:  # only then, so other backbones keep their fingerprints
            payload["representation_dim"] = self.representation_dim
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """uint8 ``(H, W)`` or ``(H, W, 3)`` -> float32 ``(C, S, S)`` normalised (see ``preprocess_image``)."""
        return preprocess_image(image, self.preprocessing)

    def decode(self, data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
        """Encoded image bytes -> float32 ``(C, S, S)``: :func:`~imgclust.extract.images.decode_image` in this
        backbone's mode (large JPEGs decoded at a reduced scale near its resize side), then :meth:`preprocess`.
        Raises :class:`~imgclust.exceptions.ImageDecodeError` with the reason a file cannot be used."""
        prep = self.preprocessing
        return self.preprocess(decode_image(data, mode=prep.mode, max_pixels=max_pixels, target_side=prep.resize_size))

    def embed_files(self, paths: Iterable[str | os.PathLike[str]], *, batch_size: int = 64) -> np.ndarray:
        """Embed local image files, in the order given: float32 ``(n, D)``.

        For a folder in a script or a notebook; a corpus goes through the pipeline instead
        (:func:`imgclust.extract.shard.extract_shard`), which quarantines a bad file with its reason where this raises
        :class:`~imgclust.exceptions.ImageDecodeError` naming it."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        blocks, batch = [], []
        for path in paths:
            try:
                batch.append(self.decode(Path(path).read_bytes()))
            except ImageDecodeError as err:
                raise ImageDecodeError(err.kind, f"{path}: {err.message}") from err
            if len(batch) == batch_size:
                blocks.append(self.embed(torch.stack(batch)))
                batch = []
        if batch:
            blocks.append(self.embed(torch.stack(batch)))
        return np.concatenate(blocks) if blocks else np.zeros((0, self.dim), np.float32)

    def embed(self, batch: torch.Tensor) -> np.ndarray:
        """Embed a batch of preprocessed images.

        Args:
            batch: float32 ``(N, C, S, S)`` (a ``torch.stack`` of :meth:`preprocess` outputs), on
                any device.

        Returns:
            float32 numpy array ``(N, D)`` on the host.

        Runs under ``torch.inference_mode``; on CUDA (neural nets only) with bfloat16 autocast
        and ``channels_last`` memory format.
        """
        prep = self.preprocessing
        expected = (prep.channels, prep.input_size, prep.input_size)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise ConfigError(
                f"{self.name} expects a batch of shape (N, {', '.join(map(str, expected))}), "
                f"got {tuple(batch.shape)}; build it with torch.stack([backbone.preprocess(img), ...])."
            )
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        on_cuda = self.device.type == "cuda"
        with torch.inference_mode():
            if on_cuda and self.uses_amp:
                x = batch.to(self.device, dtype=torch.float32, non_blocking=True).contiguous(
                    memory_format=torch.channels_last
                )
                with mixed_precision(self.device):
                    out = self._forward(x)
            else:
                out = self._forward(batch.to(self.device, dtype=torch.float32))
            out = out.reshape(out.shape[0], -1).float().cpu()
        if out.shape[1] != self.dim:
            raise ConfigError(f"{self.name} produced {out.shape[1]}-d features, declared dim={self.dim}.")
        return out.numpy()

    def metadata(self) -> dict[str, str]:
        """String key/values for the feature Parquet file's metadata."""
        from importlib.metadata import PackageNotFoundError, version

        try:  # package metadata, not `import torchvision` (seconds of import for one string)
            tv_version = version("torchvision")
        except PackageNotFoundError:
            tv_version = "not installed"
        prep = self.preprocessing
        return {
            "extractor": self.name,
            "extractor_key": self.key(),
            "fingerprint": self.fingerprint(),
            "weights_id": self.weights_id,
            "dim": str(self.dim),
            "representation_dim": str(self.representation_dim),
            "near_duplicate_space": "true" if self.near_duplicate_space else "false",
            "input_size": str(prep.input_size),
            "mode": prep.mode,
            "resize": prep.resize,
            "mean": json.dumps(list(prep.mean)),
            "std": json.dumps(list(prep.std)),
            "interpolation": prep.interpolation,
            "crop_pct": str(prep.crop_pct),
            "torch_version": torch.__version__,
            "torchvision_version": tv_version,
            **self._metadata_extra(),
        }

    def _metadata_extra(self) -> dict[str, str]:
        """Backbone-specific metadata (e.g. the timm / open_clip version); strings only."""
        return {}


class ModuleBackbone(Backbone):
    """A backbone whose features are ``module(batch)``: torchvision, timm, open_clip nets, tinycnn, own encoders.

    The module is put in eval mode with gradients off and moved to ``device`` (``channels_last``
    on CUDA). ``fingerprint_extra`` records choices that change the output (e.g. which layer);
    ``metadata_extra`` adds string key/values to :meth:`metadata` (e.g. the library version).
    """

    def __init__(
        self,
        *,
        name: str,
        module: nn.Module,
        dim: int,
        preprocessing: Preprocessing,
        weights_id: str,
        device: torch.device,
        fingerprint_extra: dict[str, Any] | None = None,
        metadata_extra: dict[str, str] | None = None,
        representation_dim: int | None = None,
        near_duplicate_space: bool = True,
    ) -> None:
        super().__init__(
            name=name, dim=dim, preprocessing=preprocessing, weights_id=weights_id, device=device,
            representation_dim=representation_dim, near_duplicate_space=near_duplicate_space,
        )
        module = module.eval().requires_grad_(False).to(device)
        if device.type == "cuda":
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.module = module
        self._extra = dict(fingerprint_extra or {})
        self._meta_extra = dict(metadata_extra or {})

    def _fingerprint_extra(self) -> dict[str, Any]:
        return self._extra

    def _metadata_extra(self) -> dict[str, str]:
        return self._meta_extra

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.module(batch)
