"""open_clip text towers: the half of a CLIP model that :mod:`imgclust.extract.backbones.openclip_nets` drops.

CLIP (Radford et al., ICML 2021) embeds images and texts into one space where the cosine of an image
and a caption measures how well the caption describes the image; zero-shot classification compares
an image with the texts of candidate labels written into prompts such as ``"a photo of a {label}."``
(the paper's prompt engineering, section 3.1.4), averaging the text embeddings of several prompts
per label (prompt ensembling) when more than one template is given.

:func:`build_text_tower` builds the text tower of an open_clip registry entry (``OPENCLIP_ENTRIES`` or
one added with ``register_openclip_backbone``) from the same weights choice as the image tower:
``"pretrained"`` (the tag's cached hub file), ``"random"`` (the same seeded init of the whole model,
so both towers of one seed belong together) or a ``.pth``/``.pt`` path. Its ``weights_id`` has the
image tower's format, and :func:`check_same_weights` refuses to pair towers of different weights:
similarities across two models' spaces mean nothing. open_clip is imported inside the builder.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imgclust.exceptions import ConfigError
from imgclust.extract.backbones.openclip_nets import _ENTRIES, OPENCLIP_ENTRIES, build_clip
from imgclust.extract.backbones.weights import parse_weights

logger = logging.getLogger(__name__)

#: Radford et al. (2021)'s basic prompt; ``{label}`` is replaced by each vocabulary entry.
DEFAULT_TEMPLATE = "a photo of a {label}."
_SHA = re.compile(r"sha256:([0-9a-f]{64})")


def is_openclip_backbone(name: str) -> bool:
    """Whether ``name`` is a registered open_clip (CLIP-family) entry, i.e. has a text tower."""
    return name in _ENTRIES or name in OPENCLIP_ENTRIES


def weights_digest(weights_id: str) -> str:
    """The part of a weights id that identifies the weights: ``"sha256:<hex>"`` of the loaded file when
    the id carries one (``pretrained:...:sha256:<hex>``, ``file:sha256:<hex>``), else the id itself
    (``random-seed<k>``)."""
    found = _SHA.search(weights_id)
    return f"sha256:{found.group(1)}" if found else weights_id


def check_same_weights(image_weights_id: str, text_weights_id: str, *, what: str) -> None:
    """Refuse a text tower whose weights are not those of the image embeddings.

    Raises:
        ConfigError: the digests (:func:`weights_digest`) differ.
    """
    if weights_digest(image_weights_id) != weights_digest(text_weights_id):
        raise ConfigError(
            f"{what}: the image embeddings come from weights {image_weights_id!r} but the text tower was built "
            f"from {text_weights_id!r}; text-image similarities across two models' spaces are meaningless. "
            "Pass the weights the features were extracted with (--weights), or name a backbone to embed a "
            "sample of the images again (--backbone)."
        )


@dataclass
class TextTower:
    """A CLIP text tower: texts -> ``(n, D)`` L2-normalised float32 embeddings.

    Attributes:
        name: registry name of the CLIP entry, e.g. ``"clip-vitb32"``.
        weights_id: identity of the loaded weights, in the image tower's format.
        logit_scale: CLIP's learned temperature ``exp(t)`` (100 for the OpenAI weights): cosine
            similarities times this are the logits of the model's zero-shot softmax.
        model: the open_clip model with its image tower removed.
        tokenizer: open_clip's tokenizer for the architecture, cut at the model's context length.
        device: where :meth:`encode` computes.
    """

    name: str
    weights_id: str
    logit_scale: float
    model: nn.Module
    tokenizer: Any
    device: torch.device

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """``model.encode_text`` of ``texts`` (tokenised by open_clip), L2-normalised: ``(len(texts), D)``."""
        if not texts:
            raise ConfigError("no texts to encode")
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[start:start + batch_size])).to(self.device)
                emb = self.model.encode_text(tokens)  # type: ignore[operator]
                out.append(F.normalize(emb.float(), dim=-1).cpu().numpy())
        return np.concatenate(out)

    def embed_labels(self, labels: Sequence[str], templates: Sequence[str] = (DEFAULT_TEMPLATE,)) -> np.ndarray:
        """One embedding per label: the normalised mean over ``templates`` of the normalised text
        embeddings of ``template.replace("{label}", label)`` (prompt ensembling); ``(len(labels), D)``.

        Raises:
            ConfigError: no template, or a template without ``{label}``.
        """
        if not templates:
            raise ConfigError("at least one prompt template is needed, e.g. 'a photo of a {label}.'")
        bad = [t for t in templates if "{label}" not in t]
        if bad:
            raise ConfigError(f"prompt template {bad[0]!r} has no '{{label}}' placeholder; "
                              "write it like 'a photo of a {label}.'")
        prompts = [t.replace("{label}", label) for label in labels for t in templates]
        emb = self.encode(prompts).reshape(len(labels), len(templates), -1).mean(axis=1)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return (emb / np.maximum(norms, 1e-12)).astype(np.float32)


def build_text_tower(name: str, *, weights: str | None = None, seed: int = 0, device: str = "cpu") -> TextTower:
    """The text tower of the open_clip entry ``name`` with ``weights`` (None: the entry's default).

    Builds the whole model as the image tower's factory does (same ``_create``, same seeded init, same
    checkpoint), then drops the image tower.

    Raises:
        ConfigError: ``name`` is not an open_clip entry, open_clip is missing, ``weights="none"``, the
            checkpoint does not fit the architecture, or the tokenizer's vocabulary is larger than the
            text tower's.
        WeightsNotFoundError: pretrained weights are not in the local hub cache.
    """
    if not is_openclip_backbone(name):
        raise ConfigError(f"{name!r} is not a CLIP-family (open_clip) backbone, so it has no text tower; "
                          f"use one of {sorted(_ENTRIES)}.")
    entry = _ENTRIES.get(name) or OPENCLIP_ENTRIES[name]
    spec = parse_weights(entry.default_weights if weights is None else weights)
    open_clip, clip, weights_id, _, _ = build_clip(name, entry, spec, seed)
    if hasattr(clip, "visual"):
        clip.visual = nn.Identity()  # only the text tower is used
    if not hasattr(clip, "encode_text") or not hasattr(clip, "logit_scale"):
        raise ConfigError(f"{name!r}: open_clip built a {type(clip).__name__} without encode_text/logit_scale.")
    context = int(getattr(clip, "context_length", 77))
    tokenizer = open_clip.get_tokenizer(entry.arch, context_length=context)
    model_vocab = getattr(clip, "vocab_size", None)
    token_vocab = getattr(tokenizer, "vocab_size", None)
    if model_vocab is not None and token_vocab is not None and int(token_vocab) > int(model_vocab):
        raise ConfigError(f"{name!r}: open_clip's tokenizer for {entry.arch} has {token_vocab} tokens but this "
                          f"text tower embeds only {model_vocab}; its text side cannot be used (a test model?).")
    dev = torch.device(device)
    clip = clip.eval().requires_grad_(False).to(dev)
    logit_scale = float(clip.logit_scale.exp().item())  # type: ignore[operator]
    logger.info("%s: text tower built (weights %s, context %d, logit scale %.1f)", name, weights_id, context,
                logit_scale)
    return TextTower(name=name, weights_id=weights_id, logit_scale=logit_scale, model=clip, tokenizer=tokenizer,
                     device=dev)
