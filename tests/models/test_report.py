"""The HTML report on a real small store: ingest PNG files, extract pixels, fit k-means, label, report."""
from __future__ import annotations

import datetime as dt
import io
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imgclust.config import ClusterConfig, ExtractConfig, IngestConfig, Recipe, ReduceConfig
from imgclust.exceptions import ConfigError, CorruptArtifactError
from imgclust.extract.shard import extract_shard
from imgclust.io.manifest import ingest, plan_shards, read_manifest
from imgclust.io.store import Store
from imgclust.models.labels import evaluate, label_shard, read_labels
from imgclust.models.model import fit_from_store
from imgclust.models.report import (
    GAP,
    MISSING_RGB,
    NAMES_FILE,
    ReportConfig,
    build_report,
    load_cluster_names,
    pca_2d,
    write_cluster_names_template,
)

DAY = dt.date(2026, 11, 24)
SEED = 1234


def _group_image(group: int, rng: np.random.Generator) -> np.ndarray:
    """28x28 grey: dark noise, bright noise, or a left-to-right ramp (three obvious clusters)."""
    if group == 0:
        return rng.integers(0, 60, (28, 28), dtype=np.uint8)
    if group == 1:
        return rng.integers(195, 256, (28, 28), dtype=np.uint8)
    ramp = np.tile(np.linspace(0, 255, 28), (28, 1)) + rng.normal(0, 8, (28, 28))
    return np.clip(ramp, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("report")
    src = root / "src"
    rng = np.random.default_rng(SEED)
    for i in range(45):
        (src / f"g{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_group_image(i % 3, rng)).save(src / f"g{i % 3}" / f"img{i:03d}.png")
    store = Store(root / "store")
    ingest(store, str(src), config=IngestConfig(hash_threads=2), date=DAY)
    cfg = ExtractConfig(extractor="pixels", device="cpu", decode_threads=1)
    specs = plan_shards(store, shard_size=20)
    key = [extract_shard(store, spec, cfg) for spec in specs][0]["extractor_key"]
    model = fit_from_store(store, key, recipe=Recipe(reduce=ReduceConfig(n_components=8),
                                                     cluster=ClusterConfig(k=3, seed=0)))
    for spec in specs:
        label_shard(store, model.model_id, key, spec.shard_id, date=DAY)
    return {"store": store, "model_id": model.model_id, "key": key, "src": src}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs)["src"] or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(store: Store, index: str) -> _Page:
    page = _Page()
    page.feed(store.read_bytes(index).decode("utf-8"))
    page.close()
    return page


def _cluster_ids(store: Store, model_id: str) -> set[int]:
    return set(read_labels(store, model_id).column("cluster_id").to_pylist())


def test_report_files_open_links_resolve_and_every_cluster_is_named(built: dict[str, Any]) -> None:
    store, model_id = built["store"], built["model_id"]
    metrics = evaluate(store, model_id, built["key"], truth="parent_dir", seed=SEED)
    present = _cluster_ids(store, model_id)
    some = sorted(c for c in present if c >= 0)[0]
    store.write_bytes(NAMES_FILE, f'cluster_id,name\n{some},"dark <noise> & co"\n'.encode())
    try:
        out = build_report(store, model_id, run="r1", metrics=metrics, config=ReportConfig(seed=SEED))
    finally:
        store.remove(NAMES_FILE)
    assert out["index"] == "reports/r1/index.html" and out["files"][-1] == out["index"]
    assert out["clusters"] == len(present) and out["thumbnails_failed"] == 0 and out["map_points"] == 45
    pngs = [f for f in out["files"] if f.endswith(".png")]
    assert len(pngs) == len(present) + 3  # one montage per cluster, the map, the sizes, the cluster tree (k given)
    assert "reports/r1/tree.png" in pngs and "reports/r1/k_sweep.png" not in pngs
    for rel in pngs:
        Image.open(io.BytesIO(store.read_bytes(rel))).verify()
    page = _parse(store, out["index"])
    assert sorted(page.srcs) == sorted(f.rsplit("/", 1)[1] for f in pngs)
    for src in page.srcs:
        assert "/" not in src and store.exists(f"reports/r1/{src}")
    text = " ".join(page.text)
    assert model_id in text and "r1" in text
    for cid in present:
        assert (f"Cluster {cid}" if cid >= 0 else "Cluster -1 (novel)") in text
    assert f"Cluster {some}: dark <noise> & co" in text  # the parser unescapes: the raw HTML escaped it
    assert "dark <noise>" not in store.read_bytes(out["index"]).decode()
    assert "acc" in text and "cluster_sizes" not in text  # scalar metrics only
    # a montage holds min(size, thumbs_per_cluster) tiles on a ceil(sqrt(n))-column grid
    sizes = metrics["cluster_sizes"]
    for cid in present:
        name = "cluster_novel.png" if cid < 0 else f"cluster_{cid}.png"
        n = min(sizes[cid], 36)
        cols = math.ceil(math.sqrt(n))
        w, h = Image.open(io.BytesIO(store.read_bytes(f"reports/r1/{name}"))).size
        assert (w, h) == (GAP + cols * 66, GAP + math.ceil(n / cols) * 66)


def test_same_seed_same_pictures(built: dict[str, Any]) -> None:
    store, model_id = built["store"], built["model_id"]
    cfg = ReportConfig(thumbs_per_cluster=4, thumb_size=16, map_points=20, seed=SEED)
    a = build_report(store, model_id, run="s1", names={}, config=cfg)
    b = build_report(store, model_id, run="s2", names={}, config=cfg)
    for fa, fb in zip(a["files"], b["files"], strict=True):
        if fa.endswith(".png"):
            assert store.read_bytes(fa) == store.read_bytes(fb), fa
    assert a["map_points"] == 20


def test_deleted_source_becomes_a_grey_tile(built: dict[str, Any]) -> None:
    store, model_id, src = built["store"], built["model_id"], built["src"]
    labels = read_labels(store, model_id)
    first = labels.column("image_id")[0].as_py()
    cid = labels.column("cluster_id")[0].as_py()
    uris = dict(zip(*(read_manifest(store, columns=["image_id", "uri"]).column(c).to_pylist()
                      for c in ("image_id", "uri")), strict=True))
    path = Path(uris[first])
    moved = src / "moved-away.bin"
    path.rename(moved)
    try:  # thumbs_per_cluster >= cluster size: every member is shown, the missing one included
        out = build_report(store, model_id, run="gone", names={}, config=ReportConfig(thumbs_per_cluster=100))
    finally:
        moved.rename(path)
    assert out["thumbnails_failed"] == 1
    name = "cluster_novel.png" if cid < 0 else f"cluster_{cid}.png"
    arr = np.asarray(Image.open(io.BytesIO(store.read_bytes(f"reports/gone/{name}"))).convert("RGB"))
    n = int(np.sum(labels.column("cluster_id").to_numpy() == cid))
    cols, s = math.ceil(math.sqrt(n)), 64
    grey = [i for i in range(n)
            if (arr[GAP + (i // cols) * (s + GAP):][:s, GAP + (i % cols) * (s + GAP):][:, :s] == MISSING_RGB).all()]
    assert len(grey) == 1
    text = " ".join(_parse(store, out["index"]).text)
    assert "1 unavailable" in text


def test_cluster_names_csv_round_trip_and_errors(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert load_cluster_names(store) == {}
    assert write_cluster_names_template(store, [2, 0, -1, 2])
    assert store.read_bytes(NAMES_FILE).decode() == "cluster_id,name\n-1,\n0,\n2,\n"
    assert load_cluster_names(store) == {}  # empty names are not names
    store.write_bytes(NAMES_FILE, '\ufeffcluster_id,name\n0, shoes \n\n2,"bags, small"\n-1,odd ones\n'.encode())
    assert not write_cluster_names_template(store, [0, 1])  # never overwrites the user's file
    assert load_cluster_names(store) == {0: "shoes", 2: "bags, small", -1: "odd ones"}
    bad = {
        b"id,label\n0,x\n": "line 1",
        b"cluster_id,name\n0,x\nseven,y\n": "line 3",
        b"cluster_id,name\n0,x,extra\n": "line 2",
        b"cluster_id,name\n0,x\n0,y\n": "line 3",
        b"cluster_id,name\n-5,x\n": "line 2",
        b"cluster_id,name\n\xff\xfe,x\n": "UTF-8",
    }
    for data, where in bad.items():
        store.write_bytes(NAMES_FILE, data)
        with pytest.raises(CorruptArtifactError, match=where) as info:
            load_cluster_names(store)
        assert NAMES_FILE in str(info.value)


def test_bad_run_and_config_are_refused(built: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="run"):
        build_report(built["store"], built["model_id"], run="../x")
    with pytest.raises(ConfigError, match="thumb_size"):
        ReportConfig(thumb_size=0)


def test_pca_2d_matches_the_dominant_axes() -> None:
    rng = np.random.default_rng(SEED)
    Z = rng.normal(size=(500, 5)) * np.array([10.0, 3.0, 0.1, 0.1, 0.1])
    xy, ratio = pca_2d(Z)
    assert xy.shape == (500, 2) and ratio[0] > ratio[1] > 0.05 and ratio.sum() < 1
    assert abs(np.corrcoef(xy[:, 0], Z[:, 0])[0, 1]) > 0.99
    assert abs(np.corrcoef(xy[:, 1], Z[:, 1])[0, 1]) > 0.99
    assert pca_2d(Z[:1])[0].shape == (1, 2)
