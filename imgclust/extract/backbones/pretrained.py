"""Published weights by registry name: where they live, pulling them, and ``imgclust run``'s default extractor.

:func:`published_weights` maps a registry entry to its published file (torchvision's ImageNet
checkpoint on the torch hub, a timm / open_clip file on the Hugging Face hub); :func:`pull` puts it
in the library's cache (downloaded and verified, or found there and verified) for ``imgclust weights
pull``; :func:`choose_default_extractor` picks the best pretrained backbone whose weights are
available, before any work starts.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from imgclust.exceptions import ConfigError, UnknownNameError, WeightsDownloadError
from imgclust.extract.backbones.download import (
    download_torch_checkpoint,
    fetch_hf_file,
    hf_file_url,
    offline_reason,
    probe_url,
    verify_hf_cached_file,
)
from imgclust.extract.backbones.hf_cache import cached_hf_file, hf_hub_cache_dir
from imgclust.extract.backbones.registry import backbone_infos, list_backbones
from imgclust.extract.backbones.weights import file_sha256, find_cached_checkpoint, hub_checkpoint_dir

logger = logging.getLogger(__name__)

__all__ = [
    "PREFERENCE_CPU",
    "PREFERENCE_GPU",
    "ExtractorChoice",
    "PublishedWeights",
    "PulledFile",
    "choose_default_extractor",
    "published_weights",
    "pull",
]

#: Default-extractor preference when extraction runs on CPUs. DINOv2 first: it is trained for frozen
#: features compared by nearest neighbours (Oquab et al., TMLR 2024), which is what clustering and
#: near-duplicate search consume, and its published k-NN results lead the open models offered here;
#: ViT-S/14 before ViT-B/14 because it costs about a quarter of the compute per image on a CPU.
#: Then CLIP ViT-B/32 (Radford et al., ICML 2021; cheap, semantic, the backbone of the auto-labels)
#: and SigLIP ViT-B/16 (Zhai et al., ICCV 2023), then the supervised CNNs, whose features lean on
#: ImageNet-1k classes: ConvNeXt-T (IN-12k), EfficientNet-B0, ResNet-50. CLIP ViT-L/14 is left to an
#: explicit ``--extractor``: its cost is out of proportion for a default.
PREFERENCE_CPU: tuple[str, ...] = ("dinov2-vits14", "dinov2-vitb14", "clip-vitb32", "siglip-vitb16",
                                   "convnext-tiny", "efficientnet-b0", "resnet50")
#: The same on GPUs, where ViT-B/14's compute is cheap and its better features come first.
PREFERENCE_GPU: tuple[str, ...] = ("dinov2-vitb14", "dinov2-vits14", "clip-vitb32", "siglip-vitb16",
                                   "convnext-tiny", "efficientnet-b0", "resnet50")


@dataclass(frozen=True)
class PublishedWeights:
    """The published weights file of one registry entry.

    Attributes:
        name: registry name.
        hub: ``"hf"`` (Hugging Face hub: timm, open_clip) or ``"torch"`` (torch hub: torchvision).
        repo_id: hub repo (``hub == "hf"``), else None.
        filenames: accepted files in order of preference (``hf``), or the one checkpoint file name.
        source: what the weights are, for messages.
        library: the Python module the entry needs (``"timm"``, ``"open_clip"``, ``"torchvision"``).
    """

    name: str
    hub: Literal["hf", "torch"]
    repo_id: str | None
    filenames: tuple[str, ...]
    source: str
    library: str

    def url(self) -> str:
        """Where the (first) file is downloaded from."""
        if self.hub == "hf" and self.repo_id is not None:
            return hf_file_url(self.repo_id, self.filenames[0])
        from imgclust.extract.backbones.torchvision_nets import imagenet_url

        return imagenet_url(self.name)

    def cached(self) -> Path | None:
        """The file in the library's cache, or None; never touches the network."""
        if self.hub == "hf" and self.repo_id is not None:
            return cached_hf_file(self.repo_id, self.filenames)
        path = Path(hub_checkpoint_dir()) / self.filenames[0]
        return path if path.is_file() else None

    def cache_dir(self) -> Path:
        """The cache the file goes to."""
        return hf_hub_cache_dir() if self.hub == "hf" else Path(hub_checkpoint_dir())

    def fetch(self) -> Path:
        """The cached file; downloaded and verified first when absent, unless offline.

        Raises:
            WeightsNotFoundError: offline and not cached (the message names the expected file).
            WeightsDownloadError: the download failed or did not verify.
        """
        if self.hub == "hf" and self.repo_id is not None:
            return fetch_hf_file(self.repo_id, self.filenames, name=self.name, source=self.source)
        cached = self.cached()
        if cached is not None:
            return cached
        reason = offline_reason()
        if reason is not None:
            return find_cached_checkpoint(self.name, self.url(), offline=reason)  # raises
        return download_torch_checkpoint(self.url(), Path(hub_checkpoint_dir()) / self.filenames[0], name=self.name)

    def installed(self) -> bool:
        """Whether the library the entry needs can be imported here."""
        return importlib.util.find_spec(self.library) is not None


