"""Shared training plumbing for the deep clusterers: the training config, seeding, data order, exact-resume
checkpoints.

:class:`TrainingConfig` holds what every deep estimator's training shares (epochs or max_iter, batch size,
learning rate, seed, device, checkpoints); each estimator takes it as ``training=`` and runs its optimisation
through the one template :meth:`imgclust.deep.base.DeepEstimator._train` (a :class:`TrainingLoop` with a
:class:`Checkpointer` keyed by :func:`config_fingerprint`).

Exact resume (CPU)
------------------
A run interrupted after optimisation step ``s`` and resumed from a checkpoint taken at step
``t <= s`` reproduces the uninterrupted run bit for bit, because a checkpoint holds everything
that influences the next step:

- the model and optimizer ``state_dict`` (Adam moments, step counters, BatchNorm running stats);
- the global RNG states (torch, numpy, python; :func:`rng_state`), which drive augmentation;
- the state of the data-order generator *at the start of the current epoch* plus the step, so the
  resumed loop regenerates the same permutation and skips the batches already done
  (:func:`batches` with ``skip``).

Checkpoints follow the faiss ``contrib/`` habit (STYLE.md): ``ckpt.tmp`` is written, fsynced and
renamed over ``ckpt.pt`` with :func:`os.replace`; a fingerprint of the configuration is stored next
to it (``fingerprint.json``) and inside it, and a run with another configuration refuses to resume.
A test-only crash hook (``crash_at_step`` or env ``IMGCLUST_CRASH_AT_STEP``) raises
:class:`SimulatedCrash` right after a step, which is how the tests prove the resume path.

Mixed precision: on CUDA every training step's forward pass and loss run under bfloat16 autocast
(:func:`imgclust.devices.mixed_precision`); on the CPU training stays float32, which is what makes the
exact resume above bit-identical. Devices are resolved by :func:`imgclust.devices.resolve_device`.

Everything saved is a tensor, a number, a string or a container of those, so checkpoints load with
``torch.load(weights_only=True)`` (no pickle of arbitrary objects).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from torch import nn
from torch.nn import functional as F

from imgclust.artifacts import write_atomic
from imgclust.exceptions import ConfigError, CorruptArtifactError
from imgclust.validation import check_int

logger = logging.getLogger(__name__)

__all__ = [
    "SimulatedCrash",
    "seed_everything",
    "Checkpointer",
    "config_fingerprint",
    "batches",
    "to_float_images",
    "rng_state",
    "set_rng_state",
    "data_fingerprint",
    "random_affine",
    "encode_batched",
    "TrainingLoop",
    "TrainingConfig",
    "TRAINING_FIELDS",
    "optimise",
    "CRASH_ENV",
]

CRASH_ENV = "IMGCLUST_CRASH_AT_STEP"
CKPT_NAME = "ckpt.pt"
FINGERPRINT_NAME = "fingerprint.json"


class SimulatedCrash(RuntimeError):
    """Raised by :class:`Checkpointer` at the test-only ``crash_at_step``; never in normal runs."""


# ----------------------------------------------------------------------------- seeding


def seed_everything(seed: int, *, deterministic: bool = True) -> torch.Generator:
    """Seed python, numpy and torch with ``seed`` and return a fresh CPU generator seeded with it.

    The returned generator is meant for the data order (:func:`batches`), kept apart from the
    global stream that drives init and augmentation. With ``deterministic`` (default)
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` is set: on CPU every op used here
    is deterministic; on CUDA non-deterministic kernels only warn. This is process-wide torch state.
    Bit-exact reproduction on CPU also needs the same torch thread count (reductions split by thread)
    and, across processes (a crash and its resume), MKL's reproducible mode set in the environment
    before torch starts (``MKL_CBWR=AUTO,STRICT``): without it a resumed fit can differ from the
    uninterrupted one by a few ulps on a loaded machine (tests/helpers_resume.py sets it; a library
    cannot, MKL reads it once).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be an int >= 0, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic and not torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(True, warn_only=True)  # the first call imports torch._inductor
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return gen


# ----------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """Snapshot of the torch (CPU and, if initialised, CUDA), numpy and python global RNGs.

    Only tensors, ints, strings and tuples/lists, so it survives ``torch.load(weights_only=True)``.
    """
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot taken by :func:`rng_state`."""
    try:
        torch.set_rng_state(state["torch"])
        npd = state["numpy"]
        np.random.set_state((npd["name"], npd["keys"].numpy().astype(np.uint32), npd["pos"],
                             npd["has_gauss"], npd["gauss"]))
        pyd = state["python"]
        random.setstate((pyd["version"], tuple(pyd["internal"]), pyd["gauss"]))
    except (KeyError, TypeError, AttributeError) as exc:
        raise CorruptArtifactError(f"RNG state is incomplete or malformed ({exc}); it was not written by "
                                   "rng_state(); delete the checkpoint and restart the run") from exc
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- data


def batches(n: int, batch_size: int, generator: torch.Generator, *, skip: int = 0) -> Iterator[torch.Tensor]:
    """One epoch of shuffled index batches ``(b,)`` int64 over ``range(n)``.

    The permutation is drawn from ``generator`` when the iterator starts (so it advances the
    generator exactly once per epoch, whether or not every batch is consumed); the last batch may
    be smaller. ``skip`` drops the first ``skip`` batches of that permutation, which is how a
    resumed run continues mid-epoch: restore the generator state saved at the epoch's start and
    skip the batches already done.
    """
    if n < 1:
        raise ConfigError(f"cannot batch {n} samples; pass at least one image")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    perm = torch.randperm(n, generator=generator)
    for start in range(skip * batch_size, n, batch_size):
        yield perm[start:start + batch_size]


def to_float_images(x: np.ndarray | torch.Tensor, *, scale: float = 1 / 255) -> torch.Tensor:
    """Images ``(N, H, W)`` or ``(N, H, W, C)`` (any numeric dtype, usually uint8) -> float32 ``(N, C, H, W)`` times ``scale``.

    ``scale=1/255`` maps uint8 to [0, 1]; ``scale=1`` keeps raw 0..255 values (the ASCAE paper's
    input). The result is a new contiguous CPU tensor.
    """
    t = torch.as_tensor(np.asarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise ConfigError(f"images must be a numpy array or a torch tensor, got {type(x).__name__}")
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif t.ndim == 4:
        t = t.permute(0, 3, 1, 2)
    else:
        raise ConfigError(f"images must have shape (N, H, W) or (N, H, W, C); got {tuple(t.shape)}")
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise ConfigError(f"images must be numeric (uint8 0..255 usually), got dtype {t.dtype}")
    return (t.to(torch.float32) * float(scale)).contiguous()


def random_affine(x: torch.Tensor, *, max_rotation: float = 15.0, max_translation: float = 0.1,
                  min_crop: float = 0.85) -> torch.Tensor:
    """Random rotation, translation and crop-and-resize of a batch ``(N, C, H, W)`` -> same shape.

    The augmentation of Qian et al., 2025 (they train their autoencoder with random rotation,
    translation and crop): per image an angle in ``±max_rotation`` degrees, a shift in
    ``±max_translation`` of the image size and a crop keeping a fraction in ``[min_crop, 1]`` of
    each side, resized back (bilinear, zero fill). Parameters come from the global torch CPU RNG,
    so they are reproducible and part of :func:`rng_state`.
    """
    n = x.shape[0]
    angle = (torch.rand(n) * 2 - 1) * math.radians(max_rotation)
    shift = (torch.rand(n, 2) * 2 - 1) * (2 * max_translation)  # affine_grid coordinates span [-1, 1]
    crop = min_crop + torch.rand(n) * (1 - min_crop)
    cos, sin = torch.cos(angle) * crop, torch.sin(angle) * crop
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def encode_batched(net: nn.Module, x: torch.Tensor, *, batch_size: int, device: torch.device,
                   method: str = "encode") -> np.ndarray:
    """``net.<method>`` (``encode`` by default) over images ``(N, C, H, W)`` in batches, eval mode, under
    ``inference_mode``.

    Returns float32 ``(N, d)`` on the CPU; the module's train/eval mode is restored afterwards.
    """
    encode = getattr(net, method)
    was_training = net.training
    net.eval()
    out: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for start in range(0, x.shape[0], batch_size):
                z = encode(x[start:start + batch_size].to(device))
                out.append(z.float().cpu().numpy())
    finally:
        net.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


# ----------------------------------------------------------------------------- checkpoints


def config_fingerprint(obj: Any) -> str:
    """sha256 hex digest of ``json.dumps(obj, sort_keys=True)`` (non-JSON values via ``str``)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def data_fingerprint(*arrays: np.ndarray | torch.Tensor) -> str:
    """sha256 over the shapes, dtypes and bytes of ``arrays`` (training data, initial weights), so a
    checkpoint is never resumed on other data."""
    h = hashlib.sha256()
    for a in arrays:
        arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


class Checkpointer:
    """Periodic, atomic, fingerprinted training checkpoints in one directory.

    Parameters
    ----------
    directory : where ``ckpt.pt`` and ``fingerprint.json`` live; ``None`` disables saving and
        loading (the crash hook still works, for tests).
    fingerprint : :func:`config_fingerprint` of every parameter that changes the trajectory;
        :meth:`load` refuses a checkpoint written under another fingerprint.
    every : save after every ``every``-th optimisation step (steps count from 1).
    crash_at_step : test-only hook: :meth:`step` raises :class:`SimulatedCrash` right after step
        ``crash_at_step`` (after saving, if that step is a save step). Defaults to the integer in
        env ``IMGCLUST_CRASH_AT_STEP`` when set.
    """

    def __init__(self, directory: str | os.PathLike[str] | None, *, fingerprint: str, every: int = 500,
                 crash_at_step: int | None = None) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"checkpoint every must be an int >= 1, got {every!r}")
        if crash_at_step is None and os.environ.get(CRASH_ENV):
            try:
                crash_at_step = int(os.environ[CRASH_ENV])
            except ValueError as exc:
                raise ConfigError(f"{CRASH_ENV}={os.environ[CRASH_ENV]!r} is not an integer step") from exc
        self.directory = None if directory is None else Path(directory)
        self.fingerprint = fingerprint
        self.every = every
        self.crash_at_step = crash_at_step

    @property
    def path(self) -> Path | None:
        """``directory/ckpt.pt`` or ``None`` when checkpoints are disabled."""
        return None if self.directory is None else self.directory / CKPT_NAME

    def load(self) -> tuple[int, dict[str, Any]] | None:
        """The saved ``(step, state)``, or ``None`` when there is no checkpoint (or no directory).

        Raises :class:`ConfigError` if the checkpoint was written under another fingerprint, and
        :class:`CorruptArtifactError` if it cannot be read.
        """
        if self.directory is None or not (self.directory / CKPT_NAME).exists():
            return None
        fp_path = self.directory / FINGERPRINT_NAME
        try:
            saved_fp = json.loads(fp_path.read_text())["fingerprint"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CorruptArtifactError(f"{fp_path} is missing or unreadable ({exc}); cannot tell which "
                                       "configuration wrote the checkpoint. Delete the directory to start over") from exc
        self._check_fingerprint(saved_fp)
        try:
            doc = torch.load(self.directory / CKPT_NAME, map_location="cpu", weights_only=True)
            step, state, inner_fp = int(doc["step"]), doc["state"], doc["fingerprint"]
        except (RuntimeError, EOFError, KeyError, TypeError, ValueError, OSError, pickle.UnpicklingError) as exc:
            raise CorruptArtifactError(f"{self.directory / CKPT_NAME} cannot be read ({exc}); delete it to "
                                       "restart training from scratch") from exc
        self._check_fingerprint(inner_fp)
        logger.info("resuming from %s at step %d", self.directory / CKPT_NAME, step)
        return step, state

    def _check_fingerprint(self, saved: str) -> None:
        if saved != self.fingerprint:
            raise ConfigError(f"the checkpoint in {self.directory} was written by a run with another "
                              f"configuration (fingerprint {saved[:12]}..., this run {self.fingerprint[:12]}...); "
                              "refusing to resume. Use a new checkpoint_dir or delete the old one")

    def step(self, step: int, state_fn: Callable[[], dict[str, Any]]) -> None:
        """Call after every optimisation step ``step`` (1-based): saves ``state_fn()`` every
        ``every`` steps, then raises :class:`SimulatedCrash` if ``step == crash_at_step``."""
        if self.directory is not None and step % self.every == 0:
            self.save(step, state_fn())
        if self.crash_at_step is not None and step == self.crash_at_step:
            raise SimulatedCrash(f"simulated crash after step {step} (test hook crash_at_step / {CRASH_ENV})")

    def save(self, step: int, state: dict[str, Any]) -> None:
        """Atomically write ``{"step", "fingerprint", "state"}`` to ``ckpt.pt`` (via ``ckpt.tmp`` +
        :func:`os.replace`), then ``fingerprint.json`` the same way. No-op without a directory."""
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fp_doc = json.dumps({"fingerprint": self.fingerprint}).encode()
        write_atomic(LocalFileSystem(), str(self.directory / FINGERPRINT_NAME), fp_doc)
        tmp = self.directory / (CKPT_NAME.removesuffix(".pt") + ".tmp")
        with open(tmp, "wb") as fh:
            torch.save({"step": int(step), "fingerprint": self.fingerprint, "state": state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / CKPT_NAME)
        logger.debug("checkpoint at step %d -> %s", step, self.directory / CKPT_NAME)


# ----------------------------------------------------------------------------- the loop


class TrainingLoop:
    """Shuffled mini-batch loop over ``n`` samples with exact-resume checkpoints.

    ``stateful`` maps names to objects with ``state_dict`` / ``load_state_dict`` (modules,
    optimizers) saved in every checkpoint, with the RNG states, the data-order generator's state at
    the current epoch's start, the running epoch statistics, the history and ``get_extra()``
    (restored through ``set_extra``). :meth:`run` resumes from ``checkpointer`` when it holds a
    checkpoint, and always checkpoints the final step, so a finished run resumes instantly.
    """

    def __init__(self, *, n: int, batch_size: int, generator: torch.Generator, checkpointer: Checkpointer,
                 stateful: dict[str, Any], name: str = "training",
                 get_extra: Callable[[], dict[str, Any]] | None = None,
                 set_extra: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.checkpointer, self.stateful, self.name = checkpointer, stateful, name
        self.get_extra, self.set_extra = get_extra, set_extra
        self.steps_per_epoch = math.ceil(n / batch_size)
        self._epoch_gen_state = generator.get_state()
        self._acc: dict[str, float] = {"loss_sum": 0.0, "count": 0.0, "seconds": 0.0}
        self.history: list[dict[str, Any]] = []
        self.resumed_from: int | None = None

    def _state(self, step: int) -> dict[str, Any]:
        return {
            **{name: obj.state_dict() for name, obj in self.stateful.items()},
            "rng": rng_state(), "epoch_gen": self._epoch_gen_state, "acc": dict(self._acc),
            "history": list(self.history), "extra": self.get_extra() if self.get_extra else {},
        }

    def _restore(self) -> int:
        loaded = self.checkpointer.load()
        if loaded is None:
            return 0
        step, state = loaded
        try:
            for name, obj in self.stateful.items():
                obj.load_state_dict(state[name])
            set_rng_state(state["rng"])
            self._epoch_gen_state = state["epoch_gen"]
            self.generator.set_state(self._epoch_gen_state)
            self._acc, self.history = dict(state["acc"]), list(state["history"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CorruptArtifactError(f"checkpoint {self.checkpointer.path} does not match this model "
                                       f"({exc}); delete it to restart training") from exc
        if self.set_extra is not None:
            self.set_extra(state["extra"])
        self.resumed_from = step
        return step

    def run(self, step_fn: Callable[[torch.Tensor, int], float], *, max_steps: int,
            before_step: Callable[[int], bool] | None = None) -> list[dict[str, Any]]:
        """Run until ``max_steps`` optimisation steps (counted from 1) or until ``before_step(step)``
        returns True; ``step_fn(indices (b,) int64, step) -> loss`` does one optimisation step.

        Returns the history: one dict per epoch ``{"epoch", "step", "loss", "seconds"}`` (loss is the
        mean step loss of the epoch).
        """
        step = self._restore()
        if step > max_steps:
            logger.warning("%s: the checkpoint is at step %d, past max_steps=%d; using it as it is", self.name,
                           step, max_steps)
        epoch = (step - 1) // self.steps_per_epoch if step > 0 else 0
        skip = step - epoch * self.steps_per_epoch
        stop = step >= max_steps
        while not stop:
            if skip == 0:
                self._epoch_gen_state = self.generator.get_state()
            tick = time.perf_counter()
            for idx in batches(self.n, self.batch_size, self.generator, skip=skip):
                if before_step is not None and before_step(step + 1):
                    if self.checkpointer.directory is not None and step > 0:
                        self.checkpointer.save(step, self._state(step))
                    stop = True
                    break
                loss = step_fn(idx, step + 1)
                step += 1
                now = time.perf_counter()
                self._acc["loss_sum"] += loss
                self._acc["count"] += 1
                self._acc["seconds"] += now - tick
                tick = now
                final = step >= max_steps
                if final and self.checkpointer.directory is not None and step % self.checkpointer.every:
                    self.checkpointer.save(step, self._state(step))
                self.checkpointer.step(step, lambda: self._state(step))  # noqa: B023 (called at once)
                if final:
                    stop = True
                    break
            skip = 0
            if self._acc["count"]:
                rec = {"epoch": epoch + 1, "step": step, "loss": self._acc["loss_sum"] / self._acc["count"],
                       "seconds": self._acc["seconds"]}
                self.history.append(rec)
                logger.info("%s epoch %d step %d/%d loss %.6g (%.1fs)", self.name, rec["epoch"], step,
                            max_steps, rec["loss"], rec["seconds"])
            self._acc = {"loss_sum": 0.0, "count": 0.0, "seconds": 0.0}
            epoch += 1
        return self.history


# ----------------------------------------------------------------------------- the training config


@dataclass(frozen=True)
class TrainingConfig:
    """How a deep estimator trains: the parameters every method shares (its ``training=`` keyword).

    ``None`` means "the method's default" (each class's ``_training_defaults``; e.g. NNC's lr is 1e-4,
    DeepCluster's 0.05); the estimator stores the config with those filled in (:meth:`resolve`).

    Fields
    ------
    epochs : passes over the data (autoencoders, SimCLR, DeepCluster, the ensemble members).
    max_iter : optimisation steps (the fine-tuners DEC / IDEC / NNC). A method uses exactly one of
        ``epochs`` / ``max_iter``; setting the other is a :class:`ConfigError`.
    batch_size, lr : mini-batch size and the optimizer's learning rate.
    seed : seeds python, numpy and torch (:func:`seed_everything`) and the data order.
    device : ``"auto"``, ``"cpu"`` or ``"cuda"`` (:func:`imgclust.devices.resolve_device`).
    checkpoint_dir : exact-resume checkpoints (:class:`Checkpointer`) there; ``None`` = none.
    checkpoint_every : steps between checkpoints (and one at the end); ``None`` (DeepCluster's
        default) = once per epoch.

    Saved as a JSON object in ``estimator.json``'s ``params["training"]`` (:meth:`to_dict`).
    """

    epochs: int | None = None
    max_iter: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    device: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TrainingConfig:
        """A config from a JSON object (a saved ``params["training"]``); unknown names are a ConfigError."""
        unknown = sorted(set(values) - set(TRAINING_FIELDS))
        if unknown:
            raise ConfigError(f"unknown training parameter(s) {unknown}; TrainingConfig has {list(TRAINING_FIELDS)}")
        return cls(**values)

    def resolve(self, defaults: Mapping[str, Any]) -> TrainingConfig:
        """This config with every ``None`` field that ``defaults`` names filled in from it."""
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object saved in ``estimator.json``."""
        return asdict(self)

    def validate(self, *, steps: str, owner: str, min_batch: int = 1) -> None:
        """ConfigError unless the fields are valid for a method counting its training in ``steps``
        (``"epochs"`` or ``"max_iter"``); ``owner`` names the method in the messages."""
        other = "max_iter" if steps == "epochs" else "epochs"
        if getattr(self, other) is not None:
            raise ConfigError(f"{owner} trains for training.{steps}, not training.{other} "
                              f"(got {other}={getattr(self, other)!r}); set {steps} instead")
        check_int(f"training.{steps}", getattr(self, steps), minimum=0)
        check_int("training.batch_size", self.batch_size, minimum=min_batch)
        check_int("training.seed", self.seed, minimum=0)
        check_int("training.checkpoint_every", self.checkpoint_every, minimum=1, allow_none=True)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ConfigError(f"training.lr must be a number > 0, got {self.lr!r}")
        if not isinstance(self.device, str) or (self.device not in ("auto", "cpu", "cuda")
                                                and not self.device.startswith("cuda:")):
            raise ConfigError(f"training.device must be 'auto', 'cpu' or 'cuda' (or 'cuda:<i>'), got {self.device!r}")
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, (str, os.PathLike)):
            raise ConfigError(f"training.checkpoint_dir must be a path or None, got {self.checkpoint_dir!r}")


TRAINING_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TrainingConfig))
"""The names :class:`TrainingConfig` takes; flat keywords with these names are routed into it."""


def optimise(loss: torch.Tensor, *optimizers: torch.optim.Optimizer) -> float:
    """One optimisation step of ``loss`` (a scalar) over ``optimizers``: zero every gradient, backward, step
    each in order; returns the loss as a float."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers:
        opt.step()
    return float(loss.detach())
