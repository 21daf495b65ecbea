"""Near-duplicate groups (imgclust.models.dedup): the rule on vectors with known copies, then the flow, the store table
and the report on real image files with re-encoded and brightened copies; the nightly flags of new images that
nearly duplicate stored ones, end to end through the auto-label flow on real photos."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import extract_fit_label, fashion_test_subset, requires_fashion, write_fashion_corpus
from helpers_photos import requires_photos
from PIL import Image, ImageEnhance

from imgclust.config import ClusterConfig, ExtractConfig, IngestConfig, ReduceConfig
from imgclust.exceptions import ConfigError, StoreError
from imgclust.io.manifest import ingest, read_manifest
from imgclust.io.store import Store
from imgclust.models.dedup import (
    DedupConfig,
    dedup_store,
    find_near_duplicates,
    nearest_stored,
    read_near_duplicates,
)
from imgclust.models.report import build_report

DAY = dt.date(2026, 12, 1)
THRESHOLD_DEFAULT = DedupConfig().threshold


def _with_copies(rng: np.random.Generator, n: int, copies: dict[int, int], noise: float) -> np.ndarray:
    """``n`` random 64-d rows, then for each ``i: c`` in ``copies`` ``c`` noisy copies of row ``i``."""
    base = rng.standard_normal((n, 64)).astype(np.float32)
    extra = [base[i] + noise * rng.standard_normal((c, 64)).astype(np.float32) for i, c in copies.items()]
    return np.concatenate([base, *extra])


def test_groups_are_the_copies_with_their_representative() -> None:
    rng = np.random.default_rng(0)
    X = _with_copies(rng, 40, {3: 1, 7: 2, 11: 4}, noise=0.05)  # rows 40.. are the copies, in that order
    ids = [f"img{i:03d}" for i in range(len(X))]
    t = find_near_duplicates(ids, X, DedupConfig(threshold=0.95, k=5))
    groups: dict[str, set[str]] = {}
    for gid, iid in zip(t.column("group_id").to_pylist(), t.column("image_id").to_pylist(), strict=True):
        groups.setdefault(gid, set()).add(iid)
    assert sorted(map(sorted, groups.values())) == sorted([
        ["img003", "img040"], ["img007", "img041", "img042"], ["img011", "img043", "img044", "img045", "img046"]])
    # the representative has the most edges (ties: the smallest id): here the originals
    assert set(groups) == {"img003", "img007", "img011"}
    sims = np.asarray(t.column("similarity"))
    assert np.all(sims >= 0.95) and np.all(sims <= 1.0 + 1e-6)
    assert sorted(set(t.column("group_size").to_pylist())) == [2, 3, 5]
    assert t.column("representative_id").to_pylist() == t.column("group_id").to_pylist()


def test_distinct_rows_give_no_groups_and_bad_settings_are_refused() -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((50, 64)).astype(np.float32)
    assert find_near_duplicates([str(i) for i in range(50)], X, DedupConfig(threshold=0.9)).num_rows == 0
    assert find_near_duplicates(["a"], X[:1]).num_rows == 0
    with pytest.raises(ConfigError, match="repeated image ids"):
        find_near_duplicates(["a", "a"], X[:2])
    for bad in ({"threshold": 0.0}, {"threshold": 1.5}, {"k": 0}, {"rule": "nearest"}):
        with pytest.raises(ConfigError, match="near-duplicate"):
            DedupConfig(**bad)


def test_a_chain_joins_under_components_and_not_under_representatives() -> None:
    """a ~ b ~ c ~ d, each step 0.25 rad (cosine 0.969), a and c 0.5 rad apart: single linkage groups all four;
    the representative rule groups b (most edges, smallest id) with its neighbours a and c, and leaves d, whose
    only neighbour is taken, alone. Similarities are to the representative."""
    X = np.stack([np.array([np.cos(t), np.sin(t), 0.0], np.float32) for t in (0.0, 0.25, 0.5, 0.75)]
                 + [np.array([0.0, 0.0, 1.0], np.float32)])
    names = ["a", "b", "c", "d", "far"]
    comps = find_near_duplicates(names, X, DedupConfig(threshold=0.96, k=4, rule="components"))
    assert sorted(comps.column("image_id").to_pylist()) == ["a", "b", "c", "d"]
    assert set(comps.column("group_id").to_pylist()) == {"b"}
    sim = dict(zip(comps.column("image_id").to_pylist(), comps.column("similarity").to_pylist(), strict=True))
    assert sim["d"] == pytest.approx(np.cos(0.5), abs=1e-6)  # the chain shows as a lower similarity
    reps = find_near_duplicates(names, X, DedupConfig(threshold=0.96, k=4))
    assert sorted(reps.column("image_id").to_pylist()) == ["a", "b", "c"]
    assert set(reps.column("group_id").to_pylist()) == {"b"}
    assert min(reps.column("similarity").to_pylist()) >= 0.96  # every member within the threshold of b


@pytest.fixture(scope="module")
def store_with_copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """120 Fashion-MNIST PNGs plus, for 20 of them, a JPEG re-encode (quality 90) and a 10% brighter PNG:
    distinct bytes (ingest keeps them all), the same picture. A pixels model is fitted and promoted."""
    root = tmp_path_factory.mktemp("dedup")
    src = root / "src"
    write_fashion_corpus(src, 120, seed=21)
    originals = sorted(src.rglob("*.png"))[::6][:20]
    truth: dict[str, str] = {}
    for f in originals:
        img = Image.open(f)
        jpg, bright = f.with_name(f.stem + "-q90.jpg"), f.with_name(f.stem + "-bright.png")
        img.save(jpg, quality=90)
        ImageEnhance.Brightness(img).enhance(1.1).save(bright)
        truth[str(jpg)] = truth[str(bright)] = str(f)
    store = Store(root / "store")
    ingest(store, str(src), config=IngestConfig(), date=DAY, run_id="r1")
    key, model = extract_fit_label(store, ExtractConfig(extractor="pixels", shard_size=64),
                                   reduce=ReduceConfig(n_components=20), cluster=ClusterConfig(k=6, seed=0))
    return {"store": store, "key": key, "truth": truth, "model_id": model.model_id}


@requires_fashion
def test_dedup_flow_finds_the_copies_and_the_report_shows_them(store_with_copies: dict[str, Any],
                                                                prefect_api: str) -> None:
    from flows.dedup import dedup

    store, key, truth = store_with_copies["store"], store_with_copies["key"], store_with_copies["truth"]
    summary = dedup(store=store.url)  # the default threshold
    assert summary["extractor_key"] == key and summary["rows"] == 160
    table, meta = read_near_duplicates(store, key)  # type: ignore[misc]
    assert meta["groups"] == summary["groups"] and table.num_rows == summary["images_in_groups"]

    manifest = read_manifest(store, columns=["image_id", "uri"])
    path_of = dict(zip(manifest.column("image_id").to_pylist(), manifest.column("uri").to_pylist(), strict=True))
    group_of = {path_of[i]: g for i, g in zip(table.column("image_id").to_pylist(),
                                              table.column("group_id").to_pylist(), strict=True)}
    # pairwise precision / recall of "same group" against the copies made above
    true_pairs = {frozenset((c, o)) for c, o in truth.items()} | {
        frozenset((a, b)) for a, oa in truth.items() for b, ob in truth.items() if a < b and oa == ob}
    members: dict[str, list[str]] = {}
    for p, g in group_of.items():
        members.setdefault(g, []).append(p)
    found = {frozenset((a, b)) for m in members.values() for a in m for b in m if a < b}
    precision = len(found & true_pairs) / max(len(found), 1)
    recall = len(found & true_pairs) / len(true_pairs)
    assert recall >= 0.9 and precision >= 0.9, (precision, recall)

    out = build_report(store, store_with_copies["model_id"], run="dedup-report")
    page = store.read_bytes(out["index"]).decode()
    assert "Near-duplicate groups" in page and "duplicates_0.png" in page
    assert any(f.endswith("duplicates_0.png") for f in out["files"])


def test_dedup_without_features_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no finished feature shards"):
        dedup_store(Store(tmp_path / "s"), "pixels-28-L")


# ---- nightly flags: new images that nearly duplicate stored ones ---------------------------------------
def test_nearest_stored_streams_batches_like_one_brute_force_search() -> None:
    rng = np.random.default_rng(4)
    stored = rng.standard_normal((300, 32)).astype(np.float32)
    new = np.concatenate([stored[[5, 120, 299]] * 3.0 + 0.01 * rng.standard_normal((3, 32)).astype(np.float32),
                          rng.standard_normal((4, 32)).astype(np.float32)])
    ids = [f"s{i:03d}" for i in range(300)]
    batches = [(ids[lo:lo + 70], stored[lo:lo + 70]) for lo in range(0, 300, 70)]  # uneven last batch
    sims, best, seen = nearest_stored(new, iter(batches))
    unit = stored / np.linalg.norm(stored, axis=1, keepdims=True)
    brute = (new / np.linalg.norm(new, axis=1, keepdims=True)) @ unit.T
    np.testing.assert_allclose(sims, brute.max(1), atol=1e-5)
    assert list(best) == [ids[j] for j in brute.argmax(1)] and seen == 300
    assert list(best[:3]) == ["s005", "s120", "s299"] and np.all(sims[:3] > 0.99) and np.all(sims[3:] < 0.9)
    empty_sims, empty_best, _ = nearest_stored(new, iter([]))
    assert np.all(np.isneginf(empty_sims)) and all(b is None for b in empty_best)
    with pytest.raises(StoreError, match="one extractor key"):
        nearest_stored(new, iter([(ids[:2], stored[:2, :16])]))


DAY1, DAY2 = dt.date(2026, 11, 1), dt.date(2026, 11, 2)
COPY_KINDS = ("jpeg35", "half", "crop85")


@requires_photos
@pytest.mark.integration
def test_nightly_run_flags_copies_of_stored_photos_and_counts_them(tmp_path: Path, dask_address: str) -> None:
    """Day 1: the originals of 9 real photos are stored, labelled with a `layout` model (one label file is
    rewritten in the schema of before the flag columns). Night 2: a JPEG q35 re-encode, a half-size copy and an
    85 % crop of 3 stored photos arrive with the originals of 3 photos never stored. The auto-label flow (real
    Prefect API, real Dask LocalCluster) flags exactly the 9 copies with their stored original, counts them in
    the summary, and the store still verifies."""
    import pyarrow as pa
    from prefect_dask import DaskTaskRunner

    from flows.auto_label import auto_label
    from imgclust.data.photos import build_photo_variant_corpus
    from imgclust.io.features import done_shards
    from imgclust.models.dedup import read_arrivals
    from imgclust.models.labels import LABELS_SCHEMA, read_labels
    from imgclust.models.verify import verify_store

    corpus = build_photo_variant_corpus(tmp_path / "corpus", seed=5, n_sources=12, max_side=640,
                                        kinds=("original", *COPY_KINDS))
    groups = sorted(corpus.groups())
    stored_groups, copied, fresh = groups[:9], groups[:3], groups[9:]
    source = tmp_path / "source"

    def place(group: str, kind: str) -> Path:
        record = next(r for r in corpus.groups()[group] if r.kind == kind)
        dest = source / group / record.path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(record.path.read_bytes())
        return dest

    originals = {g: place(g, "original") for g in stored_groups}
    store = Store(tmp_path / "store")
    ingest(store, str(source), config=IngestConfig(), date=DAY1, run_id="d1")
    extract = ExtractConfig(extractor="layout", shard_size=5)
    key, model = extract_fit_label(store, extract, reduce=ReduceConfig(n_components=4),
                                   cluster=ClusterConfig(k=3, seed=0))
    day1_shards = done_shards(store, key)
    old_file = store.glob(f"labels/{model.model_id}/date=*/shard-*.parquet")[0]
    store.write_parquet(old_file, store.read_parquet(old_file).select(LABELS_SCHEMA.names).cast(LABELS_SCHEMA))

    copies = {place(g, kind): originals[g] for g in copied for kind in COPY_KINDS}
    new_originals = [place(g, "original") for g in fresh]
    summary = auto_label.with_options(task_runner=DaskTaskRunner(address=dask_address))(
        source=str(source), store=store.url, date=DAY2)

    assert summary["new_images"] == summary["labeled"] == len(copies) + len(new_originals) == 12
    assert summary["near_duplicates"] == len(copies) == 9
    manifest = read_manifest(store, columns=["image_id", "uri"])
    id_of = {Path(u): i for i, u in zip(manifest.column("image_id").to_pylist(), manifest.column("uri").to_pylist(),
                                        strict=True)}
    labels = read_labels(store, model.model_id)
    assert labels.num_rows == 21 and labels.schema.field("near_duplicate_similarity").type == pa.float32()
    flagged = {i: (of, sim) for i, of, sim in zip(labels.column("image_id").to_pylist(),
                                                  labels.column("near_duplicate_of").to_pylist(),
                                                  labels.column("near_duplicate_similarity").to_pylist(), strict=True)
               if of is not None}
    assert {i: of for i, (of, _) in flagged.items()} == {id_of[c]: id_of[o] for c, o in copies.items()}
    assert all(THRESHOLD_DEFAULT <= sim <= 1.0 + 1e-6 for _, sim in flagged.values())
    day2 = store.glob(f"labels/{model.model_id}/date={DAY2.isoformat()}/*.parquet")
    assert sum(store.read_parquet(p).num_rows for p in day2) == 12
    new_shards = [s for s in done_shards(store, key) if s not in day1_shards]
    assert sum(read_arrivals(store, key, s).num_rows for s in new_shards) == 9  # type: ignore[union-attr]
    assert all(read_arrivals(store, key, s) is None for s in day1_shards)
    assert verify_store(store, key, model_id=model.model_id).ok


# ---- spaces not made for near-duplicates ---------------------------------------------------------------------
def test_which_spaces_are_for_near_duplicates_is_read_from_the_feature_files(tmp_path: Path) -> None:
    """The backbone's `near_duplicate_space` metadata decides; files written before that field: every extractor
    but `deep`."""
    from imgclust.io.features import embeddings_table, near_duplicate_space
    from imgclust.io.layout import feature_path

    store = Store(tmp_path / "s")
    rows = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    for key, meta in {"a": {"extractor": "deep", "near_duplicate_space": "false"}, "b": {"extractor": "deep"},
                      "c": {"extractor": "pixels"}, "d": {"extractor": "pixels", "near_duplicate_space": "true"},
                      "e": {"extractor": "resnet50", "near_duplicate_space": "false"}}.items():
        store.write_parquet(feature_path(key, "00000"), embeddings_table(["x", "y", "z"], rows, meta))
    assert {k: near_duplicate_space(store, k, "00000") for k in "abcde"} == {
        "a": False, "b": False, "c": True, "d": True, "e": False}


@requires_fashion
@pytest.mark.integration
def test_a_space_trained_on_the_corpus_is_not_searched_the_nightly_run_uses_a_pixel_space(tmp_path: Path,
                                                                                         dask_address: str) -> None:
    """A `deep:` extractor (a `simclr` encoder trained on these images) pulls different images of one kind
    together, so a cosine threshold there cannot tell a copy from a neighbour. With no other space in the store
    the nightly search has nowhere to run and says why; `imgclust dedup`'s library call refuses the deep space and
    names the pixel space stored beside it, which `imgclust dedup` then searches by default. The nightly run (real
    Prefect API, real Dask LocalCluster) under the promoted deep model extracts the night's images in that pixel
    space too and flags exactly the re-encoded copies of stored images there."""
    from prefect_dask import DaskTaskRunner

    from flows.auto_label import auto_label
    from flows.dedup import dedup
    from imgclust.deep.methods import create_deep
    from imgclust.io.features import done_shards
    from imgclust.models.dedup import flag_new_near_duplicates, near_duplicate_search_space
    from imgclust.models.labels import read_labels
    from imgclust.models.model import promote

    images, _ = fashion_test_subset(200, seed=0)
    deep_dir = tmp_path / "deep"
    create_deep("simclr", k=3, epochs=1, seed=0, device="cpu", width=4, batch_size=32).fit(images).save(deep_dir)
    source = tmp_path / "source"
    write_fashion_corpus(source / "day1", n=200, seed=0)
    store = Store(tmp_path / "store")
    ingest(store, str(source), config=IngestConfig(), date=DAY1, run_id="d1")
    reduce, cluster = ReduceConfig(n_components=8), ClusterConfig(k=3, seed=0)
    deep_key, model = extract_fit_label(store, ExtractConfig(extractor=f"deep:{deep_dir}", shard_size=100),
                                        reduce=reduce, cluster=cluster)
    assert deep_key.startswith("deep-")
    nowhere = near_duplicate_search_space(store, model.model_id)
    assert nowhere.extract is None and nowhere.key is None
    assert "trained on this corpus" in nowhere.reason and "extract one first" in nowhere.reason  # type: ignore[operator]
    skipped = flag_new_near_duplicates(store, model.model_id, deep_key, done_shards(store, deep_key)[:1])
    assert skipped["near_duplicates"] == 0 and "trained on this corpus" in skipped["skipped"]

    pixel_key, _ = extract_fit_label(store, ExtractConfig(extractor="pixels", shard_size=100), reduce=reduce,
                                     cluster=cluster)
    promote(store, model.model_id)  # the deep model is CURRENT again, the pixel model is an older version
    with pytest.raises(ConfigError, match=f"trained on this corpus.*--extractor-key {pixel_key}"):
        dedup_store(store, deep_key)
    assert dedup_store(store, pixel_key)["rows"] == 200
    space = near_duplicate_search_space(store, model.model_id)
    assert space.extract == ExtractConfig(extractor="pixels", shard_size=100) and space.key == pixel_key
    assert dedup(store=store.url)["extractor_key"] == pixel_key  # `imgclust dedup`'s default under the deep model

    day1_pixel_shards = done_shards(store, pixel_key)
    stored = sorted((source / "day1").rglob("*.png"))[:3]
    copies = {}
    for f in stored:  # re-encoded copies: other bytes, so ingest takes them as new images
        copy = source / "day2" / f"copy-{f.stem}.jpg"
        copy.parent.mkdir(parents=True, exist_ok=True)
        Image.open(f).save(copy, quality=95)
        copies[copy] = f
    write_fashion_corpus(source / "day2", n=30, seed=1)
    summary = auto_label.with_options(task_runner=DaskTaskRunner(address=dask_address))(
        source=str(source), store=store.url, date=DAY2)
    assert summary["new_images"] == summary["labeled"] == 33
    assert summary["near_duplicate_key"] == pixel_key and "near_duplicates_skipped" not in summary
    assert summary["near_duplicates"] == 3
    assert len(done_shards(store, pixel_key)) > len(day1_pixel_shards)  # the night extracted in the pixel space too
    manifest = read_manifest(store, columns=["image_id", "uri"])
    id_of = {Path(u): i for i, u in zip(manifest.column("image_id").to_pylist(), manifest.column("uri").to_pylist(),
                                        strict=True)}
    labels = read_labels(store, model.model_id)
    flagged = {i: of for i, of in zip(labels.column("image_id").to_pylist(),
                                      labels.column("near_duplicate_of").to_pylist(), strict=True) if of is not None}
    assert flagged == {id_of[c]: id_of[o] for c, o in copies.items()}
