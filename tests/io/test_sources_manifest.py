"""Tests for imgclust.io.sources and imgclust.io.manifest on real files in tmp_path."""
from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pytest

from imgclust.config import IngestConfig
from imgclust.exceptions import ConfigError, CorruptArtifactError, StoreError
from imgclust.io.manifest import (
    MANIFEST_SCHEMA,
    UNREADABLE_PREFIX,
    ShardSpec,
    ingest,
    list_parts,
    manifest_ids,
    new_run_id,
    part_num_rows,
    plan_shards,
    read_manifest,
    read_shard_rows,
)
from imgclust.io.sources import content_id, hash_files, list_source, parent_name, read_uri, relative_name
from imgclust.io.store import Store

try:
    from helpers_images import gray_array, png_bytes, unreadable_works, write
except ImportError:  # tests/ is a package
    from tests.helpers_images import gray_array, png_bytes, unreadable_works, write

DAY1, DAY2, DAY3 = dt.date(2024, 5, 1), dt.date(2024, 5, 2), dt.date(2024, 5, 3)
CFG = IngestConfig(hash_threads=2)


def _png(seed: int) -> bytes:
    return png_bytes(gray_array(seed, side=8))


def _names(files: list, root: Path) -> list[str]:
    return [os.path.relpath(f.uri, root) for f in files]


def _source(tmp_path: Path, n: int, seed: int = 0) -> Path:
    src = tmp_path / "src"
    for i in range(n):
        write(src / f"d{i % 3}" / f"img_{i:03d}.png", _png(seed * 1000 + i))
    return src


# ---- sources --------------------------------------------------------------------------------
def test_content_id_is_stable_sha256_prefix() -> None:
    assert content_id(b"") == "e3b0c44298fc1c149afbf4c8996fb924"  # sha256 of nothing
    data = _png(1)
    assert content_id(data) == hashlib.sha256(data).hexdigest()[:32] == content_id(bytes(data))
    assert content_id(data) != content_id(data + b"\x00")
    assert len(content_id(data)) == 32 and int(content_id(data), 16) >= 0


def test_list_source_filters_extensions_case_insensitively(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in ("a.jpg", "b.JPG", "c.Png", "d.txt", "e.jpeg", "noext", "f.jpg.txt", "g.PNG"):
        write(src / name, b"x")
    (src / "folder.jpg").mkdir()  # a folder with an image extension is not a file
    assert _names(list_source(str(src), extensions=(".jpg", ".png")), src) == ["a.jpg", "b.JPG", "c.Png", "g.PNG"]
    # without a dot and upper-case: same thing
    assert _names(list_source(str(src), extensions=("JPG", "png")), src) == ["a.jpg", "b.JPG", "c.Png", "g.PNG"]
    assert _names(list_source(str(src), extensions=(".jpeg",)), src) == ["e.jpeg"]
    assert list_source(str(src), extensions=()) == []


def test_list_source_recursive_or_not_and_metadata(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "top.png", b"12345")
    write(src / "x" / "mid.png", b"1")
    write(src / "x" / "y" / "deep.png", b"1")
    os.utime(src / "top.png", ns=(1_700_000_000_123_456_000, 1_700_000_000_123_456_000))
    files = list_source(str(src), extensions=(".png",))
    assert _names(files, src) == ["top.png", "x/mid.png", "x/y/deep.png"]
    assert _names(list_source(str(src), extensions=(".png",), recursive=False), src) == ["top.png"]
    top = files[0]
    assert top.uri == str(src / "top.png") and os.path.isabs(top.uri)
    assert top.size_bytes == 5
    assert top.mtime == dt.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=dt.timezone.utc)
    # relative source paths become absolute uris
    rel = os.path.relpath(src)
    assert [f.uri for f in list_source(rel, extensions=(".png",))] == [f.uri for f in files]


