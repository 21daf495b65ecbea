"""Tests for imgclust.extract.backbones: registry, weights resolution (offline), shapes, determinism, cache."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from imgclust.exceptions import ConfigError, ImageDecodeError, UnknownNameError, WeightsNotFoundError
from imgclust.extract.backbones import (
    Backbone,
    Preprocessing,
    clear_backbone_cache,
    create_backbone,
    describe_backbones,
    list_backbones,
    register_backbone,
)

ALL_NAMES = {
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16", "vgg19",
    "pixels", "pixels-rgb32", "hog", "colorhist", "tinycnn",
}
SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Every test starts with an empty model cache and an empty, private TORCH_HOME, offline (downloads are
    tested against a loopback server in test_weights_download.py)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("IMGCLUST_OFFLINE", "1")
    clear_backbone_cache()
    yield
    clear_backbone_cache()


def _images(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, size=(37, 81, 3), dtype=np.uint8),
        rng.integers(0, 256, size=(120, 45), dtype=np.uint8),
    ]


def _batch(backbone: Backbone, seed: int, n: int = 2) -> torch.Tensor:
    return torch.stack([backbone.preprocess(img) for img in _images(seed)[:n]])


def _resnet18_state_dict(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).state_dict()


def _penultimate_resnet18(state_dict: dict[str, torch.Tensor], batch: torch.Tensor) -> np.ndarray:
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(state_dict)
    model.fc = nn.Identity()
    with torch.inference_mode():
        return model.eval()(batch).numpy()


# --- registry ------------------------------------------------------------------------------------

def test_list_and_describe_contain_every_builtin():
    assert ALL_NAMES <= set(list_backbones())
    assert list_backbones() == sorted(list_backbones())
    descriptions = describe_backbones()
    assert ALL_NAMES <= set(descriptions)
    assert all(isinstance(v, str) and v for v in descriptions.values())


def test_unknown_name_lists_available_names():
    with pytest.raises(UnknownNameError) as info:
        create_backbone("resnet9000")
    message = str(info.value)
    assert "resnet9000" in message
    assert all(name in message for name in ALL_NAMES)


def test_register_duplicate_or_unsafe_name_raises():
    with pytest.raises(ConfigError, match="already registered"):
        register_backbone("tinycnn", lambda **kw: None, description="dup", default_weights="random")
    with pytest.raises(ConfigError, match="must match"):
        register_backbone("Bad/Name", lambda **kw: None, description="x", default_weights="random")


def test_prefixed_names_go_to_their_provider_and_unknown_prefixes_say_so(monkeypatch):
    from imgclust.extract.backbones import registry

    for attr, value in (("_PREFIXES", {}), ("_CACHE", {}), ("_ENTRY_POINTS_LOADED", False)):
        monkeypatch.setattr(registry, attr, value)
    built: list[tuple[str, torch.device]] = []

    def provider(location: str, device: torch.device):
        built.append((location, device))
        return create_backbone("pixels")

    registry.register_prefix("test-prefix:", provider)
    registry.register_prefix("test-prefix:", provider)  # the same factory again: a no-op
    with pytest.raises(ConfigError, match="already registered"):
        registry.register_prefix("test-prefix:", lambda location, device: None)
    with pytest.raises(ConfigError, match="must match"):
        registry.register_prefix("no-colon", provider)
    bb = create_backbone("test-prefix:/some/dir", device="cpu")
    assert bb is create_backbone("test-prefix:/some/dir")  # cached per process
    assert built == [("/some/dir", torch.device("cpu"))]
    with pytest.raises(UnknownNameError, match="no provider handles the prefix 'nope:'"):
        create_backbone("nope:/x")
    assert "deep:" in registry.list_prefixes()  # found through the imgclust.extract.backbones entry point


# --- shapes --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "weights", "dim", "n"),
    [
        ("resnet18", "random", 512, 2),
        ("vgg16", "random", 512, 1),  # ~3 s on a 2-core CPU: build + one 224x224 forward
        ("pixels", None, 28 * 28, 2),
        ("pixels-rgb32", None, 32 * 32 * 3, 2),
        ("hog", None, 1764, 2),
        ("colorhist", None, 512, 2),
        ("tinycnn", None, 64, 2),
    ],
)
def test_embed_shape_dtype_finite(name, weights, dim, n):
    backbone = create_backbone(name, weights=weights, seed=0)
    assert backbone.dim == dim
    features = backbone.embed(_batch(backbone, seed=1, n=n))
    assert features.shape == (n, dim)
    assert features.dtype == np.float32
    assert np.isfinite(features).all()
    assert SAFE_KEY.match(backbone.key())
    meta = backbone.metadata()
    assert meta["extractor"] == name and meta["weights_id"] == backbone.weights_id
    assert meta["near_duplicate_space"] == "true"
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())


def test_empty_batch_and_wrong_shape():
    backbone = create_backbone("tinycnn")
    assert backbone.embed(torch.zeros(0, 3, 32, 32)).shape == (0, 64)
    with pytest.raises(ConfigError, match="expects a batch"):
        backbone.embed(torch.zeros(2, 3, 64, 64))


def test_classic_features_are_what_they_claim():
    pixels = create_backbone("pixels")
    gray = np.full((28, 28), 51, dtype=np.uint8)
    np.testing.assert_allclose(pixels.embed(pixels.preprocess(gray)[None]), 0.2, atol=1e-6)

    hist = create_backbone("colorhist")
    red = np.zeros((10, 10, 3), dtype=np.uint8)
    red[..., 0] = 255
    h = hist.embed(hist.preprocess(red)[None])[0]
    assert h.sum() == pytest.approx(1.0) and h[7 * 64] == pytest.approx(1.0)

    hog = create_backbone("hog")
    flat = hog.embed(hog.preprocess(np.full((64, 64), 128, dtype=np.uint8))[None])
    assert np.allclose(flat, 0.0)  # no gradient, no votes
    stripes = np.tile((np.arange(64) // 4 % 2 * 255).astype(np.uint8), (64, 1))  # vertical edges
    v = hog.embed(hog.preprocess(stripes)[None])[0].reshape(49, 4, 9)
    np.testing.assert_allclose(np.linalg.norm(v.reshape(49, 36), axis=-1), 1.0, atol=1e-4)  # L2-Hys blocks
    assert v.sum(axis=(0, 1)).argmax() in (0, 8)  # horizontal gradient -> orientation ~0/180 deg


# --- preprocessing -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "pixels", "pixels-rgb32", "tinycnn"])
@pytest.mark.parametrize("shape", [(13, 200), (200, 13, 3), (1, 1), (224, 224, 3), (50, 60, 4)])
def test_preprocess_any_size_and_mode(name, shape):
    backbone = create_backbone(name, weights="random" if name == "resnet18" else None)
    image = np.random.default_rng(2).integers(0, 256, size=shape, dtype=np.uint8)
    out = backbone.preprocess(image)
    prep = backbone.preprocessing
    assert out.dtype == torch.float32
    assert tuple(out.shape) == (prep.channels, prep.input_size, prep.input_size)
    assert torch.isfinite(out).all()


def test_preprocess_rejects_unusable_arrays():
    backbone = create_backbone("tinycnn")
    with pytest.raises(ImageDecodeError, match="unsupported_mode"):
        backbone.preprocess(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ImageDecodeError, match="unsupported_mode"):
        backbone.preprocess(np.zeros((8, 8, 2), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match="too_small"):
        backbone.preprocess(np.zeros((0, 8), dtype=np.uint8))


def test_short_side_center_crop_keeps_the_middle():
    prep = Preprocessing(4, "L", (0.0,), (1.0,), "short_side_center_crop")
    image = np.zeros((4, 12), dtype=np.uint8)
    image[:, 4:8] = 255  # the central square is white, the sides black
    from imgclust.extract.backbones import preprocess_image

    assert torch.allclose(preprocess_image(image, prep), torch.ones(1, 4, 4))


# --- weights -------------------------------------------------------------------------------------

def test_missing_imagenet_weights_names_the_expected_file(tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone("resnet50", weights="imagenet")
    expected = tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    message = str(info.value)
    assert str(expected) in message
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert "Nothing is downloaded (offline: IMGCLUST_OFFLINE is set)" in message
    assert "imgclust weights pull resnet50" in message
    assert "--weights random" in message and "--weights PATH" in message
    with pytest.raises(WeightsNotFoundError, match="vgg16-397923af.pth"):
        create_backbone("vgg16")  # default weights are "imagenet"


def test_state_dict_path_gives_that_models_penultimate_features(tmp_path):
    state_dict = _resnet18_state_dict(seed=7)
    path = tmp_path / "r18.pth"
    torch.save(state_dict, path)
    backbone = create_backbone("resnet18", weights=str(path))
    batch = _batch(backbone, seed=3)
    np.testing.assert_allclose(backbone.embed(batch), _penultimate_resnet18(state_dict, batch), rtol=1e-5, atol=1e-5)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert backbone.weights_id == f"file:sha256:{digest}"
    assert backbone.key() == f"resnet18-file-{digest[:12]}-224"


def test_imagenet_loads_from_fake_torch_home(tmp_path):
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    path = checkpoints / os.path.basename(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url)
    torch.save(_resnet18_state_dict(seed=11), path)
    backbone = create_backbone("resnet18", weights="imagenet")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert backbone.weights_id == f"imagenet:sha256:{digest}"
    assert backbone.key() == "resnet18-imagenet-224"
    assert create_backbone("resnet18") is backbone  # None -> default "imagenet" -> same cache entry
    assert backbone.preprocessing.resize == "short_side_center_crop"
    assert backbone.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))


def test_state_dict_of_another_architecture_is_refused(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ConfigError, match=r"unexpected keys [1-9]"):
        create_backbone("resnet18", weights=str(path))

    wrong_head = _resnet18_state_dict(seed=0)
    wrong_head["fc.weight"] = torch.zeros(10, 512)
    wrong_head["fc.bias"] = torch.zeros(10)
    torch.save(wrong_head, tmp_path / "r18_10.pth")
    with pytest.raises(ConfigError, match=r"shape mismatches 2 \(fc.weight"):
        create_backbone("resnet18", weights=str(tmp_path / "r18_10.pth"))

    torch.save({"state_dict": _resnet18_state_dict(seed=0)}, tmp_path / "ckpt.pth")
    with pytest.raises(ConfigError, match="training checkpoint"):
        create_backbone("resnet18", weights=str(tmp_path / "ckpt.pth"))


@pytest.mark.parametrize("weights", ["facebook/resnet", "microsoft/resnet-50", "IMAGENET1K_V2"])
def test_hub_id_like_string_is_refused(weights):
    with pytest.raises(ConfigError, match="will not guess"):
        create_backbone("tinycnn", weights=weights)


def test_other_bad_weights(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        create_backbone("tinycnn", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="directory"):
        create_backbone("tinycnn", weights=str(tmp_path))
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="could not load"):
        create_backbone("tinycnn", weights=str(tmp_path / "garbage.pth"))
    with pytest.raises(ConfigError, match="no pretrained"):
        create_backbone("tinycnn", weights="imagenet")
    with pytest.raises(ConfigError, match="without weights"):
        create_backbone("pixels", weights="random")
    with pytest.raises(ConfigError, match="needs weights"):
        create_backbone("tinycnn", weights="none")


# --- determinism, fingerprints, cache -----------------------------------------------------------

def test_same_seed_same_weights_and_embeddings():
    first = create_backbone("tinycnn", seed=5)
    batch = _batch(first, seed=4)
    expected = first.embed(batch)
    torch.manual_seed(123)  # the caller's RNG state must not matter ...
    before = torch.get_rng_state()
    clear_backbone_cache()
    second = create_backbone("tinycnn", seed=5)
    assert torch.equal(torch.get_rng_state(), before)  # ... and must not be disturbed
    assert second is not first
    np.testing.assert_array_equal(second.embed(batch), expected)
    assert second.fingerprint() == first.fingerprint() and second.key() == first.key()
    other = create_backbone("tinycnn", seed=6)
    assert not np.allclose(other.embed(batch), expected)


def test_fingerprint_changes_with_seed_and_weights(tmp_path):
    fingerprints = {
        create_backbone("tinycnn", seed=0).fingerprint(),
        create_backbone("tinycnn", seed=1).fingerprint(),
    }
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(create_backbone("tinycnn", seed=9).module.state_dict(), path)
    from_file = create_backbone("tinycnn", weights=str(path))
    fingerprints.add(from_file.fingerprint())
    fingerprints |= {create_backbone(n).fingerprint() for n in ("pixels", "pixels-rgb32", "hog", "colorhist")}
    assert len(fingerprints) == 7
    assert all(re.fullmatch(r"[0-9a-f]{16}", f) for f in fingerprints)
    keys = {create_backbone("tinycnn", seed=s).key() for s in (0, 1)} | {from_file.key()}
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert keys == {"tinycnn-random0", "tinycnn-random1", f"tinycnn-file-{digest[:12]}"}
    assert create_backbone("pixels").key() == "pixels-28-L"
    assert all(SAFE_KEY.match(k) for k in keys)


def test_cache_returns_same_object_for_same_arguments():
    a = create_backbone("tinycnn", weights="random", device="cpu", seed=0)
    assert create_backbone("tinycnn", weights="random", device="cpu", seed=0) is a
    assert create_backbone("tinycnn") is a  # defaults resolve to the same arguments
    assert create_backbone("tinycnn", seed=1) is not a
    clear_backbone_cache()
    assert create_backbone("tinycnn") is not a


def test_custom_backbone_can_be_registered():
    def factory(*, name, weights, device, seed):
        prep = Preprocessing(8, "L", (0.0,), (1.0,))

        class Mean(Backbone):
            uses_amp = False

            def _forward(self, batch):
                return batch.mean(dim=(2, 3))

        return Mean(name=name, dim=1, preprocessing=prep, weights_id="none", device=device)

    name = "test-mean-encoder"
    if name not in list_backbones():
        register_backbone(name, factory, description="mean intensity", default_weights="none")
    backbone = create_backbone(name)
    out = backbone.embed(backbone.preprocess(np.full((5, 5), 255, dtype=np.uint8))[None])
    np.testing.assert_allclose(out, [[1.0]])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_matches_cpu_and_cache_normalises_device():
    cpu = create_backbone("resnet18", weights="random", seed=0)
    gpu = create_backbone("resnet18", weights="random", seed=0, device="cuda")
    assert create_backbone("resnet18", weights="random", seed=0, device="cuda:0") is gpu
    batch = _batch(cpu, seed=5)
    a, b = cpu.embed(batch), gpu.embed(batch)
    assert b.dtype == np.float32 and b.shape == a.shape
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.99  # bf16 autocast, not bit-identical
    for name in ("hog", "colorhist", "pixels"):
        c, g = create_backbone(name), create_backbone(name, device="cuda")
        x = _batch(c, seed=6)
        np.testing.assert_allclose(g.embed(x), c.embed(x), atol=1e-4)
