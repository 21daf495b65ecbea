"""Real photos: the installed wallpapers, photo-variant corpora with known groups, reduced-scale JPEG decode,
and the pipeline flow (real Prefect API, real Dask LocalCluster) on colour photos of mixed sizes and formats."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_photos import encode, photo_like, requires_photos, write
from PIL import Image

from imgclust.config import ClusterConfig, ExtractConfig, PipelineConfig, ReduceConfig
from imgclust.data.photos import (
    INSTALL_COMMAND,
    VARIANT_KINDS,
    PhotoCorpus,
    PhotoRoot,
    SystemPhoto,
    build_photo_variant_corpus,
    find_system_photos,
)
from imgclust.exceptions import ConfigError, UnknownNameError
from imgclust.extract.backbones.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    preprocess_image,
)
from imgclust.extract.images import decode_image
from imgclust.io.store import Store
from imgclust.models.labels import read_labels
from imgclust.models.verify import verify_store

RESNET_PREP = Preprocessing(224, "RGB", IMAGENET_MEAN, IMAGENET_STD, "short_side_center_crop")


def _digests(corpus: PhotoCorpus) -> dict[str, str]:
    return {str(r.path.relative_to(corpus.root)): hashlib.sha256(r.path.read_bytes()).hexdigest()
            for r in corpus.records}


# ---- reduced-scale decode (imgclust.extract.images) ------------------------------------------------------
def test_reduced_jpeg_decode_matches_a_full_decode_after_the_model_resize() -> None:
    data = encode(photo_like(seed=1, width=2400, height=1600), "JPEG", quality=90)
    full, reduced = decode_image(data), decode_image(data, target_side=224)
    assert full.shape == (1600, 2400, 3) and reduced.shape == (400, 600, 3)  # 1600 // 224 = 7 -> scale 1/4
    scale = np.asarray(RESNET_PREP.std, dtype=np.float32)[:, None, None] * 255.0
    diff = np.abs((preprocess_image(full, RESNET_PREP) - preprocess_image(reduced, RESNET_PREP)).numpy()) * scale
    assert diff.mean() < 1.0 and np.percentile(diff, 99) < 4.0, (diff.mean(), np.percentile(diff, 99))


def test_reduced_decode_leaves_small_jpegs_and_other_formats_alone() -> None:
    image = photo_like(seed=2, width=640, height=480)
    for data in (encode(image, "JPEG", quality=90), encode(image.resize((1800, 1200)), "PNG")):
        np.testing.assert_array_equal(decode_image(data, target_side=320), decode_image(data))
    with pytest.raises(ConfigError, match="target_side=0"):
        decode_image(encode(image, "PNG"), target_side=0)


# VmHWM (peak RSS of this process image) rather than ru_maxrss, which Linux carries over from the forking
# parent across exec: under pytest it starts at pytest's own size.
_PEAK = """
import sys
from imgclust.extract.images import decode_image
def hwm():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
data = open(sys.argv[1], "rb").read()
base = hwm()
arr = decode_image(data, target_side=int(sys.argv[2]) or None)
print(hwm() - base)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from Linux's /proc")
def test_reduced_decode_lowers_peak_memory(tmp_path: Path) -> None:
    """Peak RSS growth of one decode in a fresh process: a 12 MP JPEG needs ~70 MB in full, ~1 MB at 1/8."""
    path = write(tmp_path / "big.jpg", encode(photo_like(seed=3, width=4000, height=3000), "JPEG", quality=90))

    def peak_kib(target: int) -> int:
        out = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(target)], check=True,
                             capture_output=True, text=True)
        return int(out.stdout)

    full, reduced = peak_kib(0), peak_kib(224)
    assert full > 60_000 and reduced < full // 8, (full, reduced)