def test_symlink_loop_terminates_and_lists_each_file_once(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.png", b"1")
    write(src / "sub" / "b.png", b"2")
    write(src / "sub" / "deeper" / "c.png", b"3")
    os.symlink(src, src / "sub" / "deeper" / "loop")  # parent inside child
    os.symlink(src / "sub", src / "sub" / "self")  # folder inside itself
    os.symlink(src / "sub", src / "0-alias")  # a second way to reach sub, sorted before it
    os.symlink(src / "sub", src / "z-alias")  # ... and one sorted after it
    files = list_source(str(src), extensions=(".png",))
    assert _names(files, src) == ["a.png", "sub/b.png", "sub/deeper/c.png"]  # real paths win


def test_symlinked_folder_outside_the_source_is_followed(tmp_path: Path) -> None:
    src, outside = tmp_path / "src", tmp_path / "outside"
    write(outside / "o.png", b"o")
    write(src / "s.png", b"s")
    os.symlink(outside, src / "link")
    os.symlink(src / "s.png", src / "file-link.png")  # a symlinked file is listed under its own name
    assert _names(list_source(str(src), extensions=(".png",)), src) == ["file-link.png", "link/o.png", "s.png"]


def test_dangling_symlink_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "src"
    write(src / "ok.png", b"1")
    os.symlink(tmp_path / "gone.png", src / "dangling.png")
    os.symlink(tmp_path / "gone-folder", src / "dangling-dir")
    assert _names(list_source(str(src), extensions=(".png",)), src) == ["ok.png"]
    assert "dangling.png" in caplog.text


def test_missing_source_is_a_config_error(tmp_path: Path) -> None:
    write(tmp_path / "file.png", b"x")
    for bad in (str(tmp_path / "nope"), str(tmp_path / "file.png"), f"file://{tmp_path}/nope"):
        with pytest.raises(ConfigError, match="does not exist"):
            list_source(bad, extensions=(".png",))
    with pytest.raises(ConfigError):
        ingest(Store(tmp_path / "store"), str(tmp_path / "nope"))


def test_names_with_spaces_and_unicode(tmp_path: Path) -> None:
    src = tmp_path / "src"
    names = ["my photo.png", "café ünïcode.png", "日本 語/写真 1.png", "emoji 🐱.png"]
    for i, name in enumerate(names):
        write(src / name, _png(i))
    files = list_source(str(src), extensions=(".png",))
    assert sorted(_names(files, src)) == sorted(names)
    for f in files:
        assert read_uri(f.uri) == (src / os.path.relpath(f.uri, src)).read_bytes()
    store = Store(tmp_path / "store")
    summary = ingest(store, str(src), config=CFG, date=DAY1)
    assert summary.new == 4
    uris = read_manifest(store).column("uri").to_pylist()
    assert sorted(os.path.relpath(u, src) for u in uris) == sorted(names)
    assert relative_name(str(src / "日本 語/写真 1.png")) == "写真 1.png"
    assert parent_name(str(src / "日本 語/写真 1.png")) == "日本 語"
    with pytest.raises(StoreError):
        parent_name("orphan.png")


def test_non_utf8_file_name_is_skipped_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "src"
    write(src / "ok.png", _png(0))
    try:
        with open(os.fsencode(src) + b"/caf\xe9.png", "wb") as f:
            f.write(_png(1))
    except (OSError, UnicodeError):
        pytest.skip("this filesystem refuses non-UTF-8 names")
    assert _names(list_source(str(src), extensions=(".png",)), src) == ["ok.png"]
    assert "not valid UTF-8" in caplog.text
    assert ingest(Store(tmp_path / "store"), str(src), config=CFG, date=DAY1).new == 1


def test_hash_files_reports_errors_instead_of_raising(tmp_path: Path) -> None:
    src = _source(tmp_path, 4)
    files = list_source(str(src), extensions=(".png",))
    os.remove(files[1].uri)
    out = hash_files(files, threads=3)
    assert [f for f, _, _ in out] == files  # order kept
    assert out[1][1] is None and "FileNotFoundError" in out[1][2]
    for f, image_id, err in (out[0], out[2], out[3]):
        assert image_id == content_id(Path(f.uri).read_bytes()) and err == ""


# ---- ingest ----------------------------------------------------------------------------------
def test_ingest_writes_one_partition_with_the_manifest_schema(tmp_path: Path) -> None:
    src = _source(tmp_path, 7)
    store = Store(tmp_path / "store")
    summary = ingest(store, str(src), config=CFG, date=DAY1, run_id="r1")
    assert summary.as_dict() == {"listed": 7, "new": 7, "already_known": 0, "duplicates": 0, "unreadable": 0,
                                 "part": "manifest/date=2024-05-01/part-r1.parquet", "date": "2024-05-01"}
    assert list_parts(store) == [summary.part]
    t = store.read_parquet(summary.part)
    assert t.schema.equals(MANIFEST_SCHEMA, check_metadata=False)
    assert t.schema.types == MANIFEST_SCHEMA.types  # tz and units included
    assert t.num_rows == 7
    ids = t.column("image_id").to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == 7
    for row in t.to_pylist():
        p = Path(row["uri"])
        assert row["image_id"] == content_id(p.read_bytes())
        assert row["size_bytes"] == p.stat().st_size
        assert row["mtime"] == dt.datetime.fromtimestamp(p.stat().st_mtime, tz=dt.timezone.utc)
        assert row["source"] == str(src)
        assert row["ingested_at"].tzinfo is not None
    assert len(set(t.column("ingested_at").to_pylist())) == 1


def test_byte_identical_copies_dedupe_to_one_row(tmp_path: Path) -> None:
    src = tmp_path / "src"
    data = _png(42)
    for name in ("z/copy.png", "a/original.png", "m/another name.PNG"):
        write(src / name, data)
    write(src / "other.png", _png(43))
    store = Store(tmp_path / "store")
    summary = ingest(store, str(src), config=CFG, date=DAY1)
    assert (summary.listed, summary.new, summary.duplicates) == (4, 2, 2)
    t = read_manifest(store)
    assert t.num_rows == 2
    row = [r for r in t.to_pylist() if r["image_id"] == content_id(data)][0]
    assert row["uri"] == str(src / "a/original.png")  # the first by uri: deterministic


def test_second_ingest_of_unchanged_source_adds_nothing_and_reads_nothing(tmp_path: Path) -> None:
    src = _source(tmp_path, 9)
    store = Store(tmp_path / "store")
    first = ingest(store, str(src), config=CFG, date=DAY1)
    # rewrite one file's bytes but keep its size and mtime: only a re-read could notice
    victim = Path(read_manifest(store).column("uri")[0].as_py())
    st = victim.stat()
    victim.write_bytes(bytes(b ^ 0xFF for b in victim.read_bytes()))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = ingest(store, str(src), config=CFG, date=DAY1)
    assert again.part is None
    assert (again.listed, again.new, again.already_known, again.duplicates) == (9, 0, 9, 0)
    assert list_parts(store) == [first.part]


def test_new_file_on_day_two_gets_its_own_partition(tmp_path: Path) -> None:
    src = _source(tmp_path, 5)
    store = Store(tmp_path / "store")
    p1 = ingest(store, str(src), config=CFG, date=DAY1).part
    new = write(src / "d9" / "new.png", _png(999))
    write(src / "d9" / "copy-of-old.png", (src / "d0" / "img_000.png").read_bytes())  # known content
    s2 = ingest(store, str(src), config=CFG, date=DAY2)
    assert (s2.listed, s2.new, s2.already_known, s2.duplicates) == (7, 1, 5, 1)
    assert s2.part is not None and s2.part.startswith("manifest/date=2024-05-02/part-")
    assert list_parts(store) == [p1, s2.part]
    t2 = store.read_parquet(s2.part)
    assert t2.column("uri").to_pylist() == [str(new)]
    assert read_manifest(store).num_rows == 6
    assert read_manifest(store, start=DAY2).num_rows == 1
    assert read_manifest(store, end=DAY1, columns=["image_id"]).column_names == ["image_id"]


def test_touched_file_with_same_bytes_is_not_a_new_row(tmp_path: Path) -> None:
    src = _source(tmp_path, 3)
    store = Store(tmp_path / "store")
    ingest(store, str(src), config=CFG, date=DAY1)
    os.utime(src / "d1" / "img_001.png", (2_000_000_000, 2_000_000_000))
    s2 = ingest(store, str(src), config=CFG, date=DAY2)
    assert (s2.new, s2.already_known, s2.duplicates, s2.part) == (0, 2, 1, None)


def test_run_id_is_validated_and_parts_are_never_overwritten(tmp_path: Path) -> None:
    src = _source(tmp_path, 2)
    store = Store(tmp_path / "store")
    for bad in ("a/b", "../x", "has space", ""):
        if bad:
            with pytest.raises(ConfigError, match="run_id"):
                ingest(store, str(src), config=CFG, date=DAY1, run_id=bad)
    assert list_parts(store) == []
    part = ingest(store, str(src), config=CFG, date=DAY1, run_id="same").part
    write(src / "late.png", _png(77))
    with pytest.raises(StoreError, match="already exists"):
        ingest(store, str(src), config=CFG, date=DAY1, run_id="same")
    assert store.read_parquet(part).num_rows == 2
    assert ingest(store, str(src), config=CFG, date=DAY1, run_id="other").new == 1


def test_new_run_id_is_sortable_and_unique() -> None:
    t = dt.datetime(2026, 11, 24, 21, 36, tzinfo=dt.timezone.utc)
    a, b = new_run_id(t), new_run_id(t)
    assert a.startswith("20261124T213600Z-") and a != b


def test_unreadable_file_becomes_an_unreadable_row(tmp_path: Path) -> None:
    if not unreadable_works(tmp_path):
        pytest.skip("no file here that lists as a regular file yet fails to read (/proc/self/mem)")
    src = _source(tmp_path, 2)
    os.symlink("/proc/self/mem", src / "broken.png")
    store = Store(tmp_path / "store")
    s = ingest(store, str(src), config=CFG, date=DAY1)
    assert (s.new, s.unreadable) == (3, 1)
    rows = {r["uri"]: r["image_id"] for r in read_manifest(store).to_pylist()}
    bad_id = rows[str(src / "broken.png")]
    assert bad_id == UNREADABLE_PREFIX + hashlib.sha256(str(src / "broken.png").encode()).hexdigest()[:32]
    # known by (uri, size, mtime): not retried, not duplicated
    s2 = ingest(store, str(src), config=CFG, date=DAY2)
    assert (s2.new, s2.already_known, s2.part) == (0, 3, None)


# ---- parts and shards ------------------------------------------------------------------------
def _two_day_store(tmp_path: Path, n1: int = 23, n2: int = 5) -> Store:
    store = Store(tmp_path / "store")
    src1, src2 = tmp_path / "s1", tmp_path / "s2"
    for i in range(n1):
        write(src1 / f"{i:03d}.png", _png(i))
    for i in range(n2):
        write(src2 / f"{i:03d}.png", _png(500 + i))
    ingest(store, str(src1), config=CFG, date=DAY1, run_id="r1")
    ingest(store, str(src2), config=CFG, date=DAY3, run_id="r3")
    return store


def test_list_parts_date_filter(tmp_path: Path) -> None:
    store = _two_day_store(tmp_path, 2, 2)
    p1, p3 = "manifest/date=2024-05-01/part-r1.parquet", "manifest/date=2024-05-03/part-r3.parquet"
    store.write_bytes("manifest/date=2024-05-01/notes.txt", b"ignored")
    store.write_bytes("manifest/date=yesterday/part-x.parquet", b"ignored")
    assert list_parts(store) == [p1, p3]
    assert list_parts(store, start=DAY1, end=DAY1) == [p1]  # inclusive
    assert list_parts(store, start=DAY2) == [p3]
    assert list_parts(store, end=DAY2) == [p1]
    assert list_parts(store, start=DAY2, end=DAY2) == []
    with pytest.raises(ConfigError, match="after"):
        list_parts(store, start=DAY3, end=DAY1)
    assert read_manifest(Store(tmp_path / "empty")).schema.equals(MANIFEST_SCHEMA)


@pytest.mark.parametrize("shard_size", [1, 4, 7, 23, 1000])
def test_plan_shards_covers_every_row_once(tmp_path: Path, shard_size: int) -> None:
    store = _two_day_store(tmp_path)
    specs = plan_shards(store, shard_size=shard_size)
    assert specs == plan_shards(store, shard_size=shard_size)  # deterministic
    assert len({s.shard_id for s in specs}) == len(specs)
    assert all(0 < s.size <= shard_size for s in specs)
    seen: list[str] = []
    for s in specs:
        rows = read_shard_rows(store, s)
        assert rows.num_rows == s.size
        seen += rows.column("image_id").to_pylist()
    assert sorted(seen) == sorted(read_manifest(store).column("image_id").to_pylist())
    assert len(seen) == len(set(seen)) == 28
    expected_n = -(-23 // shard_size) + -(-5 // shard_size)
    assert len(specs) == expected_n


def test_plan_shards_ids_and_filters(tmp_path: Path) -> None:
    store = _two_day_store(tmp_path)
    specs = plan_shards(store, shard_size=10)
    assert [(s.shard_id, s.start, s.stop) for s in specs] == [
        ("2024-05-01_r1_00000", 0, 10), ("2024-05-01_r1_00001", 10, 20), ("2024-05-01_r1_00002", 20, 23),
        ("2024-05-03_r3_00000", 0, 5)]
    assert ShardSpec(**specs[0].as_dict()) == specs[0]
    assert [s.shard_id for s in plan_shards(store, shard_size=10, start=DAY2)] == ["2024-05-03_r3_00000"]
    only = plan_shards(store, shard_size=10, parts=["manifest/date=2024-05-03/part-r3.parquet"])
    assert only == specs[-1:]
    # a day-3 ingest of more data adds shards, never changes the old ones
    write(tmp_path / "s2" / "more.png", _png(9999))
    ingest(store, str(tmp_path / "s2"), config=CFG, date=DAY3, run_id="r4")
    assert plan_shards(store, shard_size=10)[:4] == specs
    with pytest.raises(ConfigError):
        plan_shards(store, shard_size=0)
    with pytest.raises(ConfigError, match="not a manifest part"):
        plan_shards(store, shard_size=10, parts=["features/x.parquet"])


def test_shard_rows_beyond_the_part_and_bad_parts(tmp_path: Path) -> None:
    store = _two_day_store(tmp_path, 3, 1)
    part = "manifest/date=2024-05-01/part-r1.parquet"
    assert part_num_rows(store, part) == 3
    with pytest.raises(CorruptArtifactError, match="wants rows up to 5"):
        read_shard_rows(store, ShardSpec("x", part, 0, 5))
    store.write_bytes(part, store.read_bytes(part)[:-10])
    with pytest.raises(CorruptArtifactError, match="part-r1"):
        part_num_rows(store, part)
    with pytest.raises(CorruptArtifactError):
        plan_shards(store, shard_size=2)
    with pytest.raises(StoreError, match="does not exist"):
        part_num_rows(store, "manifest/date=2024-05-09/part-none.parquet")


def test_manifest_ids_are_unique_over_parts(tmp_path: Path) -> None:
    store = _two_day_store(tmp_path, 4, 3)
    ids = manifest_ids(store, list_parts(store))
    assert isinstance(ids, pa.Array) and len(ids) == 7
    assert sorted(ids.to_pylist()) == sorted(read_manifest(store).column("image_id").to_pylist())
    assert len(manifest_ids(store, [])) == 0
