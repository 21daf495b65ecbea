"""Cluster names from words: a tiny CLIP whose text tower is aligned in the test to images of known colours.

The test writes a real open_clip checkpoint (the tiny ViT-B-32 configuration with open_clip's real
tokenizer vocabulary): its image tower is a seeded random init, and its text projection is solved so
that the prompt "a photo of a red." lands exactly on the mean image embedding of the red files (same
for green and blue), while the distractor labels land on random directions. So the right name of each
cluster is known. Stores are built from real PNG/JPEG files through ingest, extraction, fitting and
labelling; the CLI runs in-process.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from imgclust.config import ClusterConfig, ExtractConfig, IngestConfig, Recipe, ReduceConfig
from imgclust.exceptions import ConfigError
from imgclust.extract.backbones import clear_backbone_cache, create_backbone, list_backbones
from imgclust.extract.backbones.openclip_nets import (
    TINY_CLIP_KWARGS,
    OpenClipEntry,
    register_openclip_backbone,
)
from imgclust.extract.backbones.openclip_text import build_text_tower, check_same_weights, weights_digest
from imgclust.extract.backbones.weights import seeded_init
from imgclust.extract.shard import extract_shard
from imgclust.io.manifest import ingest, plan_shards, read_manifest
from imgclust.io.sources import parent_name
from imgclust.io.store import Store
from imgclust.models.labels import label_shard, read_labels
from imgclust.models.model import fit_from_store, promote
from imgclust.models.naming import (
    SUGGESTION_COLUMNS,
    SUGGESTIONS_FILE,
    VOCABULARY_FILE,
    ClusterScorer,
    NamingConfig,
    accept_suggestions,
    read_suggestions,
    read_vocabulary,
    suggest_names,
    suggestions_table,
    write_suggestions,
)
from imgclust.models.report import NAMES_FILE, ReportConfig, build_report, load_cluster_names
from imgclust_cli.main import main

open_clip = pytest.importorskip("open_clip")

NAME = "test-naming-clip"
#: the tiny CLIP of the registry with open_clip's real 49408-token vocabulary and room for the prompts
KWARGS: dict[str, Any] = {**TINY_CLIP_KWARGS,
                          "text_cfg": {**TINY_CLIP_KWARGS["text_cfg"], "vocab_size": 49408, "context_length": 16}}
COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}
DISTRACTORS = ["dog", "receipt", "beach"]
VOCABULARY = "# colours first\nred\ngreen\n\nblue\ndog\nreceipt\nbeach\n"
DAY = dt.date(2026, 12, 1)
SEED = 7
PER_GROUP = 8


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    """The tiny CLIP entry, registered like a built-in (once per process)."""
    if NAME not in list_backbones():
        register_openclip_backbone(NAME, OpenClipEntry("ViT-B-32", None, 32, 32, "tiny CLIP with open_clip's "
                                                       "vocabulary", None, model_kwargs=KWARGS, default_weights="random"))


def _write_corpus(src: Path) -> None:
    """PER_GROUP noisy colour fields per colour, mixed sizes, PNG and JPEG, in a folder named by colour."""
    rng = np.random.default_rng(SEED)
    for colour, rgb in COLOURS.items():
        (src / colour).mkdir(parents=True)
        for i in range(PER_GROUP):
            h, w = (int(v) for v in rng.integers(40, 90, 2))
            arr = np.clip(np.array(rgb)[None, None] + rng.integers(-25, 26, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(src / colour / f"{i}.{'png' if i % 2 else 'jpg'}")


def _aligned_checkpoint(path: Path, src: Path, *, scale: float = 20.0) -> Path:
    """A full CLIP state_dict whose text tower maps each colour's prompt onto that colour's mean image embedding.

    Image tower: seeded random init. Text tower: the projection ``P`` solves ``H @ P = T`` exactly, where
    ``H`` (L, 32) are the pooled text features of the L prompts and ``T`` the wanted embeddings (the colour
    means of the files' image embeddings; seeded random unit vectors for the distractors)."""
    with seeded_init(SEED):
        clip = open_clip.create_model("ViT-B-32", pretrained=None, **KWARGS).eval()
    image = create_backbone(NAME, weights="random", seed=SEED)  # the registry's preprocessing of this entry
    targets = []
    for colour in COLOURS:
        x = torch.stack([image.preprocess(np.asarray(Image.open(f).convert("RGB")))
                         for f in sorted((src / colour).iterdir())])
        with torch.inference_mode():
            emb = clip.encode_image(x, normalize=True).mean(0)
        targets.append(emb / emb.norm())
    noise = torch.from_numpy(np.random.default_rng(SEED).normal(size=(len(DISTRACTORS), 32))).float()
    targets += list(noise / noise.norm(dim=1, keepdim=True))
    T = torch.stack(targets)
    tokens = open_clip.get_tokenizer("ViT-B-32", context_length=16)(
        [f"a photo of a {label}." for label in [*COLOURS, *DISTRACTORS]])
    with torch.no_grad():
        clip.text_projection.copy_(torch.eye(32))
        H = clip.encode_text(tokens)
        clip.text_projection.copy_(torch.linalg.lstsq(H, T).solution)
        clip.logit_scale.fill_(float(np.log(scale)))
        np.testing.assert_allclose(clip.encode_text(tokens, normalize=True).numpy(), T.numpy(), atol=1e-4)
    torch.save(clip.state_dict(), path)
    return path


def _build_store(root: Path, src: Path, extract: ExtractConfig) -> tuple[Store, str]:
    store = Store(root)
    ingest(store, str(src), config=IngestConfig(hash_threads=2), date=DAY)
    specs = plan_shards(store, shard_size=10)
    key = [extract_shard(store, spec, extract) for spec in specs][0]["extractor_key"]
    model = fit_from_store(store, key, recipe=Recipe(reduce=ReduceConfig(n_components=6),
                                                     cluster=ClusterConfig(k=3, seed=0)),
                           extract=extract)
    for spec in specs:
        label_shard(store, model.model_id, key, spec.shard_id, date=DAY)
    promote(store, model.model_id)
    store.write_bytes(VOCABULARY_FILE, VOCABULARY.encode())
    return store, model.model_id


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("naming")
    _write_corpus(root / "src")
    ckpt = _aligned_checkpoint(root / "clip.pth", root / "src")
    clip_store, clip_model = _build_store(root / "clip_store", root / "src", ExtractConfig(
        extractor=NAME, weights=str(ckpt), device="cpu", decode_threads=1, batch_size=8))
    pixel_store, pixel_model = _build_store(root / "pixel_store", root / "src", ExtractConfig(
        extractor="pixels-rgb32", device="cpu", decode_threads=1))
    yield {"root": root, "ckpt": ckpt, "clip": (clip_store, clip_model), "pixels": (pixel_store, pixel_model)}
    clear_backbone_cache()


def _truth(store: Store, model_id: str) -> dict[int, str]:
    """Stable cluster id -> the colour (source folder) most of its members have."""
    folder = {r["image_id"]: parent_name(r["uri"]) for r in read_manifest(store).to_pylist()}
    votes: dict[int, Counter[str]] = {}
    for row in read_labels(store, model_id).to_pylist():
        votes.setdefault(row["cluster_id"], Counter())[folder[row["image_id"]]] += 1
    return {c: v.most_common(1)[0][0] for c, v in votes.items() if c >= 0}


def _rows(store: Store) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(store.read_bytes(SUGGESTIONS_FILE).decode())))