# ---- finding the installed photos ----------------------------------------------------------------
@pytest.fixture()
def fake_system(tmp_path: Path) -> PhotoRoot:
    """A folder laid out like /usr/share/backgrounds: a family in two sizes, light/dark, a byte copy,
    a symlink, a symlinked folder, a logo, a blank overlay, an SVG."""
    pics = tmp_path / "backgrounds" / "pics"
    sunset = photo_like(seed=10, width=1920, height=1080)
    big = write(pics / "sunset_1920x1080.jpg", encode(sunset, "JPEG", quality=92))
    write(pics / "sunset_1280x720.jpg", encode(sunset.resize((1280, 720)), "JPEG", quality=92))
    write(pics / "zz-copy.jpg", big.read_bytes())
    os.symlink(big, pics / "alias.jpg")
    write(pics / "forest-d.webp", encode(photo_like(seed=11, width=800, height=600), "WEBP", quality=85))
    write(pics / "forest-l.webp", encode(photo_like(seed=12, width=800, height=600), "WEBP", quality=85))
    write(pics / "logo.png", encode(photo_like(seed=13, width=200, height=200), "PNG"))
    write(pics / "overlay.png", encode(Image.new("RGBA", (800, 600), (0, 0, 0, 0)), "PNG"))
    write(pics / "drawing.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    os.symlink(pics, tmp_path / "backgrounds" / "linked")
    return PhotoRoot(str(tmp_path / "backgrounds"))


def test_find_system_photos_dedupes_resolves_links_and_names_families(fake_system: PhotoRoot) -> None:
    photos = find_system_photos([fake_system])
    names = [p.path.name for p in photos]
    assert names == ["forest-d.webp", "forest-l.webp", "sunset_1280x720.jpg", "sunset_1920x1080.jpg"]
    assert all(not p.path.is_symlink() and p.path.is_absolute() for p in photos)
    assert len({p.sha256 for p in photos}) == 4
    assert {p.family.rsplit("/", 1)[1] for p in photos} == {"forest", "sunset"}
    assert [(p.format, p.width, p.height) for p in photos][2:] == [("JPEG", 1280, 720), ("JPEG", 1920, 1080)]


def test_find_system_photos_names_the_apt_command_when_nothing_is_installed(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=INSTALL_COMMAND):
        find_system_photos([PhotoRoot(str(tmp_path / "nothing-here"))])


# ---- the variant corpus, from synthetic sources (runs everywhere) --------------------------------
@pytest.fixture()
def fake_photos(fake_system: PhotoRoot) -> list[SystemPhoto]:
    return find_system_photos([fake_system])


def test_corpus_is_deterministic_and_each_kind_independent_of_the_others(tmp_path: Path,
                                                                         fake_photos: list[SystemPhoto]) -> None:
    a = build_photo_variant_corpus(tmp_path / "a", seed=3, max_side=512, photos=fake_photos)
    b = build_photo_variant_corpus(tmp_path / "b", seed=3, max_side=512, photos=fake_photos)
    only_crop = build_photo_variant_corpus(tmp_path / "c", seed=3, max_side=512, kinds=["crop85", "rotate"],
                                           photos=fake_photos)
    other_seed = build_photo_variant_corpus(tmp_path / "d", seed=4, max_side=512, photos=fake_photos)
    da, db, dc, dd = map(_digests, (a, b, only_crop, other_seed))
    assert da == db and len(set(da.values())) == len(da) == 2 * len(VARIANT_KINDS)
    assert dc.items() <= da.items()
    assert {k for k in da if da[k] != dd[k]} == {f"{g}/{k}.jpg" for g in a.groups()
                                                  for k in ("crop85", "colour", "rotate")}


def test_corpus_groups_kinds_and_lookup(tmp_path: Path, fake_photos: list[SystemPhoto]) -> None:
    corpus = build_photo_variant_corpus(tmp_path / "c", seed=0, max_side=512, photos=fake_photos)
    groups = corpus.groups()
    assert sorted(groups) == ["00-forest", "01-sunset"]  # one source per family: the largest
    assert {r.source.name for r in groups["01-sunset"]} == {"sunset_1920x1080.jpg"}
    assert corpus.kinds() == list(VARIANT_KINDS)
    for group, records in groups.items():
        assert [r.kind for r in records] == sorted(VARIANT_KINDS)  # path order: <group>/<kind>.<ext>
        assert all(r.path.parent.name == group and corpus.group_of(r.path) == group for r in records)
    shapes = {r.kind: decode_image(r.path.read_bytes()).shape for r in groups["01-sunset"]}
    assert shapes["original"] == (288, 512, 3) and shapes["half"] == (144, 256, 3)
    assert shapes["thumb"] == (144, 256, 3) and shapes["crop85"] == (266, 472, 3)
    assert corpus.record_of("01-sunset/webp.webp").kind == "webp"
    with pytest.raises(UnknownNameError, match="not a file of the photo corpus"):
        corpus.group_of("01-sunset/nope.jpg")
    assert PhotoCorpus.load(corpus.root) == corpus


def test_corpus_is_reused_when_complete_and_refuses_other_settings(tmp_path: Path,
                                                                   fake_photos: list[SystemPhoto]) -> None:
    first = build_photo_variant_corpus(tmp_path / "c", seed=0, max_side=512, kinds=["half"], photos=fake_photos)
    mtime = first.records[0].path.stat().st_mtime_ns
    again = build_photo_variant_corpus(tmp_path / "c", seed=0, max_side=512, kinds=["half"], photos=fake_photos)
    assert again == first and again.records[0].path.stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="other settings"):
        build_photo_variant_corpus(tmp_path / "c", seed=1, max_side=512, kinds=["half"], photos=fake_photos)
    write(tmp_path / "busy" / "x.txt", b"x")
    with pytest.raises(FileExistsError, match="not empty"):
        build_photo_variant_corpus(tmp_path / "busy", seed=0, max_side=512, photos=fake_photos)


