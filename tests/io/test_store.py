"""Tests for imgclust.io.store on a local root (S3 through moto is covered by the integration tests)."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from imgclust.exceptions import CorruptArtifactError, StoreError
from imgclust.io.store import Store


def _table(seed: int, n: int = 2000) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {"id": [f"r{i}" for i in range(n)], "x": rng.random(n), "k": rng.integers(0, 9, n)},
    ).replace_schema_metadata({"made_by": "test_store"})


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


# ---- construction and paths ------------------------------------------------------------------
def test_relative_root_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Store("rel/root/")
    assert s.url == str(tmp_path / "rel" / "root")
    assert s.is_local
    assert repr(s) == f"Store({s.url!r})"


def test_empty_root_is_refused() -> None:
    with pytest.raises(StoreError, match="empty"):
        Store("")


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "a/..", "..", "..\\x", "/etc/passwd", "/", "s3://bucket/key",
                                 "file:///etc/passwd"])
def test_path_escaping_the_root_is_refused(store: Store, rel: str) -> None:
    with pytest.raises(StoreError, match="escapes the store root"):
        store.path(rel)
    with pytest.raises(StoreError):
        store.write_bytes(rel, b"x")


@pytest.mark.parametrize(("rel", "expected"), [("a/b.txt", "a/b.txt"), ("a//b.txt", "a/b.txt"), ("./a/./b", "a/b"),
                                               ("", ""), (".", "")])
def test_path_stays_under_root(store: Store, rel: str, expected: str) -> None:
    p = store.path(rel)
    assert p == (f"{store.root}/{expected}" if expected else store.root)
    if expected:
        assert store.rel(p) == expected


def test_rel_refuses_a_path_outside(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not under store root"):
        store.rel(str(tmp_path / "elsewhere" / "x"))
    # a sibling whose name starts with the root's name is not under it
    with pytest.raises(StoreError):
        store.rel(store.root + "-sibling/x")


# ---- atomic writes ---------------------------------------------------------------------------
def test_writes_leave_no_temp_files(store: Store, tmp_path: Path) -> None:
    store.write_bytes("a/b/c.bin", b"\x00\x01")
    store.write_bytes("a/b/c.bin", b"second")  # overwrite
    store.write_json("m/x.json", {"b": 1, "a": [1, 2]})
    store.write_parquet("p/t.parquet", _table(0))
    assert _files(tmp_path / "store") == ["a/b/c.bin", "m/x.json", "p/t.parquet"]
    assert store.read_bytes("a/b/c.bin") == b"second"
    assert store.read_json("m/x.json") == {"a": [1, 2], "b": 1}
    assert store.exists("p/t.parquet") and not store.exists("p/none.parquet")


def test_failed_write_keeps_old_content_and_removes_temp(store: Store, tmp_path: Path) -> None:
    # the target is a non-empty folder: the final rename fails after the temp file was written
    store.write_bytes("blocked/keep.txt", b"keep")
    with pytest.raises(OSError):
        store.write_bytes("blocked", b"new data")
    assert _files(tmp_path / "store") == ["blocked/keep.txt"]
    assert store.read_bytes("blocked/keep.txt") == b"keep"


def test_remove_file_and_folder(store: Store) -> None:
    store.write_bytes("d/x", b"1")
    store.write_bytes("d/e/y", b"2")
    store.remove("d/x")
    assert not store.exists("d/x") and store.exists("d/e/y")
    store.remove("d")
    assert not store.exists("d")
    store.remove("never/was")  # no error


# ---- glob ------------------------------------------------------------------------------------
def test_glob_is_sorted_relative_and_ignores_temp_files(store: Store, tmp_path: Path) -> None:
    for sid in ("2", "10", "1"):
        store.write_bytes(f"features/k/shard-{sid}.json", b"{}")
    # what a writer killed mid-write leaves behind
    (tmp_path / "store/features/k/shard-3.json.tmp-0123abcd").write_bytes(b"{")
    (tmp_path / "store/features/k/.tmp-x.json").write_bytes(b"{")
    assert store.glob("features/k/*") == ["features/k/shard-1.json", "features/k/shard-10.json",
                                         "features/k/shard-2.json"]
    assert store.glob("features/*/shard-*.json") == store.glob("features/k/*")
    assert store.glob("nothing/*.json") == []
    with pytest.raises(StoreError):
        store.glob("../*")


def test_glob_sees_files_written_by_another_store_instance(store: Store) -> None:
    assert store.glob("x/*.bin") == []
    other = Store(store.url)
    other.write_bytes("x/a.bin", b"1")
    assert store.glob("x/*.bin") == ["x/a.bin"]


# ---- parquet -----------------------------------------------------------------------------------
def test_parquet_round_trip_keeps_schema_metadata(store: Store) -> None:
    t = _table(1)
    store.write_parquet("t.parquet", t, row_group_size=300)
    back = store.read_parquet("t.parquet")
    assert back.equals(t)
    assert back.schema.metadata[b"made_by"] == b"test_store"
    assert store.read_parquet("t.parquet", columns=["x"]).column_names == ["x"]
    batches = list(store.iter_parquet_batches("t.parquet", columns=["id", "k"], batch_size=256))
    assert all(b.num_rows <= 256 for b in batches)
    assert pa.Table.from_batches(batches).equals(t.select(["id", "k"]))


def _corrupt_variants(raw: bytes) -> dict[str, bytes]:
    flipped = bytearray(raw)
    for off in range(len(raw) // 3, len(raw) // 3 + 16):  # inside the first column's data page
        flipped[off] ^= 0x5A
    return {
        "empty": b"",
        "magic-only": raw[:4],
        "truncated-half": raw[: len(raw) // 2],
        "truncated-1": raw[:-1],
        "no-footer": raw[:-8],
        "garbage": np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "json": b'{"not": "parquet"}',
        "bit-flips": bytes(flipped),
    }


@pytest.mark.parametrize("variant", list(_corrupt_variants(b"PAR1" + b"\x00" * 100)))
def test_corrupt_parquet_raises_corrupt_artifact_naming_the_path(store: Store, variant: str) -> None:
    store.write_parquet("good.parquet", _table(2))
    bad = _corrupt_variants(store.read_bytes("good.parquet"))[variant]
    store.write_bytes("features/k/shard-x.parquet", bad)
    with pytest.raises(CorruptArtifactError) as info:
        store.read_parquet("features/k/shard-x.parquet")
    assert store.path("features/k/shard-x.parquet") in str(info.value)
    with pytest.raises(CorruptArtifactError, match="shard-x.parquet"):
        list(store.iter_parquet_batches("features/k/shard-x.parquet", batch_size=100))


def test_missing_parquet_or_column_is_not_corruption(store: Store) -> None:
    with pytest.raises(StoreError, match="does not exist") as info:
        store.read_parquet("none.parquet")
    assert type(info.value) is StoreError
    with pytest.raises(StoreError, match="does not exist") as info:
        list(store.iter_parquet_batches("none.parquet"))
    assert type(info.value) is StoreError
    store.write_parquet("t.parquet", _table(4, n=10))
    for call in (lambda: store.read_parquet("t.parquet", columns=["nope"]),
                 lambda: list(store.iter_parquet_batches("t.parquet", columns=["x", "nope"]))):
        with pytest.raises(StoreError, match="nope") as info:
            call()
        assert type(info.value) is StoreError


# ---- json ------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [b"", b"{", b'{"a": 1', b"not json", b"\xff\xfe\x80garbage\x00", b"\x80"])
def test_corrupt_json_raises_corrupt_artifact(store: Store, raw: bytes) -> None:
    store.write_bytes("features/k/shard-1.json", raw)
    with pytest.raises(CorruptArtifactError, match="shard-1.json"):
        store.read_json("features/k/shard-1.json")


def test_json_round_trip_and_missing(store: Store) -> None:
    obj = {"n": 3, "f": 0.25, "s": "ü", "nested": {"l": [1, None]}}
    store.write_json("j.json", obj)
    assert store.read_json("j.json") == obj
    assert json.loads((Path(store.root) / "j.json").read_text()) == obj
    with pytest.raises(StoreError, match="does not exist"):
        store.read_json("missing.json")


# ---- pickling ----------------------------------------------------------------------------------
def test_store_pickles_as_url_and_options_only(store: Store) -> None:
    s = Store(store.url, storage_options={"auto_mkdir": True})
    s.write_bytes("a.bin", b"1")  # opens the filesystem
    assert s.__getstate__() == {"url": s.url, "storage_options": {"auto_mkdir": True}}
    blob = pickle.dumps(s)
    assert len(blob) < 300
    clone = pickle.loads(blob)
    assert clone.url == s.url and clone.storage_options == s.storage_options
    assert clone._fs is None  # reopened lazily on the other side
    assert clone.read_bytes("a.bin") == b"1"
    clone.write_bytes("b.bin", b"2")
    assert s.read_bytes("b.bin") == b"2"


def test_unpickled_store_works_after_root_contents_change(store: Store) -> None:
    store.write_bytes("x/1", b"1")
    clone = pickle.loads(pickle.dumps(store))
    os.remove(store.path("x/1"))
    assert not clone.exists("x/1")
