"""Find a foundation model's published weights in the local Hugging Face hub cache (reads only).

timm and open_clip fetch their pretrained weights from the Hugging Face hub into its cache
(``$HF_HUB_CACHE``, default ``$HF_HOME/hub`` = ``~/.cache/huggingface/hub``). This module only reads
that cache: :func:`cached_hf_file` says whether a file is there, :func:`find_hf_cached_file` returns
it or raises the error that names the exact path expected and how to put it there (what an offline
machine gets). Downloading into the same cache is :mod:`imgclust.extract.backbones.download`'s job.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from imgclust.exceptions import WeightsNotFoundError

logger = logging.getLogger(__name__)

__all__ = ["cached_hf_file", "find_hf_cached_file", "hf_hub_cache_dir", "hf_repo_folder"]


def hf_hub_cache_dir() -> Path:
    """The hub cache folder, resolved like ``huggingface_hub`` does but from the environment *now*.

    ``$HF_HUB_CACHE`` > ``$HUGGINGFACE_HUB_CACHE`` > ``$HF_HOME/hub`` >
    ``$XDG_CACHE_HOME/huggingface/hub`` > ``~/.cache/huggingface/hub``. (``huggingface_hub`` reads
    these once at import; reading them per call lets a process point at another cache.)
    """
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def hf_repo_folder(repo_id: str) -> str:
    """Cache folder name of a model repo: ``"timm/x.y"`` -> ``"models--timm--x.y"``."""
    return "models--" + repo_id.replace("/", "--")


def _cached(repo_id: str, filename: str, cache: Path) -> Path | None:
    from huggingface_hub import try_to_load_from_cache  # a dependency of timm and open_clip

    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache))
    if isinstance(found, str) and os.path.isfile(found):
        return Path(found)
    return None  # None: not cached; a sentinel object: cached as "does not exist on the hub"


def _expected(repo_id: str, filename: str, cache: Path) -> Path:
    """``<cache>/models--org--name/snapshots/<revision of refs/main, or <revision>>/<filename>``."""
    repo = cache / hf_repo_folder(repo_id)
    ref = repo / "refs" / "main"
    revision = ref.read_text().strip() if ref.is_file() else "<revision>"
    return repo / "snapshots" / revision / filename


def cached_hf_file(repo_id: str, filenames: tuple[str, ...]) -> Path | None:
    """The first of ``filenames`` cached for ``repo_id`` (main revision), or None; never touches the network."""
    cache = hf_hub_cache_dir()
    for filename in filenames:
        path = _cached(repo_id, filename, cache)
        if path is not None:
            return path
    return None


def find_hf_cached_file(repo_id: str, filenames: tuple[str, ...], *, name: str, source: str,
                        offline: str | None = None) -> Path:
    """Return the first of ``filenames`` cached for ``repo_id`` (main revision), or explain how to provide it.

    Args:
        repo_id: hub model repo, e.g. ``"timm/vit_small_patch14_dinov2.lvd142m"``.
        filenames: accepted files in order of preference, e.g. ``("model.safetensors", "pytorch_model.bin")``.
        name: registry name, for the message.
        source: what the weights are, for the message (e.g. ``"timm vit_small_patch14_dinov2.lvd142m"``).
        offline: why nothing is downloaded (``"HF_HUB_OFFLINE is set"``), for the message.

    Raises:
        WeightsNotFoundError: naming the exact expected path, the hub repo and the alternatives.
    """
    cache = hf_hub_cache_dir()
    for filename in filenames:
        path = _cached(repo_id, filename, cache)
        if path is not None:
            logger.debug("%s: found %s/%s in the hub cache at %s", name, repo_id, filename, path)
            return path
    expected = _expected(repo_id, filenames[0], cache)
    others = f" (or {', '.join(filenames[1:])} next to it)" if len(filenames) > 1 else ""
    why = f" (offline: {offline})" if offline else ""
    raise WeightsNotFoundError(
        f"Pretrained weights for {name!r} ({source}) not found: expected the file {expected}{others} in the "
        f"Hugging Face hub cache {cache}. Nothing is downloaded{why}. Either run `imgclust weights pull {name}` "
        f"(or `hf download {repo_id} {filenames[0]}`) on a machine with internet and copy its "
        f"{hf_repo_folder(repo_id)} folder into {cache} (or point $HF_HUB_CACHE / $HF_HOME at a cache holding it), "
        f"or pass --weights PATH to a checkpoint file (.pth/.pt), or --weights random for a seeded random init."
    )
