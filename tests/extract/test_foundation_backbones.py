"""Foundation-model backbones (timm, open_clip): registry entries, preprocessing, weights, extraction.

Everything runs offline: random weights are seeded; "pretrained" weights come from a Hugging Face hub
cache the test writes itself (a checkpoint of a tiny model saved where the library would cache it).
The real named architectures are each built once with random weights; the extraction path runs on
real image files (colour JPEGs/PNGs of mixed sizes, grey and RGBA PNGs).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgclust.config import ExtractConfig, IngestConfig
from imgclust.exceptions import ConfigError, WeightsNotFoundError
from imgclust.extract.backbones import (
    Backbone,
    Preprocessing,
    backbone_infos,
    clear_backbone_cache,
    create_backbone,
    list_backbones,
    preprocess_image,
)
from imgclust.extract.backbones.openclip_nets import (
    OPENCLIP_ENTRIES,
    TINY_CLIP_KWARGS,
    OpenClipEntry,
    register_openclip_backbone,
)
from imgclust.extract.backbones.timm_nets import TIMM_ENTRIES
from imgclust.extract.backbones.torchvision_nets import CHECKPOINT_FILES
from imgclust.extract.gpu_pipeline import preprocess_on_device
from imgclust.extract.images import decode_image
from imgclust.extract.shard import extract_shard, shard_fingerprint
from imgclust.io.features import embeddings_of, feature_path, read_marker
from imgclust.io.manifest import ingest, plan_shards, read_manifest
from imgclust.io.store import Store

timm = pytest.importorskip("timm")  # the `test` extra installs timm and open_clip_torch
open_clip = pytest.importorskip("open_clip")

NAMED = ["dinov2-vits14", "dinov2-vitb14", "siglip-vitb16", "convnext-tiny", "efficientnet-b0",
         "clip-vitb32", "clip-vitl14"]
L2_NORMALISED = {"siglip-vitb16", "clip-vitb32", "clip-vitl14", "openclip-test-vit"}
# name -> (dim, input size, resize, interpolation, crop_pct, mean[0])
EXPECTED = {
    "dinov2-vits14": (384, 224, "short_side_center_crop", "bicubic", 0.875, 0.485),
    "dinov2-vitb14": (768, 224, "short_side_center_crop", "bicubic", 0.875, 0.485),
    "siglip-vitb16": (768, 224, "squash", "bicubic", 1.0, 0.5),
    "convnext-tiny": (768, 224, "short_side_center_crop", "bicubic", 0.95, 0.485),
    "efficientnet-b0": (1280, 224, "short_side_center_crop", "bicubic", 0.9, 0.5),
    "clip-vitb32": (512, 224, "short_side_center_crop", "bicubic", 1.0, 0.48145466),
    "clip-vitl14": (768, 224, "short_side_center_crop", "bicubic", 1.0, 0.48145466),
}
TEST_VIT_REPO = "timm/test_vit.r160_in1k"
TINY_CLIP_REPO = "imgclust-tests/tiny-clip"
DAY = dt.date(2024, 6, 1)


@pytest.fixture(autouse=True)
def _offline_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Private, empty torch hub and Hugging Face caches, offline, and an empty model cache per test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.delenv("IMGCLUST_OFFLINE", raising=False)  # conftest's switch; this file tests HF_HUB_OFFLINE's
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clear_backbone_cache()
    yield
    clear_backbone_cache()


def _photo(seed: int, width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A smooth seeded colour field with texture: resizing it is not trivial, unlike flat noise."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height),
                                                                                   Image.Resampling.BICUBIC)
    arr = np.clip(np.asarray(coarse, dtype=np.int16) + rng.integers(-20, 21, (height, width, 3)), 0, 255)
    return Image.fromarray(arr.astype(np.uint8)).convert(mode)


def _save(img: Image.Image, path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 real image files of mixed sizes, formats and modes, plus one empty file (quarantined).

    The JPEGs' short sides stay under twice the smallest resize size tested (168 px), so no
    extraction path decodes them at reduced DCT scale and the PIL oracle of the CPU path is exact."""
    src = tmp_path_factory.mktemp("foundation") / "src"
    files = [("a.jpg", 320, 240, "RGB", "JPEG"), ("b.jpg", 97, 131, "RGB", "JPEG"),
             ("c.png", 640, 427, "RGB", "PNG"), ("d.jpg", 50, 50, "RGB", "JPEG"),
             ("e.png", 224, 224, "RGB", "PNG"), ("f.png", 120, 45, "L", "PNG"),
             ("g.png", 81, 37, "RGBA", "PNG"), ("h.png", 260, 300, "RGB", "PNG")]
    for i, (name, w, h, mode, fmt) in enumerate(files):
        _save(_photo(100 + i, w, h, mode), src / name, fmt)
    (src / "empty.jpg").write_bytes(b"")
    return src


