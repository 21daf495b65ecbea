"""The shared base of the image-in deep clusterers: :class:`DeepEstimator`.

Images in (uint8 ``(N, H, W)`` or ``(N, H, W, C)``), embeddings / labels out, the estimator contract of
:mod:`imgclust.estimator` (keyword-only params, ``fit`` returns ``self``, learned state ends in ``_``),
and a torch artifact on disk.

Artifact layout (one directory, local or fsspec URL)
----------------------------------------------------
``weights.pt``
    ``torch.save`` of ``{"network": state_dict, "tensors": {name: tensor}}``; read back with
    ``torch.load(weights_only=True)`` (no arbitrary unpickling).
``kmeans/``, ``umap/``
    sub-estimators saved with :meth:`imgclust.estimator.Estimator.save`, when the model has them.
``estimator.json``
    written last (the done-marker), in :mod:`imgclust.artifacts`' manifest format: ``class`` (the bare
    class name, which :func:`imgclust.deep.methods.load_deep` maps to its module), ``params`` (JSON,
    without live objects such as ``pretrained``), ``meta`` (the network spec, input shape and scale, ...),
    ``files`` (sha256 of ``weights.pt`` and of each sub-estimator's manifest, checked before loading),
    ``versions``.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import pickle
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, ClassVar, Generic, TypeVar, cast

import fsspec
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from torch import nn

from imgclust.artifacts import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    join,
    jsonable,
    read_manifest,
    read_verified,
    resolve,
    sha256,
    versions,
    write_atomic,
)
from imgclust.deep.networks import build_network, extractor_method
from imgclust.deep.training import (
    TRAINING_FIELDS,
    Checkpointer,
    TrainingConfig,
    TrainingLoop,
    config_fingerprint,
    data_fingerprint,
    encode_batched,
    seed_everything,
    to_float_images,
)
from imgclust.devices import resolve_device
from imgclust.estimator import Estimator, load_estimator
from imgclust.exceptions import ConfigError, CorruptArtifactError

logger = logging.getLogger(__name__)

__all__ = ["DeepEstimator", "WEIGHTS_NAME"]

WEIGHTS_NAME = "weights.pt"
D = TypeVar("D", bound="DeepEstimator")
T = TypeVar("T")


class _TrainingField(Generic[T]):
    """Read-only attribute ``est.<name>`` mirroring ``est.training.<name>`` (the resolved config)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: DeepEstimator | None, objtype: type | None = None) -> T:
        if obj is None:
            raise AttributeError(f"{self.name} is an attribute of instances: their training.{self.name}")
        return cast(T, getattr(obj.training, self.name))

    def __set__(self, obj: DeepEstimator, value: Any) -> None:
        raise AttributeError(f"{self.name} is read-only: it mirrors training.{self.name}; set "
                             f"training=dataclasses.replace(est.training, {self.name}=...) instead")


