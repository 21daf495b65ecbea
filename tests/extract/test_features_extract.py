"""End-to-end tests of feature shards: ingest real generated files, extract, check the store.

Invariant under test (ARCHITECTURE.md): every manifest row of a processed shard ends in exactly one
of features or quarantine, with a specific reason; re-runs are idempotent and config-keyed.
"""
from __future__ import annotations

import collections
import datetime as dt
import json
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from imgclust.config import ExtractConfig, IngestConfig
from imgclust.devices import resolve_device_name as resolve_device
from imgclust.exceptions import CorruptArtifactError
from imgclust.extract.backbones import create_backbone
from imgclust.extract.images import decode_image
from imgclust.extract.shard import extract_shard, shard_fingerprint
from imgclust.io.features import (
    QUARANTINE_SCHEMA,
    count_features,
    done_shards,
    embeddings_of,
    embeddings_table,
    feature_layout,
    feature_path,
    features_schema,
    iter_feature_batches,
    marker_path,
    quarantine_path,
    read_marker,
)
from imgclust.io.manifest import ShardSpec, ingest, plan_shards, read_manifest, read_shard_rows
from imgclust.io.store import Store

try:
    from helpers_images import gray_array, make_corpus, png_bytes, unreadable_works, write
except ImportError:  # tests/ is a package
    from tests.helpers_images import gray_array, make_corpus, png_bytes, unreadable_works, write

DAY = dt.date(2024, 6, 1)
MAX_PIXELS = 64 * 64  # big.png (100x100) is too_large, everything else fits
BASE = {"device": "cpu", "batch_size": 16, "decode_threads": 2, "max_pixels": MAX_PIXELS}
PIXELS = ExtractConfig(extractor="pixels", **BASE)
TINY = ExtractConfig(extractor="tinycnn", **BASE)
SHARD_SIZE = 25


@dataclass
class Corpus:
    store: Store
    src: Path
    specs: list[ShardSpec]
    expected: dict[str, str]  # image_id -> "ok", "ok-jpeg" or the quarantine error_kind
    results: dict[str, list[dict]]  # extractor name -> extract_shard result per spec


def _shard_ids(store: Store, spec: ShardSpec) -> set[str]:
    return set(read_shard_rows(store, spec).column("image_id").to_pylist())


def _build(root: Path, *, with_unreadable: bool, n_png: int = 40, n_jpeg: int = 10, seed: int = 0
           ) -> tuple[Store, Path, list[ShardSpec], dict[str, str]]:
    src, store = root / "src", Store(root / "store")
    by_name = make_corpus(src, n_png=n_png, n_jpeg=n_jpeg, seed=seed, with_unreadable=with_unreadable)
    ingest(store, str(src), config=IngestConfig(hash_threads=2), date=DAY)
    manifest = read_manifest(store)
    expected = {r["image_id"]: by_name[posixpath.basename(r["uri"])] for r in manifest.to_pylist()}
    return store, src, plan_shards(store, shard_size=SHARD_SIZE), expected


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("extract")
    store, src, specs, expected = _build(root, with_unreadable=unreadable_works(root))
    results = {cfg.extractor: [extract_shard(store, spec, cfg) for spec in specs] for cfg in (PIXELS, TINY)}
    return Corpus(store, src, specs, expected, results)


def _key(cfg: ExtractConfig) -> str:
    return create_backbone(cfg.extractor, weights=cfg.weights, device="cpu", seed=cfg.seed).key()


def _stat(store: Store, rel: str) -> tuple[int, int]:
    st = os.stat(store.path(rel))
    return st.st_ino, st.st_mtime_ns


