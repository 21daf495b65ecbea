"""``imgclust weights pull``, the ``--offline`` switch, and ``imgclust run``'s default-extractor choice."""
from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import Any

from imgclust.exceptions import ConfigError


@contextlib.contextmanager
def offline_env(offline: bool) -> Iterator[None]:
    """With ``offline``, set ``IMGCLUST_OFFLINE=1`` for the command (local Dask workers it starts inherit it)."""
    if not offline:
        yield
        return
    old = os.environ.get("IMGCLUST_OFFLINE")
    os.environ["IMGCLUST_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("IMGCLUST_OFFLINE", None)
        else:
            os.environ["IMGCLUST_OFFLINE"] = old


def choose_extractor(a: argparse.Namespace) -> Any:
    """``--extractor auto``: :func:`~imgclust.extract.backbones.pretrained.choose_default_extractor` for this run's device.

    Raises:
        ConfigError: ``--weights`` was given without an explicit ``--extractor``.
    """
    if a.weights is not None:
        raise ConfigError(f"--weights {a.weights} needs an explicit --extractor: the default extractor is chosen by "
                          f"which pretrained weights are available (see `imgclust backbones`).")
    import torch

    from imgclust.extract.backbones.pretrained import choose_default_extractor

    on_gpu = a.device == "cuda" or bool(a.gpu_cluster) or (a.device == "auto" and torch.cuda.is_available())
    return choose_default_extractor(on_gpu=on_gpu)  # logs the choice; the run's summary repeats it


def add_weights_parser(sub: Any) -> None:
    """Register ``imgclust weights pull`` on ``sub`` (argparse sub-parsers)."""
    p = sub.add_parser("weights", help="pre-fetch pretrained weights into the torch hub / Hugging Face caches",
                       description="Manage the published weights of registry backbones in the libraries' caches.")
    actions = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    q = actions.add_parser(
        "pull", help="download (or find) NAME's published weights in the cache, verified; print path, size, sha256",
        description="Puts each backbone's published weights in the cache its library reads ($TORCH_HOME/hub for "
                    "torchvision, the Hugging Face hub cache for timm and open_clip), verified against the checksum "
                    "the library or hub records; a file already cached is verified, not downloaded again. For Dask "
                    "workers without internet: pull once, then copy the cache folder to them (or share it) and run "
                    "them with IMGCLUST_OFFLINE=1. Exit status 2 with a one-line reason on failure.")
    q.add_argument("names", nargs="+", metavar="NAME", help="backbone names (see `imgclust backbones`)")
    q.add_argument("--offline", action="store_true", help="only check the caches: download nothing")
    q.set_defaults(func=cmd_weights_pull)


def cmd_weights_pull(a: argparse.Namespace) -> int:
    """Validate every name first, then pull them in order; one line per file."""
    from imgclust.extract.backbones.pretrained import published_weights, pull

    wanted = [published_weights(name) for name in dict.fromkeys(a.names)]
    for weights in wanted:
        f = pull(weights)
        state = "downloaded" if f.downloaded else "cached"
        print(f"{f.name}  {f.path}  {f.size} bytes  sha256 {f.sha256}  ({state})", flush=True)
    return 0