def _store(root: Path, src: Path) -> Store:
    store = Store(root)
    ingest(store, str(src), config=IngestConfig(hash_threads=2), date=DAY)
    return store


def _extract(store: Store, cfg: ExtractConfig) -> tuple[dict, dict[str, np.ndarray]]:
    (spec,) = plan_shards(store, shard_size=100)
    result = extract_shard(store, spec, cfg)
    table = store.read_parquet(feature_path(result["extractor_key"], spec.shard_id))
    return result, dict(zip(table.column("image_id").to_pylist(), embeddings_of(table), strict=True))


def _direct(backbone: Backbone, store: Store, ids: list[str]) -> np.ndarray:
    """The oracle: decode each file, ``backbone.preprocess``, one ``embed`` batch."""
    uris = {r["image_id"]: r["uri"] for r in read_manifest(store).to_pylist()}
    mode = backbone.preprocessing.mode
    batch = torch.stack([backbone.preprocess(decode_image(Path(uris[i]).read_bytes(), mode=mode)) for i in ids])
    return backbone.embed(batch)


def _write_hf_cache(cache: Path, repo: str, filename: str, state_dict: dict[str, torch.Tensor]) -> Path:
    """Lay a checkpoint out as ``huggingface_hub`` caches it: refs/main -> snapshots/<commit>/<file>."""
    from safetensors.torch import save_file

    commit = hashlib.sha1(repo.encode()).hexdigest()
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    path = folder / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return path


def _test_vit_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """A published-shape checkpoint of timm's ``test_vit`` (with its 1000-class head)."""
    torch.manual_seed(seed)
    return timm.create_model("test_vit", pretrained=False).state_dict()


# --- registry ------------------------------------------------------------------------------------

def test_every_entry_lists_dim_input_and_weights_source() -> None:
    infos = {i.name: i for i in backbone_infos()}
    assert set(NAMED) | {"timm-test-vit", "openclip-test-vit"} <= set(list_backbones()) == set(infos)
    builtins = [*NAMED, "timm-test-vit", "openclip-test-vit", "tinycnn", "pixels", "pixels-rgb32", "hog",
                "colorhist", *CHECKPOINT_FILES]  # other tests register entries of their own
    assert all(infos[n].dim and infos[n].input_size and infos[n].weights_source for n in builtins)
    for name in NAMED:
        assert (infos[name].dim, infos[name].input_size) == EXPECTED[name][:2]
        assert infos[name].default_weights == "pretrained" and infos[name].extra == "foundation"
    for name, entry in TIMM_ENTRIES.items():  # the listed hub repo is the one timm itself would use
        assert entry.hub_repo == timm.models.get_pretrained_cfg(entry.model).hf_hub_id
        assert entry.hub_repo in infos[name].weights_source
    for oc in OPENCLIP_ENTRIES.values():
        if oc.tag:
            assert open_clip.get_pretrained_cfg(oc.arch, oc.tag)["hf_hub"].rstrip("/") == oc.hub_repo
    import torchvision

    for name, file in CHECKPOINT_FILES.items():
        enum = getattr(torchvision.models, f"{name.replace('resnet', 'ResNet').replace('vgg', 'VGG')}_Weights")
        assert enum.IMAGENET1K_V1.url.endswith("/" + file) and file in infos[name].weights_source