# ---- the invariant -----------------------------------------------------------------------------
def test_corpus_shape(corpus: Corpus) -> None:
    # 40 png + 10 jpeg + 3 zero-byte files (one content: 1 row) + 3 text + 3 truncated + big (+ unreadable)
    assert len(corpus.expected) in (59, 60)
    assert [s.size for s in corpus.specs] == [25, 25, len(corpus.expected) - 50]
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("cfg", [PIXELS, TINY], ids=["pixels", "tinycnn"])
def test_every_row_ends_in_exactly_one_of_features_or_quarantine(corpus: Corpus, cfg: ExtractConfig) -> None:
    store, key = corpus.store, _key(cfg)
    all_features: set[str] = set()
    for spec, result in zip(corpus.specs, corpus.results[cfg.extractor], strict=True):
        assert result["skipped"] is False and result["extractor_key"] == key
        ids = _shard_ids(store, spec)
        feats = store.read_parquet(feature_path(key, spec.shard_id))
        quar = store.read_parquet(quarantine_path(key, spec.shard_id))
        f_ids, q_ids = feats.column("image_id").to_pylist(), quar.column("image_id").to_pylist()
        assert len(f_ids) == len(set(f_ids)) and len(q_ids) == len(set(q_ids))  # none counted twice
        assert set(f_ids).isdisjoint(q_ids)
        assert set(f_ids) | set(q_ids) == ids  # none lost
        marker = read_marker(store, key, spec.shard_id)
        assert marker is not None and marker.shard_id == spec.shard_id
        assert (marker.n_features, marker.n_quarantined, marker.n_input) == (len(f_ids), len(q_ids), spec.size)
        assert marker.n_features + marker.n_quarantined == marker.n_input
        assert sum(marker.error_kinds.values()) == marker.n_quarantined
        assert set(marker.seconds) == {"wall", "embed"} and marker.seconds["wall"] >= 0
        assert result["n_features"] == marker.n_features and result["fingerprint"] == marker.fingerprint
        all_features |= set(f_ids)
        # each quarantined row says specifically why
        assert quar.schema.equals(QUARANTINE_SCHEMA, check_metadata=False)
        for row in quar.to_pylist():
            assert row["error_kind"] == corpus.expected[row["image_id"]], row
            assert row["message"] and row["uri"].startswith(str(corpus.src))
        assert marker.error_kinds == dict(collections.Counter(corpus.expected[i] for i in q_ids))
    assert all_features == {i for i, v in corpus.expected.items() if v.startswith("ok")}
    assert count_features(store, key) == len(all_features)
    assert done_shards(store, key) == sorted(s.shard_id for s in corpus.specs)


@pytest.mark.parametrize(("cfg", "dim"), [(PIXELS, 784), (TINY, 64)], ids=["pixels", "tinycnn"])
def test_feature_schema_and_metadata(corpus: Corpus, cfg: ExtractConfig, dim: int) -> None:
    key = _key(cfg)
    sid = corpus.specs[0].shard_id
    t = corpus.store.read_parquet(feature_path(key, sid))
    assert t.schema.field("image_id").type == pa.string()
    assert t.schema.field("embedding").type == pa.list_(pa.float32(), dim)
    assert t.schema.equals(features_schema(dim), check_metadata=False)
    assert feature_layout(corpus.store, key, sid) == (dim, dim)
    meta = {k.decode(): v.decode() for k, v in t.schema.metadata.items()}
    bb = create_backbone(cfg.extractor, device="cpu", seed=cfg.seed)
    assert meta["extractor"] == cfg.extractor and meta["extractor_key"] == key
    assert meta["fingerprint"] == bb.fingerprint() and meta["weights_id"] == bb.weights_id
    assert meta["input_size"] == str(bb.preprocessing.input_size) and meta["dim"] == str(dim)
    assert json.loads(meta["mean"]) == list(bb.preprocessing.mean)
    assert meta["torch_version"] == torch.__version__
    assert meta["shard_id"] == sid
    assert dt.datetime.fromisoformat(meta["created_at"]).tzinfo is not None
    assert np.isfinite(embeddings_of(t)).all()


def test_pixel_features_match_the_files_row_by_row(corpus: Corpus) -> None:
    """Raw 28x28 grey pixels are an exact oracle: a misaligned id <-> embedding would show here."""
    key = _key(PIXELS)
    uris = {r["image_id"]: r["uri"] for r in read_manifest(corpus.store).to_pylist()}
    checked = 0
    for sid in done_shards(corpus.store, key):
        t = corpus.store.read_parquet(feature_path(key, sid))
        for image_id, emb in zip(t.column("image_id").to_pylist(), embeddings_of(t), strict=True):
            if corpus.expected[image_id] != "ok":
                continue
            arr = decode_image(Path(uris[image_id]).read_bytes(), mode="L")
            np.testing.assert_array_equal(emb, arr.reshape(-1).astype(np.float32) / np.float32(255.0))
            checked += 1
    assert checked == 40


