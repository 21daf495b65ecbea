"""Shared by the deep-model tests (``tests/deep/``): a training run that crashes and resumes, and the
bit-identical comparison of two fitted networks.

Import with ``from helpers_deep import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch

from imgclust.deep.base import DeepEstimator
from imgclust.deep.training import CRASH_ENV, SimulatedCrash

D = TypeVar("D", bound=DeepEstimator)


def fit_crash_resume(make: Callable[..., D], x: Any, checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch, *,
                     crash_at: int, every: int | None = None) -> tuple[D, D]:
    """``(reference, resumed)``: ``make()`` fitted on images ``x`` straight through, and
    ``make(checkpoint_dir=..., checkpoint_every=every)`` (``every`` left out when None) fitted until it dies at
    training step ``crash_at`` (``CRASH_ENV``: a :class:`~imgclust.deep.training.SimulatedCrash` after the
    checkpoints written so far), then built and fitted again, resuming from its last checkpoint.

    ``make`` builds a fresh estimator from the checkpoint keyword arguments it is given (none: no checkpoints).
    """
    reference = make().fit(x)
    ckpt: dict[str, Any] = {"checkpoint_dir": str(checkpoint_dir)}
    if every is not None:
        ckpt["checkpoint_every"] = every
    monkeypatch.setenv(CRASH_ENV, str(crash_at))
    with pytest.raises(SimulatedCrash):
        make(**ckpt).fit(x)
    monkeypatch.delenv(CRASH_ENV)
    return reference, make(**ckpt).fit(x)


def assert_same_network(ref: DeepEstimator, res: DeepEstimator) -> None:
    """Every tensor of the two fitted networks' ``state_dict`` is bit-identical (the first that is not is named)."""
    for name, tensor in ref.network_.state_dict().items():
        assert torch.equal(tensor, res.network_.state_dict()[name]), name
