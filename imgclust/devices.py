"""Where torch work runs: device names to :class:`torch.device`, and the mixed-precision decision.

One module for every caller (estimators, feature extraction, backbones, the deep package), so ``"auto"``,
``"cuda"`` and a missing GPU mean the same everywhere: asking for CUDA on a machine without one is a
:class:`~imgclust.exceptions.ConfigError`, never a silent CPU fallback.

- :func:`resolve_device`: the estimators' ``device`` parameter (``"auto"``, ``"cpu"``, ``"cuda"``,
  ``"cuda:N"``) -> :class:`torch.device`.
- :func:`resolve_device_name`: the same for configs and CLI flags (``auto``/``cpu``/``cuda``), as a string.
- :func:`backbone_device`: any torch device string or object, CUDA normalised to an explicit index (the
  backbone cache keys on it).
- :func:`mixed_precision`: bfloat16 autocast on CUDA, nothing elsewhere.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from imgclust.exceptions import ConfigError

__all__ = ["resolve_device", "resolve_device_name", "backbone_device", "mixed_precision"]


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cpu"``; ``"cuda"`` / ``"cuda:N"``.

    Raises :class:`ConfigError` for another string, or for CUDA on a machine where torch sees no GPU.
    """
    if not isinstance(device, str):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} but torch sees no CUDA GPU; pass device='cpu' or 'auto'")
        return torch.device(device)
    raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")


def resolve_device_name(device: str) -> str:
    """A config's ``device`` (``auto``/``cpu``/``cuda``) as the string backbones take: ``auto`` -> ``"cuda"``
    when a GPU is visible, else ``"cpu"``; other values are returned as given.

    Raises :class:`ConfigError` for ``cuda`` on a machine where torch sees no GPU.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was requested but torch sees no CUDA device; use --device cpu or auto")
    return device


def backbone_device(device: str | torch.device) -> torch.device:
    """Any torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a :class:`torch.device`); ``cuda`` without an
    index becomes the current CUDA device, so equal devices compare (and cache) equal.

    Raises :class:`ConfigError` for a string torch does not parse, or for CUDA without a visible GPU.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device (use 'cpu', 'cuda', 'cuda:1').") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available; use device='cpu'.")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def mixed_precision(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The context a forward pass (and a training step's loss) runs in: bfloat16 autocast on CUDA (AMP: convs
    and matmuls in bf16, reductions in float32; gradients and optimizer state stay float32), nothing elsewhere.

    Not on the CPU, on purpose: CPU bf16 autocast is slower than float32 on most CPUs without AMX, and
    bit-identical resumes of CPU training are defined in float32. bf16 keeps float32's exponent range, so no
    loss scaling is needed.
    """
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