def test_tinycnn_features_match_a_direct_forward_pass(corpus: Corpus) -> None:
    key = _key(TINY)
    bb = create_backbone("tinycnn", device="cpu", seed=0)
    manifest = {r["image_id"]: r["uri"] for r in read_manifest(corpus.store).to_pylist()}
    t = corpus.store.read_parquet(feature_path(key, corpus.specs[1].shard_id))
    ids, emb = t.column("image_id").to_pylist(), embeddings_of(t)
    batch = torch.stack([bb.preprocess(decode_image(Path(manifest[i]).read_bytes())) for i in ids])
    np.testing.assert_allclose(emb, bb.embed(batch), rtol=1e-5, atol=1e-6)


# ---- readers ---------------------------------------------------------------------------------
def test_embeddings_round_trip_exactly_including_slices(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    emb = rng.standard_normal((37, 5)).astype(np.float32)
    emb[3] = [np.nan, np.inf, -0.0, 1e-38, -3.4e38]
    ids = [f"id{i}" for i in range(37)]
    t = embeddings_table(ids, emb, {"extractor": "test"})
    np.testing.assert_array_equal(embeddings_of(t), emb)
    assert embeddings_of(t).dtype == np.float32
    np.testing.assert_array_equal(embeddings_of(t.slice(11, 9)), emb[11:20])
    np.testing.assert_array_equal(embeddings_of(t.slice(37)), emb[:0])
    two_chunks = pa.concat_tables([t.slice(2, 5), t.slice(30, 4)])
    np.testing.assert_array_equal(embeddings_of(two_chunks), np.concatenate([emb[2:7], emb[30:34]]))
    np.testing.assert_array_equal(embeddings_of(t.to_batches()[0].slice(4, 3)), emb[4:7])
    store = Store(tmp_path)
    store.write_parquet("e.parquet", t, row_group_size=10)
    back = store.read_parquet("e.parquet")
    assert back.schema.metadata[b"extractor"] == b"test"
    np.testing.assert_array_equal(embeddings_of(back), emb)
    np.testing.assert_array_equal(embeddings_of(back.slice(9, 13)), emb[9:22])
    with pytest.raises(ValueError, match="embeddings must be"):
        embeddings_table(ids[:3], emb)


@pytest.mark.parametrize("batch_size", [7, 65536])
def test_iter_feature_batches_streams_every_done_shard(corpus: Corpus, batch_size: int) -> None:
    store, key = corpus.store, _key(TINY)
    got_ids, got = [], []
    for ids, emb in iter_feature_batches(store, key, batch_size=batch_size):
        assert emb.dtype == np.float32 and emb.shape == (len(ids), 64) and 0 < len(ids) <= batch_size
        got_ids += ids
        got.append(emb)
    expected_ids, expected = [], []
    for sid in done_shards(store, key):
        t = store.read_parquet(feature_path(key, sid))
        expected_ids += t.column("image_id").to_pylist()
        expected.append(embeddings_of(t))
    assert got_ids == expected_ids and len(got_ids) == count_features(store, key)
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(expected))
    one = corpus.specs[2].shard_id
    assert sum(len(i) for i, _ in iter_feature_batches(store, key, [one], batch_size)) == \
        read_marker(store, key, one).n_features


# ---- idempotence and config keys --------------------------------------------------------------
@pytest.fixture()
def small(tmp_path: Path) -> tuple[Store, Path, list[ShardSpec], dict[str, str]]:
    return _build(tmp_path, with_unreadable=False, n_png=8, n_jpeg=2, seed=1)


def test_rerun_skips_without_rewriting(small: tuple) -> None:
    store, _, specs, _ = small
    key, spec = _key(TINY), specs[0]
    first = extract_shard(store, spec, TINY)
    paths = [feature_path(key, spec.shard_id), quarantine_path(key, spec.shard_id), marker_path(key, spec.shard_id)]
    before = [_stat(store, p) for p in paths]
    again = extract_shard(store, spec, TINY)
    assert again["skipped"] is True and again["extractor_key"] == key
    assert {k: v for k, v in again.items() if k != "skipped"} == {k: v for k, v in first.items() if k != "skipped"}
    assert [_stat(store, p) for p in paths] == before
    # a config field that does not change the output (batch size, threads) still skips
    assert extract_shard(store, spec, TINY.model_copy(update={"batch_size": 3, "decode_threads": 1}))["skipped"]