def published_weights(name: str) -> PublishedWeights:
    """The published weights of registry entry ``name``.

    Raises:
        UnknownNameError: ``name`` is not registered.
        ConfigError: the entry has no published weights (a test model, pixels, a classic feature).
    """
    from imgclust.extract.backbones import openclip_nets, timm_nets, torchvision_nets

    if name in torchvision_nets.CHECKPOINT_FILES:
        return PublishedWeights(name, "torch", None, (torchvision_nets.CHECKPOINT_FILES[name],),
                                f"torchvision {name} IMAGENET1K_V1", "torchvision")
    timm_entry = timm_nets._ENTRIES.get(name)
    if timm_entry is not None and timm_entry.hub_repo is not None:
        return PublishedWeights(name, "hf", timm_entry.hub_repo, timm_nets.TIMM_HUB_FILES,
                                f"timm {timm_entry.model}", "timm")
    clip_entry = openclip_nets._ENTRIES.get(name)
    if clip_entry is not None and clip_entry.hub_repo is not None:
        return PublishedWeights(name, "hf", clip_entry.hub_repo, clip_entry.hub_files,
                                f"open_clip {clip_entry.arch} pretrained={clip_entry.tag!r}", "open_clip")
    if name not in list_backbones():
        raise UnknownNameError(f"unknown backbone {name!r}; available: {', '.join(list_backbones())}.")
    pullable = [i.name for i in backbone_infos() if i.default_weights in ("imagenet", "pretrained")]
    raise ConfigError(f"{name!r} has no published weights to pull; entries that have: {', '.join(pullable)}.")


@dataclass(frozen=True)
class PulledFile:
    """One file :func:`pull` put in (or found in) a cache: ``path``, ``size`` in bytes, ``sha256`` hex."""

    name: str
    path: Path
    size: int
    sha256: str
    downloaded: bool


def pull(weights: PublishedWeights) -> PulledFile:
    """Make sure ``weights`` are in their cache, downloading them unless offline; verify the file either way.

    A cached hub file must match the ETag its blob is named by; a cached torchvision file the sha256
    prefix in its name (a copied cache is checked, not trusted).

    Raises:
        WeightsNotFoundError: offline and not cached.
        WeightsDownloadError: the download failed, or the file does not match its checksum.
    """
    cached = weights.cached()
    path = cached if cached is not None else weights.fetch()
    sha = file_sha256(path)
    if weights.hub == "hf":
        verify_hf_cached_file(path, sha256=sha)
    else:
        prefix = path.stem.rsplit("-", 1)[-1]
        if not sha.startswith(prefix):
            raise WeightsDownloadError(
                f"{path} does not match the sha256 prefix {prefix!r} in its name (sha256 {sha}): it is corrupt or "
                f"not the published checkpoint. Delete it and pull again."
            )
    return PulledFile(weights.name, path, path.stat().st_size, sha, downloaded=cached is None)


