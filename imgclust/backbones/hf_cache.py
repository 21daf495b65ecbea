"""Find a foundation model's published weights in the local Hugging Face hub cache, never download.

timm and open_clip fetch their pretrained weights from the Hugging Face hub into its cache
(``$HF_HUB_CACHE``, default ``$HF_HOME/hub`` = ``~/.cache/huggingface/hub``). imgclust only reads
that cache, which is what ``HF_HUB_OFFLINE=1`` asks of a library; when the file is absent the error
names the exact path expected and how to put it there. Downloading is someone else's job.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from imgclust.exceptions import WeightsNotFoundError

logger = logging.getLogger(__name__)

__all__ = ["find_hf_cached_file", "hf_hub_cache_dir", "hf_repo_folder"]


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


def find_hf_cached_file(repo_id: str, filenames: tuple[str, ...], *, name: str, source: str) -> Path:
    """Return the first of ``filenames`` cached for ``repo_id`` (main revision), or explain how to provide it.

    Args:
        repo_id: hub model repo, e.g. ``"timm/vit_small_patch14_dinov2.lvd142m"``.
        filenames: accepted files in order of preference, e.g. ``("model.safetensors", "pytorch_model.bin")``.
        name: registry name, for the message.
        source: what the weights are, for the message (e.g. ``"timm vit_small_patch14_dinov2.lvd142m"``).

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
    offline = " HF_HUB_OFFLINE is set;" if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") else ""
    raise WeightsNotFoundError(
        f"Pretrained weights for {name!r} ({source}) not found: expected the file {expected}{others} in the "
        f"Hugging Face hub cache {cache}.{offline} Nothing is downloaded here. Either run `hf download "
        f"{repo_id} {filenames[0]}` on a machine with internet and copy its {hf_repo_folder(repo_id)} folder "
        f"into {cache} (or point $HF_HUB_CACHE / $HF_HOME at a cache holding it), or pass --weights PATH to a "
        f"checkpoint file (.pth/.pt), or --weights random for a seeded random init."
    )