def test_cli_lists_every_backbone_with_dim_input_and_weights_source(capsys: pytest.CaptureFixture[str]) -> None:
    from imgclust_cli.main import main

    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line and not line.startswith(" ")}
    assert set(rows) == {"NAME", *list_backbones()}
    assert rows["dinov2-vits14"][1:4] == ["384", "224", "pretrained"]
    assert "hf-hub:timm/vit_small_patch14_dinov2.lvd142m" in out and "pretrained=openai" in out
    assert rows["resnet50"][1:4] == ["2048", "224", "imagenet"] and "resnet50-0676ba61.pth" in out


# --- the real named architectures, random init ---------------------------------------------------

@pytest.mark.parametrize("name", NAMED)
def test_named_architecture_random_init_embedding_and_preprocessing(name: str) -> None:
    dim, size, resize, interpolation, crop_pct, mean0 = EXPECTED[name]
    backbone = create_backbone(name, weights="random", seed=0)
    prep = backbone.preprocessing
    assert (backbone.dim, prep.input_size, prep.resize, prep.interpolation) == (dim, size, resize, interpolation)
    assert prep.crop_pct == pytest.approx(crop_pct) and prep.mean[0] == pytest.approx(mean0)
    assert backbone.weights_id == "random-seed0" and backbone.key() == f"{name}-random0-{size}"
    photo = _photo(7, 300, 400)
    x = backbone.preprocess(np.asarray(photo))
    # the library's own evaluation transform is the oracle for the preprocessing
    net = backbone.module.net  # type: ignore[attr-defined]
    if name.startswith("clip"):
        cfg = open_clip.get_pretrained_cfg(OPENCLIP_ENTRIES[name].arch, "openai")
        ref = open_clip.image_transform(size, is_train=False, mean=cfg["mean"], std=cfg["std"],
                                        resize_mode=cfg["resize_mode"], interpolation=cfg["interpolation"])(photo)
    else:
        ref = timm.data.create_transform(**timm.data.resolve_model_data_config(net))(photo)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=0)
    features = backbone.embed(x[None])
    assert features.shape == (1, dim) and features.dtype == np.float32 and np.isfinite(features).all()
    if name in L2_NORMALISED:
        np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", NAMED)
def test_pretrained_weights_absent_offline_is_a_clear_error(name: str, tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone(name)  # default weights: the published pretrained ones
    message = str(info.value)
    repo = TIMM_ENTRIES[name].hub_repo if name in TIMM_ENTRIES else OPENCLIP_ENTRIES[name].hub_repo
    assert repo is not None
    expected = tmp_path / "hf_cache" / ("models--" + repo.replace("/", "--")) / "snapshots"
    assert str(expected) in message and "Nothing is downloaded" in message and "HF_HUB_OFFLINE" in message
    assert "--weights random" in message and "--weights PATH" in message
    with pytest.raises(WeightsNotFoundError):
        create_backbone(name, weights="imagenet")  # the torchvision word means the same: no silent random


def test_without_the_extra_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    monkeypatch.setitem(sys.modules, "open_clip", None)
    for name in ("timm-test-vit", "openclip-test-vit", "dinov2-vits14"):
        with pytest.raises(ConfigError, match=re.escape("pip install 'imgclust[foundation]'")):
            create_backbone(name, weights="random")
    assert len(backbone_infos()) == len(list_backbones())  # listing needs neither library


# --- extraction through the real path -----------------------------------------------------------

@pytest.mark.parametrize(("name", "decode_on"), [("timm-test-vit", "cpu"), ("openclip-test-vit", "device"),
                                                 ("clip-vitb32", "cpu"), ("dinov2-vits14", "device")])
def test_extract_shard_gives_the_backbones_embeddings(name: str, decode_on: str, corpus: Path,
                                                      tmp_path: Path) -> None:
    cfg = ExtractConfig(extractor=name, weights="random", device="cpu", batch_size=3, decode_threads=2,
                        decode_on=decode_on)
    store = _store(tmp_path / "store", corpus)
    result, feats = _extract(store, cfg)
    backbone = create_backbone(name, weights="random")
    assert (result["n_features"], result["n_quarantined"], result["extractor_key"]) == (8, 1, backbone.key())
    ids = sorted(feats)
    got = np.stack([feats[i] for i in ids])
    assert got.shape == (8, backbone.dim) and got.dtype == np.float32 and np.isfinite(got).all()
    if name in L2_NORMALISED:
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    direct = _direct(backbone, store, ids)  # PIL path; the device path resizes with torch's kernel
    if decode_on == "cpu":
        np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-5)
    else:
        cos = (got * direct).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(direct, axis=1))
        assert cos.min() > 0.99
    # deterministic: a fresh model (same seed) in a fresh store gives the same bits
    clear_backbone_cache()
    _, again = _extract(_store(tmp_path / "again", corpus), cfg)
    np.testing.assert_array_equal(np.stack([again[i] for i in ids]), got)
    table = store.read_parquet(feature_path(result["extractor_key"], plan_shards(store, shard_size=100)[0].shard_id))
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    assert meta["weights_id"] == "random-seed0" and meta["interpolation"] == "bicubic"
    assert meta["weights_source"] and ("timm_version" in meta or "open_clip_version" in meta)


