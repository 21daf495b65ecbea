"""The GPU decode/preprocess path, checked on the CPU against the PIL path (and on CUDA when present)."""
from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from imgclust.extract.backbones import create_backbone
from imgclust.extract.backbones.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    preprocess_image,
)
from imgclust.extract.gpu_pipeline import auto_batch_size, decode_batch, preprocess_on_device
from imgclust.extract.images import decode_image
from imgclust.io.features import embeddings_of


def _jpeg(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real photograph (scikit-learn's sample 'china.jpg', 427x640) cut to ImageNet size 500x375."""
    return Image.fromarray(load_sample_images().images[0]).crop((50, 20, 550, 395))


@pytest.fixture(scope="module")
def files(photo: Image.Image) -> list[bytes]:
    rot = photo.copy()
    exif = rot.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to display
    png = io.BytesIO()
    photo.resize((64, 48)).save(png, format="PNG")
    good = _jpeg(photo)
    return [good, _jpeg(photo.convert("L")), png.getvalue(), good[: len(good) // 2], _jpeg(photo.convert("CMYK")),
            _jpeg(rot, exif=exif.tobytes()), b"<html>not an image</html>"]


def test_decode_batch_matches_the_cpu_decoder_and_keeps_quarantine_kinds(files: list[bytes]) -> None:
    out = decode_batch(files, "RGB", "cpu")
    assert sorted(out.images) == [0, 1, 2, 4, 5] and sorted(out.errors) == [3, 6]
    assert out.errors[3].kind == "truncated" and out.errors[6].kind == "not_an_image"
    for i, img in out.images.items():
        ref = torch.from_numpy(decode_image(files[i], mode="RGB")).permute(2, 0, 1)
        assert img.shape == ref.shape, i  # includes the EXIF rotation of file 5 (375x500 -> 500x375)
        assert (img.float() - ref.float()).abs().mean() < 2.0, i  # libjpeg builds differ by rounding only


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_on_device_matches_pil(photo: Image.Image, orientation: int) -> None:
    """nvJPEG ignores EXIF orientation, so decode_batch applies it itself: each of the 8 orientations must
    give PIL's ``exif_transpose`` of the same JPEG, pixel for pixel after the (identical) decode."""
    from PIL import ImageOps

    from imgclust.extract.gpu_pipeline import apply_exif_orientation

    small = photo.resize((40, 30))
    exif = small.getexif()
    exif[0x0112] = orientation
    data = _jpeg(small, exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as im:
        raw = np.asarray(im.convert("RGB"))
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    got = apply_exif_orientation(torch.from_numpy(raw.copy()).permute(2, 0, 1), orientation)
    assert torch.equal(got, torch.from_numpy(upright.copy()).permute(2, 0, 1))
    out = decode_batch([data], "RGB", "cpu")
    assert tuple(out.images[0].shape) == (3, *upright.shape[:2])


def test_gray_mode_gives_one_channel(files: list[bytes]) -> None:
    out = decode_batch(files[:3], "L", "cpu")
    assert all(t.shape[0] == 1 for t in out.images.values())


@pytest.mark.parametrize("resize", ["short_side_center_crop", "squash"])
def test_device_preprocessing_matches_pil(photo: Image.Image, resize: str) -> None:
    prep = Preprocessing(input_size=224, mode="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=resize)
    arr = np.array(photo)  # writable, for torch.from_numpy
    ref = preprocess_image(arr, prep)
    got = preprocess_on_device([torch.from_numpy(arr).permute(2, 0, 1).contiguous()], prep)[0]
    assert got.shape == ref.shape == (3, 224, 224)
    assert (got - ref).abs().mean() < 0.02  # normalised units (~1.2 grey levels): antialias kernels differ


def test_gray_to_rgb_and_rgb_to_gray(photo: Image.Image) -> None:
    arr = np.array(photo)  # writable, for torch.from_numpy
    rgb = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    gray_prep = Preprocessing(input_size=28, mode="L", mean=(0.5,), std=(0.5,))
    ref = preprocess_image(arr, gray_prep)
    assert (preprocess_on_device([rgb], gray_prep)[0] - ref).abs().mean() < 0.02
    gray = torch.from_numpy(np.array(photo.convert("L")))[None]
    rgb_prep = Preprocessing(input_size=32, mode="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert preprocess_on_device([gray], rgb_prep).shape == (1, 3, 32, 32)


def test_auto_batch_size_on_cpu_is_the_default() -> None:
    assert auto_batch_size(create_backbone("tinycnn", weights="random", device="cpu"), max_batch=32) == 32


@pytest.mark.gpu
def test_nvjpeg_matches_cpu_decode(files: list[bytes]) -> None:
    cpu, gpu = decode_batch(files, "RGB", "cpu"), decode_batch(files, "RGB", "cuda")
    assert sorted(cpu.images) == sorted(gpu.images) and gpu.on_device >= 2
    for i in cpu.images:
        assert (cpu.images[i].float() - gpu.images[i].cpu().float()).abs().mean() < 2.0
    backbone = create_backbone("resnet18", weights="random", device="cuda")
    assert auto_batch_size(backbone) >= 64


def test_extract_shard_device_decode_path_matches_the_cpu_path(tmp_path: Path) -> None:
    """The device path forced on CPU: same rows, same quarantine kinds, PNG features bit-identical,
    JPEG features within resize-kernel rounding; its fingerprint differs, so stores never mix them."""
    from helpers_images import make_corpus

    from imgclust.config import ExtractConfig
    from imgclust.extract.shard import backbone_for, extract_shard, shard_fingerprint
    from imgclust.io.features import feature_path, quarantine_path
    from imgclust.io.manifest import ingest, plan_shards
    from imgclust.io.store import Store

    expected = make_corpus(tmp_path / "src", n_png=20, n_jpeg=6, seed=3)
    out = {}
    for how in ("cpu", "device"):
        store = Store(tmp_path / how)
        part = ingest(store, str(tmp_path / "src"), date=dt.date(2026, 11, 25)).part
        cfg = ExtractConfig(extractor="pixels", decode_on=how, batch_size=8, max_pixels=99 * 99)
        (spec,) = plan_shards(store, shard_size=1000, parts=[part])
        marker = extract_shard(store, spec, cfg)
        feats = store.read_parquet(feature_path(marker["extractor_key"], spec.shard_id))
        quar = store.read_parquet(quarantine_path(marker["extractor_key"], spec.shard_id))
        out[how] = (feats.column("image_id").to_pylist(), embeddings_of(feats), dict(zip(
            quar.column("uri").to_pylist(), quar.column("error_kind").to_pylist(), strict=True)),
            shard_fingerprint(backbone_for(cfg), spec, cfg))
    (ids_c, X_c, q_c, fp_c), (ids_d, X_d, q_d, fp_d) = out["cpu"], out["device"]
    assert ids_c == ids_d and len(ids_c) == 26
    names_c = {Path(u).name: k for u, k in q_c.items()}
    names_d = {Path(u).name: k for u, k in q_d.items()}
    assert names_d == names_c and len(names_d) >= 4  # identical bad files are one manifest row (content id)
    assert all(expected[name] == kind for name, kind in names_d.items())
    diff = np.abs(X_c - X_d).mean(axis=1)
    assert np.all(diff[diff > 0] < 0.05) and np.sum(diff == 0) >= 20  # the 28x28 PNGs need no resize
    assert fp_c != fp_d
