"""Candidate new clusters (imgclust.models.candidates): a tight new group among a night's novel rows is found, the
scattered false novels of known kinds are not; on real Fashion-MNIST pixels a held-out class becomes a candidate
and a known-only night gives none; argument errors; the montage PNG."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import requires_fashion
from PIL import Image

from imgclust.exceptions import ConfigError
from imgclust.models.candidates import (
    MAX_TIGHTNESS,
    Candidate,
    candidate_montage,
    default_min_size,
    find_candidates,
    find_groups,
    is_candidate,
)
from imgclust.models.novelty import NoveltyScorer

DIM = 10
N_NIGHT = 2_000


@pytest.fixture(scope="module")
def synthetic() -> dict[str, np.ndarray]:
    """Known kind: N(0, I_10). A NoveltyScorer (no residual) fitted on 7,000 known rows; a known night of
    2,000 rows gives its false novels (~5 %); two new kinds: tight blobs of 80 and 40 rows off the known data."""
    rng = np.random.default_rng(7)
    scorer = NoveltyScorer(n_reference=5_000, n_calibration=2_000, residual=False, seed=0)
    scorer.fit(rng.standard_normal((7_000, DIM)).astype(np.float32))
    night = rng.standard_normal((N_NIGHT, DIM)).astype(np.float32)
    centre_a, centre_b = np.zeros(DIM, np.float32), np.zeros(DIM, np.float32)
    centre_a[0], centre_b[1] = 6.0, -6.0
    blob_a = (centre_a + 0.3 * rng.standard_normal((80, DIM))).astype(np.float32)
    blob_b = (centre_b + 0.3 * rng.standard_normal((40, DIM))).astype(np.float32)
    assert scorer.predict(blob_a).all() and scorer.predict(blob_b).all()
    return {"false_novel": night[scorer.predict(night)], "blob_a": blob_a, "blob_b": blob_b,
            "reference": scorer.reference_space()}


def test_tight_new_blobs_among_scattered_false_novels_are_found(synthetic: dict[str, np.ndarray]) -> None:
    scattered = synthetic["false_novel"]
    assert 50 <= len(scattered) <= 160  # the conformal 5 % of a known night
    rows = np.concatenate([scattered, synthetic["blob_b"], synthetic["blob_a"]])
    a = np.arange(len(scattered) + 40, len(rows))
    b = np.arange(len(scattered), len(scattered) + 40)
    found = find_candidates(rows, synthetic["reference"], n_night=N_NIGHT + 120)
    assert len(found) == 2, [(c.size, c.tightness) for c in found]
    big, small = found  # sorted by size, largest first
    assert set(big.members.tolist()) == set(a.tolist()) and set(small.members.tolist()) == set(b.tolist())
    for c in found:
        assert isinstance(c, Candidate) and c.members.dtype == np.int64 and c.size == c.members.size
        assert 0 < c.spread and c.tightness <= MAX_TIGHTNESS
        assert c.tightness < 0.5  # a blob 0.3 wide far from the known data: far denser than known data there
    # the same call gives the same candidates (HDBSCAN is deterministic on the same rows)
    again = find_candidates(rows, synthetic["reference"], n_night=N_NIGHT + 120)
    assert all(np.array_equal(x.members, y.members) for x, y in zip(found, again, strict=True))


def test_scattered_false_novels_alone_give_no_candidate(synthetic: dict[str, np.ndarray]) -> None:
    scattered = synthetic["false_novel"]
    assert find_candidates(scattered, synthetic["reference"], n_night=N_NIGHT) == []
    # few of them are denser than known data, and what HDBSCAN makes of those (with a small min_size) is not tight
    for g in find_groups(scattered, synthetic["reference"], n_night=N_NIGHT, min_size=5):
        assert g.tightness > MAX_TIGHTNESS, g


def test_min_size_and_tiny_inputs(synthetic: dict[str, np.ndarray]) -> None:
    ref = synthetic["reference"]
    assert default_min_size(3_000) == 20 and default_min_size(10_000) == 50
    assert find_candidates(np.zeros((0, DIM), np.float32), ref, n_night=100) == []
    assert find_candidates(synthetic["blob_b"][:19], ref, n_night=N_NIGHT) == []  # fewer than min_size = 20
    # a min_size above the smaller blob's size: HDBSCAN finds no split, so the dense rows are one group
    rows = np.concatenate([synthetic["blob_a"], synthetic["blob_b"]])
    (only,) = find_candidates(rows, ref, n_night=N_NIGHT, min_size=60)
    assert sorted(only.members.tolist()) == list(range(120))
    # members are ordered densest first: the j-th fellow distance grows along the order
    c = find_candidates(synthetic["blob_a"], ref, n_night=N_NIGHT)[0]
    d = np.linalg.norm(synthetic["blob_a"][c.members][:, None] - synthetic["blob_a"][c.members][None], axis=2)
    kth = np.sort(d, axis=1)[:, 10]
    assert np.all(np.diff(kth) >= -1e-5)


def test_many_novel_rows_cluster_a_seeded_sample(synthetic: dict[str, np.ndarray],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import imgclust.models.candidates as candidates

    n_false = len(synthetic["false_novel"])
    rows = np.concatenate([synthetic["false_novel"], synthetic["blob_a"], synthetic["blob_b"]])
    monkeypatch.setattr(candidates, "MAX_CLUSTER_ROWS", 100)  # HDBSCAN on 100 dense rows, the rest predicted
    big, small = find_candidates(rows, synthetic["reference"], n_night=N_NIGHT, seed=3)
    assert set(big.members.tolist()) <= set(range(n_false, n_false + 80)) and big.size >= 70
    assert set(small.members.tolist()) <= set(range(n_false + 80, n_false + 120)) and small.size >= 35


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"reference": np.zeros((50, DIM + 1), np.float32)}, "columns"),
    ({"rows": np.full((30, DIM), np.nan, np.float32)}, "NaN or infinite"),
    ({"reference": np.zeros((0, DIM), np.float32)}, "reference is empty"),
    ({"rows": np.zeros(DIM, np.float32)}, "2-D"),
    ({"min_size": 1}, "min_size"),
    ({"min_size": 2.5}, "min_size"),
    ({"n_night": 10}, "smaller than the 30 novel rows"),
    ({"n_night": 10_000, "min_size": 100, "reference": np.zeros((50, DIM), np.float32)}, "keep more reference"),
    ({"max_tightness": 0.0}, "max_tightness"),
    ({"max_tightness": float("inf")}, "max_tightness"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    args = {"rows": np.zeros((30, DIM), np.float32), "reference": np.zeros((500, DIM), np.float32),
            "n_night": 1_000, **kwargs}
    rows, reference = args.pop("rows"), args.pop("reference")
    with pytest.raises(ConfigError, match=match):
        find_candidates(rows, reference, **args)


def test_candidate_montage_png(tmp_path: Path) -> None:
    uris: list[str | None] = []
    for i in range(50):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((20, 30), 5 * i, np.uint8)).save(p)
        uris.append(str(p))
    uris[0] = None  # an unavailable image becomes a grey tile
    img = Image.open(io.BytesIO(candidate_montage(uris, size=16, max_tiles=9)))
    assert img.format == "PNG" and img.size == (2 + 3 * 18, 2 + 3 * 18)  # 9 tiles on a 3 x 3 grid, 2 px gaps
    assert img.convert("RGB").getpixel((2 + 8, 2 + 8)) == (128, 128, 128)
    few = Image.open(io.BytesIO(candidate_montage(uris[1:3], size=16)))
    assert few.size == (2 + 2 * 18, 2 + 1 * 18)
    with pytest.raises(ConfigError, match="no image URIs"):
        candidate_montage([])
    with pytest.raises(ConfigError, match="max_tiles"):
        candidate_montage(uris, max_tiles=0)


@requires_fashion
def test_held_out_fashion_class_is_a_candidate_and_known_night_gives_none() -> None:
    """Pixel recipe in small: PCA 50 on 3,000 train images of 8 classes, the NoveltyScorer on novelty_rows of
    them; nights of 1,500 test images, known only or 20 % bags / ankle boots (never fitted)."""
    from imgclust.data.datasets import load_fashion_mnist
    from imgclust.models.novelty import novelty_rows
    from imgclust.reduce.streaming import StreamingPCA

    held = (8, 9)
    x, y = load_fashion_mnist("train")
    xt, yt = load_fashion_mnist("test")
    rng = np.random.default_rng(0)
    fit = x[rng.choice(np.flatnonzero(~np.isin(y, held)), 3_000, replace=False)].reshape(-1, 784) / np.float32(255)
    pca = StreamingPCA(n_components=50).fit(fit)
    scorer = NoveltyScorer(n_reference=2_000, n_calibration=1_000, seed=0).fit(novelty_rows(pca, fit))
    known, new = np.flatnonzero(~np.isin(yt, held)), np.flatnonzero(np.isin(yt, held))
    nights = {"known": rng.choice(known, 1_500, replace=False),
              "held": np.concatenate([rng.choice(known, 1_200, replace=False), rng.choice(new, 300, replace=False)])}
    found: dict[str, list[Candidate]] = {}
    purity: dict[str, list[float]] = {}
    for name, idx in nights.items():
        rows = novelty_rows(pca, xt[idx].reshape(-1, 784) / np.float32(255))
        novel = np.flatnonzero(scorer.predict(rows))
        space, ref = scorer.space(rows)[novel], scorer.reference_space()
        groups = find_groups(space, ref, n_night=len(idx))
        found[name] = find_candidates(space, ref, n_night=len(idx))
        assert len(found[name]) == sum(is_candidate(g, default_min_size(len(idx))) for g in groups)
        purity[name] = [float(np.isin(yt[idx[novel[c.members]]], held).mean()) for c in found[name]]
    assert found["known"] == []
    assert found["held"] and min(purity["held"]) >= 0.8, purity["held"]
    assert sum(c.size for c in found["held"]) >= 100  # of the 300 held-out images