def test_device_bicubic_crop_pct_preprocessing_matches_pil() -> None:
    prep = Preprocessing(224, "RGB", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "short_side_center_crop", "bicubic", 0.875)
    arr = np.array(_photo(3, 333, 250))
    ref = preprocess_image(arr, prep)
    got = preprocess_on_device([torch.from_numpy(arr).permute(2, 0, 1).contiguous()], prep)[0]
    assert got.shape == ref.shape == (3, 224, 224)
    assert (got - ref).abs().mean() < 0.02  # normalised units: the antialias kernels differ slightly


# --- weights identity: pretrained from the cache, files, fingerprints -----------------------------

def test_pretrained_timm_weights_load_from_the_hub_cache_and_the_fingerprint_follows_them(
        corpus: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hf_cache"
    state_a = _test_vit_state_dict(seed=1)
    path = _write_hf_cache(cache, TEST_VIT_REPO, "model.safetensors", state_a)
    backbone = create_backbone("timm-test-vit", weights="pretrained")
    sha_a = hashlib.sha256(path.read_bytes()).hexdigest()
    assert backbone.weights_id == f"pretrained:hf-hub:{TEST_VIT_REPO}:sha256:{sha_a}"
    assert backbone.key() == "timm-test-vit-pretrained-160"
    reference = timm.create_model("test_vit", pretrained=False)
    reference.load_state_dict(state_a)
    x = torch.stack([backbone.preprocess(np.asarray(_photo(s, 200, 150))) for s in (1, 2)])
    with torch.inference_mode():
        expected = reference.eval().forward_head(reference.forward_features(x), pre_logits=True)
    np.testing.assert_allclose(backbone.embed(x), expected.numpy(), rtol=1e-5, atol=1e-5)

    cfg = ExtractConfig(extractor="timm-test-vit", weights="pretrained", device="cpu", batch_size=4, decode_threads=2)
    store = _store(tmp_path / "store", corpus)
    first, feats_a = _extract(store, cfg)
    assert not first["skipped"] and _extract(store, cfg)[0]["skipped"]  # same weights: done
    # the cached file changes (a new revision of the weights): same key, new fingerprint, re-extracted
    _write_hf_cache(cache, TEST_VIT_REPO, "model.safetensors", _test_vit_state_dict(seed=2))
    clear_backbone_cache()
    second, feats_b = _extract(store, cfg)
    assert second["extractor_key"] == first["extractor_key"] and not second["skipped"]
    assert second["fingerprint"] != first["fingerprint"]
    (spec,) = plan_shards(store, shard_size=100)
    marker = read_marker(store, first["extractor_key"], spec.shard_id)
    assert marker is not None and marker.fingerprint == second["fingerprint"]
    assert not np.allclose(np.stack(list(feats_a.values())), np.stack(list(feats_b.values())))

    fingerprints = {create_backbone("timm-test-vit", weights="pretrained").fingerprint(), first["fingerprint"]}
    fingerprints |= {create_backbone("timm-test-vit", weights="random", seed=s).fingerprint() for s in (0, 1)}
    assert len(fingerprints) == 4
    assert shard_fingerprint(backbone, spec, cfg) == first["fingerprint"]


def test_published_dinov2_layout_loads_into_the_224px_entry(tmp_path: Path) -> None:
    """The hub checkpoint has a 518-px (37x37) position embedding; timm's loader resamples it to 16x16."""
    torch.manual_seed(5)
    published = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False)
    assert tuple(published.pos_embed.shape) == (1, 1 + 37 * 37, 384)
    path = _write_hf_cache(tmp_path / "hf_cache", "timm/vit_small_patch14_dinov2.lvd142m", "model.safetensors",
                           published.state_dict())
    backbone = create_backbone("dinov2-vits14")
    assert backbone.weights_id.startswith("pretrained:hf-hub:timm/vit_small_patch14_dinov2.lvd142m:sha256:")
    assert tuple(backbone.module.net.pos_embed.shape) == (1, 1 + 16 * 16, 384)  # type: ignore[attr-defined]
    reference = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=True, img_size=224, num_classes=0,
                                  pretrained_cfg_overlay={"file": str(path)}).eval()
    x = backbone.preprocess(np.asarray(_photo(11, 300, 200)))[None]
    with torch.inference_mode():
        np.testing.assert_allclose(backbone.embed(x), reference(x).numpy(), rtol=1e-5, atol=1e-5)