@pytest.mark.parametrize(("options", "match"), [
    ({"kinds": ["sepia"]}, "kinds must be distinct names"),
    ({"max_side": 300}, "max_side=300 is below 512"),
    ({"n_sources": 3}, "n_sources=3 but there are 2 photo families"),
])
def test_corpus_refuses_bad_settings(tmp_path: Path, fake_photos: list[SystemPhoto], options: dict[str, Any],
                                     match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_photo_variant_corpus(tmp_path / "c", seed=0, photos=fake_photos, **options)


# ---- the installed Debian wallpapers -------------------------------------------------------------
@requires_photos
def test_installed_wallpapers_are_distinct_multi_megapixel_rasters() -> None:
    photos = find_system_photos()
    assert len(photos) >= 20 and [p.path for p in photos] == sorted(p.path for p in photos)
    assert {p.format for p in photos} == {"JPEG", "PNG", "WEBP"}
    assert len({p.sha256 for p in photos}) == len(photos)
    assert max(p.pixels for p in photos) >= 8_000_000 and min(min(p.width, p.height) for p in photos) >= 480
    assert len({p.family for p in photos}) < len(photos)  # sizes / light-dark versions share a family


KINDS = ("original", "crop85", "half", "thumb", "jpeg35", "webp")


@pytest.fixture(scope="module")
def photo_corpus(tmp_path_factory: pytest.TempPathFactory) -> PhotoCorpus:
    return build_photo_variant_corpus(tmp_path_factory.mktemp("photos"), seed=7, n_sources=8, max_side=640,
                                      kinds=KINDS)


@requires_photos
def test_real_photo_corpus_decodes_in_colour_at_mixed_sizes(photo_corpus: PhotoCorpus) -> None:
    groups = photo_corpus.groups()
    assert len(groups) == 8 and all(sorted(r.kind for r in g) == sorted(KINDS) for g in groups.values())
    assert all(len({r.source for r in g}) == 1 for g in groups.values())
    assert len({r.source for r in photo_corpus.records}) == 8
    arrays = [decode_image(r.path.read_bytes()) for r in photo_corpus.records]
    assert all(a.ndim == 3 and a.shape[2] == 3 and max(a.shape[:2]) <= 640 for a in arrays)
    assert len({a.shape[:2] for a in arrays}) >= 8
    colourful = [float(np.abs(a[..., 0].astype(int) - a[..., 2]).mean()) for a in arrays]
    assert sum(c > 10 for c in colourful) >= len(arrays) // 2, colourful


@requires_photos
@pytest.mark.integration
def test_pipeline_flow_on_real_photos(photo_corpus: PhotoCorpus, tmp_path: Path, dask_address: str) -> None:
    """colorhist (RGB histogram) + PCA + k-means over 8 photos x 6 variants; folders are the groups."""
    from prefect_dask import DaskTaskRunner

    from flows.pipeline import pipeline

    cfg = PipelineConfig(source=str(photo_corpus.root), store=str(tmp_path / "store"),
                         extract=ExtractConfig(extractor="colorhist", shard_size=20, batch_size=16),
                         reduce=ReduceConfig(n_components=16), cluster=ClusterConfig(k=8, n_redo=3, seed=3),
                         truth="parent_dir")
    result = pipeline.with_options(task_runner=DaskTaskRunner(address=dask_address))(config=cfg)
    n = len(photo_corpus.records)
    assert result["ingest"]["new"] == n == 48
    store = Store(tmp_path / "store")
    report = verify_store(store, result["extraction"]["extractor_key"], model_id=result["build"]["model_id"])
    assert report.ok, report.summary()
    assert (report.manifest_rows, report.features, report.quarantined, report.labels) == (n, n, 0, n)
    assert read_labels(store, result["build"]["model_id"]).num_rows == n
    metrics = result["build"]["metrics"]
    assert metrics["nmi"] >= 0.6, metrics  # colour histograms survive crops, rescales and re-encodes