@dataclass(frozen=True)
class ExtractorChoice:
    """What :func:`choose_default_extractor` picked.

    Attributes:
        extractor: registry name (``"pixels"`` when no pretrained weights are available).
        how: ``"cached"`` (weights in the cache), ``"download"`` (fetched before work starts) or
            ``"pixels"``.
        reason: one line saying what was chosen and why, for the log and the run's summary.
        path: the cached file, when ``how == "cached"``.
    """

    extractor: str
    how: Literal["cached", "download", "pixels"]
    reason: str
    path: Path | None = None


def choose_default_extractor(*, on_gpu: bool = False, timeout: float = 3.0,
                             preference: tuple[str, ...] | None = None) -> ExtractorChoice:
    """The best pretrained backbone whose weights are available: cached first, then downloadable; else pixels.

    Two passes over the preference list (:data:`PREFERENCE_GPU` / :data:`PREFERENCE_CPU`): first the
    cached weights, in order (a cached file is what the user or an admin put there, e.g. with
    ``imgclust weights pull`` for workers without internet, and every worker sharing the cache can
    read it); then, unless offline, the first whose file answers a HEAD request within ``timeout``
    seconds (an unreachable host is asked once). Entries whose library is not installed are skipped.

    Returns:
        The choice with a one-line reason; ``"pixels"`` (raw pixels) when nothing is available.
    """
    order = preference if preference is not None else (PREFERENCE_GPU if on_gpu else PREFERENCE_CPU)
    candidates: list[PublishedWeights] = []
    missing_libs: list[str] = []
    for name in order:
        pw = published_weights(name)
        if pw.installed():
            candidates.append(pw)
        else:
            missing_libs.append(name)
    skipped = f"; skipped {', '.join(missing_libs)} ({_INSTALL_HINT})" if missing_libs else ""
    for pw in candidates:
        path = pw.cached()
        if path is not None:
            reason = f"{pw.name}: the best pretrained model whose weights are cached ({path}){skipped}"
            return _said(ExtractorChoice(pw.name, "cached", reason, path))
    offline = offline_reason()
    unreachable: dict[str, str] = {}
    absent: list[str] = []
    if offline is None:
        for pw in candidates:
            url = pw.url()
            host = urlparse(url).netloc
            if host in unreachable:
                continue
            problem, answered = probe_url(url, timeout=timeout, hub=pw.hub == "hf")
            if problem is None:
                reason = (f"{pw.name}: the best pretrained model available; its weights are not cached and are "
                          f"downloaded from {url} into {pw.cache_dir()} before work starts{skipped}")
                return _said(ExtractorChoice(pw.name, "download", reason))
            if answered:
                absent.append(f"{pw.name}: {problem}")
            else:
                unreachable[host] = problem
    names = ", ".join(pw.name for pw in candidates) or "none installed"
    why = (f"offline ({offline})" if offline is not None
           else "; ".join([*(f"{host} unreachable: {problem}" for host, problem in unreachable.items()), *absent])
           or "nothing to try")
    reason = (f"pixels (raw pixels): no pretrained weights are available: none of {names} is cached in "
              f"{hf_hub_cache_dir()} or {hub_checkpoint_dir()}, and {why}{skipped}. Pull some with "
              f"`imgclust weights pull {order[0]}` (and copy the cache), or pass --extractor")
    return _said(ExtractorChoice("pixels", "pixels", reason))


_INSTALL_HINT = "pip install 'imgclust[foundation]'"


def _said(choice: ExtractorChoice) -> ExtractorChoice:
    log = logger.warning if choice.how == "pixels" else logger.info
    log("default extractor: %s", choice.reason)
    return choice