def test_other_seed_writes_under_another_key_and_force_redoes(small: tuple) -> None:
    store, _, specs, _ = small
    spec = specs[0]
    r0 = extract_shard(store, spec, TINY)
    seed1 = TINY.model_copy(update={"seed": 1})
    r1 = extract_shard(store, spec, seed1)
    assert (r0["extractor_key"], r1["extractor_key"]) == ("tinycnn-random0", "tinycnn-random1")
    assert r1["skipped"] is False and r0["fingerprint"] != r1["fingerprint"]
    e0 = store.read_parquet(feature_path(r0["extractor_key"], spec.shard_id))
    e1 = store.read_parquet(feature_path(r1["extractor_key"], spec.shard_id))
    assert e0.column("image_id").equals(e1.column("image_id"))
    assert not np.allclose(embeddings_of(e0), embeddings_of(e1))
    path = feature_path(r0["extractor_key"], spec.shard_id)
    before = _stat(store, path)
    forced = extract_shard(store, spec, TINY, force=True)
    assert forced["skipped"] is False and forced["fingerprint"] == r0["fingerprint"]
    assert _stat(store, path)[0] != before[0]  # a new file was renamed into place
    np.testing.assert_array_equal(embeddings_of(store.read_parquet(path)), embeddings_of(e0))


def test_changed_fingerprint_redoes_the_shard(small: tuple) -> None:
    store, _, specs, expected = small
    spec = specs[0]
    first = extract_shard(store, spec, PIXELS)
    assert first["error_kinds"].get("too_large") == 1
    relaxed = PIXELS.model_copy(update={"max_pixels": 100 * 100})  # same key, other fingerprint
    second = extract_shard(store, spec, relaxed)
    assert second["skipped"] is False and second["fingerprint"] != first["fingerprint"]
    assert second["extractor_key"] == first["extractor_key"]
    assert "too_large" not in second["error_kinds"] and second["n_features"] == first["n_features"] + 1
    assert read_marker(store, second["extractor_key"], spec.shard_id).fingerprint == second["fingerprint"]


def test_failed_redo_leaves_no_stale_marker(small: tuple) -> None:
    store, _, specs, _ = small
    key, spec = _key(TINY), specs[0]
    extract_shard(store, spec, TINY)
    feat = feature_path(key, spec.shard_id)
    store.remove(feat)
    write(Path(store.path(feat)) / "blocker", b"")  # a folder where the file must go: the write fails
    with pytest.raises(OSError):
        extract_shard(store, spec, TINY, force=True)
    assert read_marker(store, key, spec.shard_id) is None  # not "done" with the old counts
    assert spec.shard_id not in done_shards(store, key)
    store.remove(feat)
    assert extract_shard(store, spec, TINY)["skipped"] is False


def test_file_deleted_after_ingest_is_quarantined_as_missing(small: tuple) -> None:
    store, src, specs, _ = small
    spec = specs[0]
    rows = read_shard_rows(store, spec).to_pylist()
    victim = next(r for r in rows if r["uri"].endswith(".png") and "big" not in r["uri"])
    os.remove(victim["uri"])
    result = extract_shard(store, spec, PIXELS)
    quar = store.read_parquet(quarantine_path(result["extractor_key"], spec.shard_id)).to_pylist()
    missing = [q for q in quar if q["error_kind"] == "missing"]
    assert [q["image_id"] for q in missing] == [victim["image_id"]]
    assert victim["uri"] in missing[0]["message"] or "no longer exists" in missing[0]["message"]
    assert result["n_features"] + result["n_quarantined"] == result["n_input"] == spec.size


def test_empty_shard_still_writes_all_artifacts(tmp_path: Path) -> None:
    store, src = Store(tmp_path / "store"), tmp_path / "src"
    write(src / "only.jpg", b"")
    ingest(store, str(src), config=IngestConfig(hash_threads=1), date=DAY)
    [spec] = plan_shards(store, shard_size=10)
    r = extract_shard(store, spec, PIXELS)
    assert (r["n_features"], r["n_quarantined"], r["error_kinds"]) == (0, 1, {"empty": 1})
    t = store.read_parquet(feature_path(r["extractor_key"], spec.shard_id))
    assert t.num_rows == 0 and t.schema.field("embedding").type == pa.list_(pa.float32(), 784)
    assert embeddings_of(t).shape == (0, 784)


