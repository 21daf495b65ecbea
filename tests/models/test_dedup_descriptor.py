"""The ``layout`` near-duplicate descriptor (imgclust.extract.backbones.classic.LayoutBackbone): its contract (dim, key,
unit norm, determinism), exact invariances on tensors, and what it does on real photo variants."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers_photos import photo_like, requires_photos

from imgclust.data.photos import PhotoCorpus, build_photo_variant_corpus
from imgclust.extract.backbones import backbone_infos, create_backbone
from imgclust.extract.images import decode_image
from imgclust.models.dedup import DedupConfig, find_near_duplicates

THRESHOLD = DedupConfig().threshold


@pytest.fixture(scope="module")
def layout() -> object:
    return create_backbone("layout", device="cpu")


def _embed(bb: object, images: list[np.ndarray]) -> np.ndarray:
    return bb.embed(torch.stack([bb.preprocess(im) for im in images]))  # type: ignore[attr-defined]


def test_contract_dim_key_norm_and_registry(layout: object) -> None:
    bb = layout
    info = {i.name: i for i in backbone_infos()}["layout"]
    assert (bb.dim, info.dim, info.input_size) == (253, 253, 64)  # type: ignore[attr-defined]
    assert bb.key() == "layout-64-RGB" and bb.weights_id == "none"  # type: ignore[attr-defined]
    images = [np.asarray(photo_like(seed, 320 + 40 * seed, 240)) for seed in range(5)]
    X = _embed(bb, images)
    assert X.shape == (5, 253) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(X[:, -1], math.sqrt(1 - 1 / 8), atol=1e-6)  # the calibration component
    with pytest.raises(Exception, match="classic feature without weights"):
        create_backbone("layout", weights="imagenet", device="cpu")


def test_deterministic_and_independent_of_the_batch(layout: object) -> None:
    images = [np.asarray(photo_like(seed, 400, 300)) for seed in range(4)]
    together = _embed(layout, images)
    np.testing.assert_array_equal(together, _embed(layout, images))
    alone = np.concatenate([_embed(layout, [im]) for im in images])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    assert create_backbone("layout", device="cpu").fingerprint() == layout.fingerprint()  # type: ignore[attr-defined]


def test_exactly_invariant_to_gain_and_offset_and_not_to_another_picture(layout: object) -> None:
    """On the preprocessed tensor (no clipping): x -> 0.7 * x + 0.1 changes nothing (luma and chroma grids are
    mean-centred and each part L2-normalised; edge energies are divided by their total). Another picture does."""
    bb = layout
    x = torch.stack([bb.preprocess(np.asarray(photo_like(s, 300, 200))) for s in (1, 2)])  # type: ignore[attr-defined]
    base = bb.embed(x)  # type: ignore[attr-defined]
    changed = bb.embed(0.7 * x + 0.1)  # type: ignore[attr-defined]
    np.testing.assert_allclose(changed, base, atol=2e-5)
    assert float(base[0] @ base[1]) < 0.95


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> PhotoCorpus:
    return build_photo_variant_corpus(tmp_path_factory.mktemp("photos"), seed=3, n_sources=10, max_side=768,
                                      kinds=("original", "crop85", "half", "thumb", "jpeg35", "rotate", "webp"))


@requires_photos
def test_real_photo_variants_stay_above_the_threshold_and_distinct_photos_below(layout: object,
                                                                              corpus: PhotoCorpus) -> None:
    """Each variant of 10 real wallpapers against its original at the default dedup threshold: rescales and
    re-encodes always, 85 % crops and 3-8 degree rotations for at least 9 of 10 photos; the originals of
    different photos stay below it; and the groups dedup makes from these rows are the photos."""
    prep = layout.preprocessing  # type: ignore[attr-defined]
    images = [decode_image(r.path.read_bytes(), mode="RGB", target_side=prep.resize_size) for r in corpus.records]
    X = _embed(layout, images)
    S = X @ X.T
    index = {(r.group, r.kind): i for i, r in enumerate(corpus.records)}
    groups = sorted(corpus.groups())
    for kind in ("half", "thumb", "jpeg35", "webp", "crop85", "rotate"):
        sims = np.array([S[index[g, "original"], index[g, kind]] for g in groups])
        need = len(groups) if kind in ("half", "thumb", "jpeg35", "webp") else len(groups) - 1
        assert (sims >= THRESHOLD).sum() >= need, (kind, np.round(sims, 4))
    originals = [index[g, "original"] for g in groups]
    between = S[np.ix_(originals, originals)][~np.eye(len(groups), dtype=bool)]
    assert between.max() < THRESHOLD, np.round(np.sort(between)[-3:], 4)
    ids = [str(r.path) for r in corpus.records]
    table = find_near_duplicates(ids, X)
    group_of = dict(zip(table.column("image_id").to_pylist(), table.column("group_id").to_pylist(), strict=True))
    for a, ra in enumerate(corpus.records):  # no predicted pair across photos
        for rb in corpus.records[a + 1:]:
            if str(ra.path) in group_of and group_of[str(ra.path)] == group_of.get(str(rb.path)):
                assert ra.group == rb.group, (ra.path, rb.path)
    assert len(group_of) >= 0.9 * len(ids)