# ---- end to end through the CLI -------------------------------------------------------------------
def test_cli_names_every_cluster_by_its_colour_and_accept_keeps_human_names(
        built: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    store, model_id = built["clip"]
    truth = _truth(store, model_id)
    assert sorted(truth.values()) == sorted(COLOURS)  # the clusters are the colour groups
    assert main(["name-clusters", "--store", str(store.root), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"model {model_id}: names suggested by {NAME} (features/" in out and "--accept" in out
    rows = _rows(store)
    assert tuple(rows[0]) == SUGGESTION_COLUMNS
    assert {int(r["cluster_id"]): r["name"] for r in rows} == truth
    for r in rows:
        assert float(r["confidence"]) > 0.9 and float(r["cosine"]) > 0.99 and float(r["agreement"]) == 1.0
        assert r["runner_up"] in COLOURS and r["runner_up"] != r["name"] and float(r["margin"]) > 0.05
        assert r["model_id"] == model_id and r["backbone"] == NAME
    sizes = Counter(read_labels(store, model_id).column("cluster_id").to_pylist())  # novel rows (-1) are not named
    assert {int(r["cluster_id"]): int(r["members"]) for r in rows} == {c: n for c, n in sizes.items() if c >= 0}

    # the report tables them beside the current names
    first, *others = sorted(truth)
    store.write_bytes(NAMES_FILE, f"cluster_id,name\n{first},my own name\n{others[0]},\n".encode())
    report = build_report(store, model_id, run="named", config=ReportConfig(thumbs_per_cluster=2, thumb_size=16))
    page = store.read_bytes(report["index"]).decode()
    assert "<h2>Suggested names</h2>" in page and "my own name" in page
    for cid in truth:
        assert f"<tr><td>{cid}</td>" in page

    # accept: a person's name stays; unnamed rows (the template's too) are filled
    assert main(["name-clusters", "--store", str(store.root), "--accept", "--backbone", NAME]) == 2  # nothing computed
    assert "--accept copies the suggestions already written" in capsys.readouterr().err
    assert main(["name-clusters", "--store", str(store.root), "--accept", "--min-confidence", "0.5"]) == 0
    assert "(kept: named by a person)" in capsys.readouterr().out
    names = load_cluster_names(store)
    assert names == {first: "my own name", **{c: truth[c] for c in others}}
    again = accept_suggestions(store, model_id)
    assert again["accepted"] == {} and set(again["kept"]) == set(truth)  # idempotent
    store.remove(NAMES_FILE)
    assert accept_suggestions(store, model_id, min_confidence=0.9999)["below"] == sorted(truth)
    assert not store.exists(NAMES_FILE)


def test_store_without_clip_features_needs_a_backbone_which_then_embeds_a_sample(
        built: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    store, model_id = built["pixels"]
    assert main(["name-clusters", "--store", str(store.root)]) == 2
    err = capsys.readouterr().err
    assert "not a CLIP-family backbone" in err and "the store has no CLIP features" in err and "--backbone" in err
    config = NamingConfig(backbone=NAME, weights=str(built["ckpt"]), sample_per_cluster=5, device="cpu")
    result = suggest_names(store, model_id, config)
    assert result.source == "sample of <= 5 members per cluster"
    assert {s.cluster_id: s.name for s in result.suggestions} == _truth(store, model_id)
    assert all(s.members == 5 and s.agreement == 1.0 for s in result.suggestions)
    with pytest.raises(ConfigError, match="not a CLIP-family"):
        suggest_names(store, model_id, NamingConfig(backbone="pixels"))
    # once the store also holds CLIP features, the error names them, and they can be used
    cfg = ExtractConfig(extractor=NAME, weights=str(built["ckpt"]), device="cpu", decode_threads=1)
    key = [extract_shard(store, spec, cfg) for spec in plan_shards(store, shard_size=10)][0]["extractor_key"]
    with pytest.raises(ConfigError, match=f"pass --extractor-key {key}"):
        suggest_names(store, model_id, NamingConfig(device="cpu"))
    with pytest.raises(ConfigError, match="pass that file with --weights PATH"):
        suggest_names(store, model_id, NamingConfig(extractor_key=key, device="cpu"))
    named = suggest_names(store, model_id, NamingConfig(extractor_key=key, weights=str(built["ckpt"]), device="cpu"))
    assert named.source == f"features/{key}" and {s.cluster_id: s.name for s in named.suggestions} == _truth(
        store, model_id)


def test_towers_of_different_weights_are_refused(built: dict[str, Any], tmp_path: Path) -> None:
    store, model_id = built["clip"]
    other = _aligned_checkpoint(tmp_path / "other.pth", built["root"] / "src", scale=50.0)
    with pytest.raises(ConfigError, match="meaningless"):
        suggest_names(store, model_id, NamingConfig(weights=str(other), device="cpu"))
    with pytest.raises(ConfigError, match="meaningless"):
        check_same_weights("random-seed0", "random-seed1", what="x")
    check_same_weights(f"pretrained:open_clip:ViT-B-32:sha256:{'a' * 64}", f"file:sha256:{'a' * 64}", what="x")
    assert weights_digest("random-seed3") == "random-seed3"


# ---- vocabulary, scoring, files -----------------------------------------------------------------------
def test_vocabulary_errors(built: dict[str, Any], tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    with pytest.raises(ConfigError, match=r"no vocabulary: .*labels_vocabulary.txt.*--vocabulary PATH"):
        read_vocabulary(store)
    for text, message in (("", "has 0 label"), ("# only a comment\n\n", "has 0 label"), ("cat\n", "has 1 label"),
                          ("cat\ndog\nCat \n", r"'Cat' on line 3 repeats line 1")):
        store.write_bytes(VOCABULARY_FILE, text.encode())
        with pytest.raises(ConfigError, match=message):
            read_vocabulary(store)
    (tmp_path / "v.txt").write_text("\ufeffcat\n  dog  \n# no\nbird\n", encoding="utf-8")
    assert read_vocabulary(store, str(tmp_path / "v.txt")) == ["cat", "dog", "bird"]
    with pytest.raises(ConfigError, match="no vocabulary"):
        read_vocabulary(store, str(tmp_path / "missing.txt"))
    clip_store, model_id = built["clip"]
    with pytest.raises(ConfigError, match="no vocabulary"):
        suggest_names(clip_store, model_id, NamingConfig(vocabulary=str(tmp_path / "missing.txt")))
    with pytest.raises(ConfigError, match="placeholder"):
        NamingConfig(templates=("a photo",))


def test_scorer_softmax_margin_agreement_and_novel_rows() -> None:
    text = np.eye(3, dtype=np.float32)
    scorer = ClusterScorer(["a", "b", "c"], text, logit_scale=10.0)
    X = np.array([[2, 1, 0], [1, 0, 0], [0, 3, 0], [0, 0, 5]], np.float32)  # unnormalised on purpose
    scorer.add(np.array([0, 0, 0, -1]), X)
    (s,) = scorer.suggestions()
    m = (X[:3] / np.linalg.norm(X[:3], axis=1, keepdims=True)).mean(0)
    cos = m / np.linalg.norm(m)
    p = np.exp(10 * cos) / np.exp(10 * cos).sum()
    assert (s.cluster_id, s.name, s.runner_up, s.members) == (0, "a", "b", 3)
    assert s.confidence == pytest.approx(p[0]) and s.runner_up_confidence == pytest.approx(p[1])
    assert s.margin == pytest.approx(cos[0] - cos[1]) and s.agreement == pytest.approx(2 / 3)
    with pytest.raises(ConfigError, match="not of one CLIP model"):
        scorer.add(np.array([0]), np.ones((1, 4), np.float32))


def test_suggestions_file_round_trip_and_other_model(built: dict[str, Any]) -> None:
    store, model_id = built["clip"]
    result = suggest_names(store, model_id, NamingConfig(device="cpu", templates=("a photo of a {label}.",) * 2))
    write_suggestions(store, result)
    rows = read_suggestions(store)
    assert rows is not None and [r["cluster_id"] for r in rows] == [s.cluster_id for s in result.suggestions]
    assert rows[0]["confidence"] == pytest.approx(result.suggestions[0].confidence, abs=1e-4)
    assert suggestions_table(store, "another-model") is None
    with pytest.raises(ConfigError, match="was made for model"):
        accept_suggestions(store, "another-model")
    with pytest.raises(ConfigError, match=r"--min-confidence must be in \[0, 1\]"):
        accept_suggestions(store, model_id, min_confidence=1.5)


# ---- the text tower -----------------------------------------------------------------------------------
def test_text_tower_is_the_seeded_clip_text_side_and_refuses_what_has_none() -> None:
    tower = build_text_tower(NAME, weights="random", seed=3)
    assert tower.weights_id == create_backbone(NAME, weights="random", seed=3).weights_id == "random-seed3"
    with seeded_init(3):
        clip = open_clip.create_model("ViT-B-32", pretrained=None, **KWARGS).eval()
    prompts = ["a photo of a cat.", "a photo of a dog."]
    tokens = open_clip.get_tokenizer("ViT-B-32", context_length=16)(prompts)
    with torch.inference_mode():
        expected = clip.encode_text(tokens, normalize=True).numpy()
    np.testing.assert_allclose(tower.encode(prompts), expected, rtol=1e-5, atol=1e-6)
    assert tower.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # CLIP's initial temperature
    two = tower.embed_labels(["cat"], ["a photo of a {label}.", "a {label}."])
    mean = tower.encode(["a photo of a cat.", "a cat."]).mean(0)
    np.testing.assert_allclose(two[0], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="no '\\{label\\}' placeholder"):
        tower.embed_labels(["cat"], ["a photo"])
    with pytest.raises(ConfigError, match="not a CLIP-family"):
        build_text_tower("pixels")
    with pytest.raises(ConfigError, match="embeds only 64"):  # the registry's tiny test CLIP: 64-token vocabulary
        build_text_tower("openclip-test-vit")


def test_pretrained_text_tower_comes_from_the_cached_hub_file_of_the_image_tower(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """"pretrained" on both sides reads one Hugging Face cache file (laid out as huggingface_hub caches it)."""
    from safetensors.torch import save_file

    name, repo = "test-naming-clip-hub", "imgclust-tests/naming-clip"
    if name not in list_backbones():
        register_openclip_backbone(name, OpenClipEntry("ViT-B-32", None, 32, 32, "tiny CLIP with cached weights",
                                                       repo, model_kwargs=KWARGS))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with seeded_init(11):
        clip = open_clip.create_model("ViT-B-32", pretrained=None, **KWARGS).eval()
    folder = tmp_path / "hf" / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()},
              str(folder / "snapshots" / ("0" * 40) / "open_clip_model.safetensors"))
    clear_backbone_cache()
    image = create_backbone(name)
    tower = build_text_tower(name)
    assert tower.weights_id == image.weights_id and tower.weights_id.startswith("pretrained:open_clip:ViT-B-32:sha256:")
    check_same_weights(image.weights_id, tower.weights_id, what=name)
    tokens = open_clip.get_tokenizer("ViT-B-32", context_length=16)(["a photo of a cat."])
    with torch.inference_mode():
        expected = clip.encode_text(tokens, normalize=True).numpy()
    np.testing.assert_allclose(tower.encode(["a photo of a cat."]), expected, rtol=1e-5, atol=1e-6)
    clear_backbone_cache()


def test_tasks_write_the_suggestions_and_return_the_table(built: dict[str, Any], prefect_api: str) -> None:
    from prefect import flow

    from tasks.naming import suggest_names_task, suggestions_table_task

    store, model_id = built["clip"]

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.artifacts import publish_label_summary

    @flow(name="naming-test")
    def naming(url: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        out = suggest_names_task(url, model_id, {"device": "cpu", "templates": ["a photo of a {label}."]})
        table = suggestions_table_task(url, model_id)
        sizes = {int(r["cluster_id"]): 1 for r in table}
        publish_label_summary({"model_id": model_id, "sizes": sizes}, {}, table)  # as the nightly run does
        return out, table

    state = naming(str(store.root), return_state=True)
    out, table = state.result()
    assert out["path"] == SUGGESTIONS_FILE and out["backbone"] == NAME and out["source"].startswith("features/")
    assert table == out["rows"] and {r["cluster_id"]: r["name"] for r in table} == _truth(store, model_id)
    with get_client(sync_client=True) as client:  # the nightly table shows the suggestions beside the names
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    nightly = next(a for a in artifacts if a.key == "auto-label-clusters")
    rows = nightly.data if isinstance(nightly.data, list) else json.loads(str(nightly.data))
    assert {int(r["cluster_id"]): r["suggested name"].split(" (")[0] for r in rows} == _truth(store, model_id)