class DeepEstimator(Estimator):
    """Base of the image-in deep clusterers: input checks, batched embedding, torch save/load.

    Subclasses set ``network_`` (an ``nn.Module`` with ``encode``), ``network_spec_`` (the JSON
    spec :func:`imgclust.deep.networks.build_network` rebuilds it from), ``input_shape_``
    (``[H, W]`` or ``[H, W, C]``) and ``input_scale_`` in ``fit``; declare extra learned numpy
    arrays in ``_tensor_attrs`` (stored in ``weights.pt``), JSON scalars in ``_meta_attrs``,
    sub-estimators in ``_sub_estimators`` (subdirectory -> attribute) and constructor parameters
    that are live objects in ``_unsaved_params``.

    Every subclass takes ``training`` (a :class:`~imgclust.deep.training.TrainingConfig`; ``None`` = the
    class's ``_training_defaults``) next to its own method parameters, and counts its training in
    ``_steps`` (``"epochs"`` or ``"max_iter"``). :meth:`_train` is the one resumable-training template
    (seeded data order, exact-resume checkpoints keyed by :meth:`_fingerprint_params`).
    """

    _meta_attrs: ClassVar[tuple[str, ...]] = ("n_features_in_", "network_spec_", "input_shape_", "input_scale_",
                                              "embed_dim_")
    _tensor_attrs: ClassVar[tuple[str, ...]] = ()
    _sub_estimators: ClassVar[dict[str, str]] = {}
    _unsaved_params: ClassVar[tuple[str, ...]] = ()
    _training_defaults: ClassVar[dict[str, Any]] = {"epochs": 20, "batch_size": 256, "lr": 1e-3, "seed": 0,
                                                    "device": "auto", "checkpoint_every": 500}
    """What ``None`` fields of ``training`` mean for this class."""
    _steps: ClassVar[str] = "epochs"
    """How the class counts its training: ``"epochs"`` or ``"max_iter"`` (optimisation steps)."""
    _min_batch: ClassVar[int] = 1
    _resumable_params: ClassVar[tuple[str, ...]] = ("epochs", "max_iter", "device", "checkpoint_dir",
                                                    "checkpoint_every")
    """Parameters that do not change the training trajectory, so a checkpoint written under other values may
    be resumed (the step budget too: no LR schedule, so a finished run can be extended)."""

    training: TrainingConfig
    network_: nn.Module
    network_spec_: dict[str, Any]
    input_shape_: list[int]
    input_scale_: float
    embed_dim_: int
    labels_: np.ndarray

    # -- the training config
    def _set_training(self, training: TrainingConfig | None) -> None:
        """Store ``training`` (``None`` = all defaults) with this class's defaults filled in."""
        if training is not None and not isinstance(training, TrainingConfig):
            raise ConfigError(f"training must be a TrainingConfig or None, got {type(training).__name__}; "
                              "build one with imgclust.deep.training.TrainingConfig(epochs=..., lr=...)")
        self.training = (training or TrainingConfig()).resolve(self._training_defaults)

    @classmethod
    def with_training(cls: type[D], **params: Any) -> D:
        """Build from flat keywords: the :data:`~imgclust.deep.training.TRAINING_FIELDS` among ``params``
        (``epochs``, ``lr``, ``seed``, ...) go into ``training``, the rest are method parameters."""
        flat = {k: params.pop(k) for k in TRAINING_FIELDS if k in params}
        if flat:
            if params.get("training") is not None:
                raise ConfigError(f"{cls.__name__}: pass {sorted(flat)} inside training=, not next to it")
            params["training"] = TrainingConfig(**flat)
        return cls(**params)

    seed = _TrainingField[int]()
    device = _TrainingField[str]()
    batch_size = _TrainingField[int]()
    lr = _TrainingField[float]()

    def _training_params(self) -> dict[str, Any]:
        """The training fields this class uses, flat (as the constructor keywords they replaced)."""
        names = (self._steps, "batch_size", "lr", "seed", "device", "checkpoint_dir", "checkpoint_every")
        return {k: getattr(self.training, k) for k in names}

    def _fingerprint_params(self) -> dict[str, Any]:
        """The parameters a checkpoint must match to be resumed: method and training parameters, flat, less
        ``_resumable_params`` (the same dict as before the training config, so old checkpoints resume)."""
        flat = {**{k: v for k, v in self.get_params().items() if k != "training"}, **self._training_params()}
        return {k: v for k, v in flat.items() if k not in self._resumable_params}

    def _validate_params(self) -> None:
        """Raise ConfigError for bad parameters, before any work; subclasses extend it (``super()`` first)."""
        self.training.validate(steps=self._steps, owner=type(self).__name__, min_batch=self._min_batch)

    def _begin_fit(self, images: Any) -> np.ndarray | torch.Tensor:
        """Start of every ``fit``: validate the parameters, forget the fitted network, check the images."""
        self._validate_params()
        for attr in ("input_shape_", "network_"):
            self.__dict__.pop(attr, None)
        return self._check_images(images)

    def _seeded_device(self) -> tuple[torch.device, torch.Generator]:
        """The training device and the data-order generator, after seeding every RNG with ``training.seed``
        (:func:`~imgclust.deep.training.seed_everything`; call it right before building the network)."""
        return resolve_device(self.device), seed_everything(self.seed)

    def _train(self, *, name: str, n: int, generator: torch.Generator, stateful: dict[str, Any],
               step_fn: Callable[[torch.Tensor, int], float], spec: dict[str, Any],
               data: tuple[np.ndarray | torch.Tensor, ...],
               before_step: Callable[[int], bool] | None = None, state: dict[str, Any] | None = None) -> None:
        """The resumable-training template: run ``step_fn(indices, step) -> loss`` over ``n`` samples in the
        exact-resume :class:`~imgclust.deep.training.TrainingLoop` for ``training.epochs`` epochs (or
        ``training.max_iter`` steps), checkpointing in ``training.checkpoint_dir`` every ``checkpoint_every``
        steps (``None``: once per epoch) under the fingerprint of the class, :meth:`_fingerprint_params`, the
        network ``spec`` and the arrays ``data`` (training images, initial weights;
        :func:`~imgclust.deep.training.data_fingerprint`). ``stateful`` (modules, optimizers) and the mutable
        ``state`` dict are saved in every checkpoint and restored on resume; ``before_step(step)`` returning
        True stops early. Sets ``history_`` (one row per epoch) and ``resumed_from_step_``."""
        cfg = self.training
        fingerprint = config_fingerprint({"class": type(self).__name__, "params": self._fingerprint_params(),
                                          "spec": spec, "data": data_fingerprint(*data)})
        every = cfg.checkpoint_every or math.ceil(n / self.batch_size)
        loop = TrainingLoop(n=n, batch_size=self.batch_size, generator=generator, name=name,
                            checkpointer=Checkpointer(cfg.checkpoint_dir, fingerprint=fingerprint, every=every),
                            stateful=stateful, get_extra=None if state is None else lambda: dict(state),
                            set_extra=None if state is None else state.update)
        steps = cast(int, getattr(cfg, self._steps))
        max_steps = steps if self._steps == "max_iter" else steps * loop.steps_per_epoch
        self.history_: list[dict[str, Any]] = loop.run(step_fn, max_steps=max_steps, before_step=before_step)
        self.resumed_from_step_ = loop.resumed_from

    def _set_network(self, net: nn.Module, spec: dict[str, Any], input_shape: Any, input_scale: float,
                     embed_dim: int) -> None:
        """End of every ``fit``'s training: the network (eval mode) and what ``save`` / ``transform`` need."""
        self.network_ = net.eval()
        self.network_spec_ = dict(spec)
        self.input_shape_ = [int(s) for s in input_shape]
        self.input_scale_ = float(input_scale)
        self.n_features_in_ = int(np.prod(self.input_shape_))
        self.embed_dim_ = int(embed_dim)

    # -- inputs
    def _check_images(self, images: Any) -> np.ndarray | torch.Tensor:
        """Validate images ``(N, H, W)`` / ``(N, H, W, C)``; once fitted, the per-image shape must match."""
        if not isinstance(images, (np.ndarray, torch.Tensor)):
            images = np.asarray(images)
        if images.ndim not in (3, 4) or images.shape[0] < 1:
            raise ConfigError(f"images must be a non-empty array (N, H, W) or (N, H, W, C); got shape "
                              f"{tuple(images.shape)}. Stack single images with np.stack")
        if isinstance(images, np.ndarray) and not np.issubdtype(images.dtype, np.number):
            raise ConfigError(f"images must be numeric (uint8 0..255 usually), got dtype {images.dtype}")
        expected = getattr(self, "input_shape_", None)
        if expected is not None and list(images.shape[1:]) != list(expected):
            raise ConfigError(f"images have per-image shape {tuple(images.shape[1:])}, but {type(self).__name__} "
                              f"was fitted on {tuple(expected)}; resize them the same way as the training images")
        return images

    def _to_tensor(self, images: Any) -> torch.Tensor:
        """Checked images -> float32 ``(N, C, H, W)`` CPU tensor scaled by ``input_scale_``."""
        return to_float_images(self._check_images(images), scale=self.input_scale_)

    def _device(self) -> torch.device:
        return resolve_device(self.device)

    def _inference_batch(self) -> int:
        return max(int(self.batch_size), 1024)

    def fit(self: D, images: Any, y: Any = None) -> D:
        """Learn from images ``(N, H, W[, C])``; sets ``network_``, ``labels_`` and the input attributes."""
        raise NotImplementedError(f"{type(self).__name__} must implement fit")

    # -- inference
    def transform(self, images: Any) -> np.ndarray:
        """Embeddings ``(N, embed_dim_)`` float32 of images ``(N, H, W[, C])``: the network's
        ``encode`` in batches, eval mode, under ``torch.inference_mode``."""
        return self._encode(images, "encode")

    def extractor_features(self, images: Any) -> np.ndarray:
        """What the ``deep:`` extractor (:mod:`imgclust.deep.backbone`) stores for images ``(N, H, W[, C])``:
        float32 ``(N, extractor_dims()[0])``, the network's ``encode_with_statistics`` when it has one (the
        representation, then the statistics the novelty score uses), else :meth:`transform`'s embeddings."""
        self._check_fitted("network_", "input_shape_")
        return self._encode(images, extractor_method(self.network_))

    def _encode(self, images: Any, method: str) -> np.ndarray:
        """``network_.<method>`` over checked images, in batches on the estimator's device."""
        self._check_fitted("network_", "input_shape_")
        x = self._to_tensor(images)
        device = self._device()
        self.network_.to(device)
        return encode_batched(self.network_, x, batch_size=self._inference_batch(), device=device, method=method)

    def extractor_dims(self) -> tuple[int, int]:
        """``(D, representation columns)`` of :meth:`extractor_features`: the first ``embed_dim_`` columns are the
        representation a model clusters, the rest (when ``D > embed_dim_``) feed its novelty score."""
        self._check_fitted("network_", "embed_dim_")
        d = int(self.embed_dim_)
        return d + int(getattr(self.network_, "statistics_dim", 0)), d

    def fit_predict(self, images: Any) -> np.ndarray:
        """``fit(images).labels_``: cluster labels ``(N,)`` int64 of the training images."""
        return self.fit(images).labels_

    # -- persistence
    def save(self, directory: str | os.PathLike[str], fs: fsspec.AbstractFileSystem | None = None) -> None:
        """Write ``weights.pt``, the sub-estimators, then ``estimator.json`` (last) to ``directory``."""
        self._check_fitted("network_", "input_shape_")
        fs, root = resolve(directory, fs)
        params = {k: v for k, v in self.get_params().items() if k not in self._unsaved_params}
        params["training"] = self.training.to_dict()
        try:
            json.dumps(params)
        except TypeError as exc:
            raise ConfigError(f"{type(self).__name__} parameters must be JSON values to be saved ({exc})") from exc
        if isinstance(fs, LocalFileSystem):
            fs.makedirs(root, exist_ok=True)
        blob = {"network": {k: v.detach().cpu() for k, v in self.network_.state_dict().items()},
                "tensors": {n: torch.from_numpy(np.ascontiguousarray(getattr(self, n))) for n in self._tensor_attrs}}
        buf = io.BytesIO()
        torch.save(blob, buf)
        files = {WEIGHTS_NAME: write_atomic(fs, join(root, WEIGHTS_NAME), buf.getvalue())}
        for sub, attr in self._sub_estimators.items():
            est = getattr(self, attr, None)
            if est is not None:
                est.save(join(root, sub), fs=fs)
                files[f"{sub}/{MANIFEST_NAME}"] = sha256(fs.cat_file(join(join(root, sub), MANIFEST_NAME)))
        doc = {
            "format_version": FORMAT_VERSION, "class": type(self).__name__, "params": params,
            "meta": {n: jsonable(getattr(self, n, None)) for n in self._meta_attrs},
            "arrays": [], "files": files, "versions": versions(),
            "created_at": datetime.now(timezone.utc).isoformat(),
        }
        write_atomic(fs, join(root, MANIFEST_NAME), json.dumps(doc, indent=2, sort_keys=True).encode())
        logger.info("saved %s to %s", type(self).__name__, root)

    @classmethod
    def saved_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Constructor parameters of a saved manifest: ``params["training"]`` becomes a
        :class:`~imgclust.deep.training.TrainingConfig`; an artifact saved before the config existed has the
        training fields flat among its parameters, and they are moved into it."""
        params = super().saved_params(params)
        flat = {k: params.pop(k) for k in TRAINING_FIELDS if k in params}
        saved = params.pop("training", None)
        if saved is not None and flat:
            raise CorruptArtifactError(f"{cls.__name__} manifest has training fields both flat {sorted(flat)} "
                                       "and in params['training']; save the model again")
        try:
            params["training"] = TrainingConfig.from_mapping(saved if saved is not None else flat)
        except (ConfigError, TypeError) as exc:
            raise CorruptArtifactError(f"{cls.__name__} manifest has bad training params ({exc})") from exc
        return params

    @classmethod
    def load(cls: type[D], directory: str | os.PathLike[str], fs: fsspec.AbstractFileSystem | None = None) -> D:
        """Restore a model written by :meth:`save`; every file's sha256 is verified first and the
        weights are read with ``torch.load(weights_only=True)``. The network lands on the CPU."""
        fs, root = resolve(directory, fs)
        doc = read_manifest(fs, root)
        if doc["class"] != cls.__name__:
            raise ConfigError(f"{root} holds a {doc['class']}, not a {cls.__name__}; use {doc['class']}.load(...)")
        try:
            est = cls(**cls.saved_params(doc["params"]))
        except TypeError as exc:
            raise CorruptArtifactError(f"{root}: saved params do not match {cls.__name__}'s signature ({exc}); "
                                       "refit and save again") from exc
        files = doc["files"]
        try:
            blob = torch.load(io.BytesIO(read_verified(fs, root, WEIGHTS_NAME, files)), map_location="cpu",
                              weights_only=True)
            for name in cls._meta_attrs:
                setattr(est, name, doc["meta"].get(name))
            net = build_network(est.network_spec_)
            net.load_state_dict(blob["network"])
            for name in cls._tensor_attrs:
                setattr(est, name, blob["tensors"][name].numpy())
        except (RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as exc:
            raise CorruptArtifactError(f"{join(root, WEIGHTS_NAME)} does not match its manifest ({exc}); "
                                       "save the model again") from exc
        est.network_ = net.eval()
        for sub, attr in cls._sub_estimators.items():
            key = f"{sub}/{MANIFEST_NAME}"
            sub_est = None
            if key in files:
                read_verified(fs, root, key, files)
                sub_est = load_estimator(join(root, sub), fs=fs)
            setattr(est, attr, sub_est)
        return est