def test_checkpoint_file_goes_through_timms_loader_and_a_wrong_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "test_vit.pth"
    torch.save(_test_vit_state_dict(seed=3), path)
    backbone = create_backbone("timm-test-vit", weights=str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert backbone.weights_id == f"file:sha256:{digest}" and backbone.key() == f"timm-test-vit-file-{digest[:12]}-160"
    other = tmp_path / "tinycnn.pth"
    torch.save(create_backbone("tinycnn").module.state_dict(), other)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"could not be loaded into 'timm-test-vit' by timm"):
        create_backbone("timm-test-vit", weights=str(other))
    with pytest.raises(ConfigError, match="no published pretrained weights"):
        create_backbone("openclip-test-vit", weights="pretrained")
    with pytest.raises(ConfigError, match="needs weights"):
        create_backbone("timm-test-vit", weights="none")


def test_pretrained_open_clip_weights_load_from_the_hub_cache(tmp_path: Path) -> None:
    name = "test-openclip-cached"
    if name not in list_backbones():
        register_openclip_backbone(name, OpenClipEntry("ViT-B-32", None, 32, 32, "tiny CLIP with cached weights",
                                                       TINY_CLIP_REPO, model_kwargs=TINY_CLIP_KWARGS))
    torch.manual_seed(4)
    clip = open_clip.create_model("ViT-B-32", pretrained=None, **TINY_CLIP_KWARGS).eval()
    path = _write_hf_cache(tmp_path / "hf_cache", TINY_CLIP_REPO, "open_clip_model.safetensors", clip.state_dict())
    backbone = create_backbone(name)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert backbone.weights_id == f"pretrained:open_clip:ViT-B-32:sha256:{digest}"
    x = torch.stack([backbone.preprocess(np.asarray(_photo(s, 90, 60))) for s in (5, 6, 7)])
    with torch.inference_mode():
        expected = clip.encode_image(x, normalize=True)
    np.testing.assert_allclose(backbone.embed(x), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert backbone.fingerprint() != create_backbone(name, weights="random").fingerprint()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["dinov2-vits14", "clip-vitb32", "convnext-tiny"])
def test_cuda_bf16_channels_last_matches_cpu(name: str) -> None:
    cpu = create_backbone(name, weights="random", seed=0)
    gpu = create_backbone(name, weights="random", seed=0, device="cuda")
    x = torch.stack([cpu.preprocess(np.asarray(_photo(s, 320, 240))) for s in (8, 9)])
    a, b = cpu.embed(x), gpu.embed(x)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert b.dtype == np.float32 and cosine.min() > 0.99