def test_shard_fingerprint_depends_on_shard_and_max_pixels() -> None:
    bb = create_backbone("pixels", device="cpu")
    a, b = ShardSpec("s0", "p", 0, 10), ShardSpec("s1", "p", 10, 20)
    fp = shard_fingerprint(bb, a, PIXELS)
    assert fp == shard_fingerprint(bb, a, PIXELS.model_copy(update={"batch_size": 1}))
    assert fp != shard_fingerprint(bb, b, PIXELS)
    assert fp != shard_fingerprint(bb, a, PIXELS.model_copy(update={"max_pixels": 1}))


# ---- markers -------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [
    b"", b"{", b"\xff\xfe garbage", b"[1, 2]", b'"text"', b"{}",
    b'{"shard_id": "x", "fingerprint": "f", "n_features": 1}',
    b'{"shard_id": "x", "fingerprint": "f", "n_features": "1", "n_quarantined": 0, "n_input": 1,'
    b' "seconds": {}, "error_kinds": {}}',
])
def test_corrupt_marker_raises(tmp_path: Path, raw: bytes) -> None:
    store = Store(tmp_path / "store")
    store.write_bytes(marker_path("k", "x"), raw)
    with pytest.raises(CorruptArtifactError, match="shard-x.json"):
        read_marker(store, "k", "x")
    with pytest.raises(CorruptArtifactError):
        count_features(store, "k")


def test_missing_marker_means_not_done(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    assert read_marker(store, "k", "x") is None
    assert done_shards(store, "k") == [] and count_features(store, "k") == 0
    assert list(iter_feature_batches(store, "k")) == []


def test_corrupt_marker_stops_extract_shard(small: tuple) -> None:
    store, _, specs, _ = small
    key, spec = _key(PIXELS), specs[0]
    extract_shard(store, spec, PIXELS)
    store.write_bytes(marker_path(key, spec.shard_id), b'{"shard_id": ')
    with pytest.raises(CorruptArtifactError, match="delete it"):
        extract_shard(store, spec, PIXELS)
    store.remove(marker_path(key, spec.shard_id))
    assert extract_shard(store, spec, PIXELS)["skipped"] is False


def test_corrupt_feature_file_is_reported(small: tuple) -> None:
    store, _, specs, _ = small
    key, spec = _key(PIXELS), specs[0]
    extract_shard(store, spec, PIXELS)
    path = feature_path(key, spec.shard_id)
    store.write_bytes(path, store.read_bytes(path)[:-20])
    with pytest.raises(CorruptArtifactError, match=f"shard-{spec.shard_id}.parquet"):
        list(iter_feature_batches(store, key))


def test_unreadable_row_is_quarantined(corpus: Corpus) -> None:
    bad = [i for i, v in corpus.expected.items() if v == "io_error"]
    if not bad:
        pytest.skip("no file here that lists as a regular file yet fails to read (/proc/self/mem)")
    assert bad[0].startswith("unreadable-")
    key = _key(PIXELS)
    kinds = {}
    for sid in done_shards(corpus.store, key):
        for q in corpus.store.read_parquet(quarantine_path(key, sid)).to_pylist():
            kinds[q["image_id"]] = (q["error_kind"], q["message"])
    assert kinds[bad[0]][0] == "io_error" and "Errno" in kinds[bad[0]][1]


def test_good_image_next_to_bad_ones_in_one_batch(tmp_path: Path) -> None:
    """Bad files interleaved with good ones in a single batch do not shift ids."""
    store, src = Store(tmp_path / "store"), tmp_path / "src"
    arrays = {}
    for i in range(6):
        arrays[f"{i}g.png"] = gray_array(100 + i)
        write(src / f"{i}g.png", png_bytes(arrays[f"{i}g.png"]))
        write(src / f"{i}b.jpg", f"bad {i}".encode())
    ingest(store, str(src), config=IngestConfig(hash_threads=2), date=DAY)
    [spec] = plan_shards(store, shard_size=100)
    r = extract_shard(store, spec, PIXELS.model_copy(update={"batch_size": 4, "decode_threads": 3}))
    assert (r["n_features"], r["n_quarantined"]) == (6, 6)
    uris = {row["image_id"]: row["uri"] for row in read_manifest(store).to_pylist()}
    t = store.read_parquet(feature_path(r["extractor_key"], spec.shard_id))
    for image_id, emb in zip(t.column("image_id").to_pylist(), embeddings_of(t), strict=True):
        arr = arrays[posixpath.basename(uris[image_id])]
        np.testing.assert_array_equal(emb, arr.reshape(-1) / np.float32(255.0))
