"""``imgclust run`` without ``--k`` on real PNG files: the sweep chooses k and says how (summary, ``model.json``,
the Prefect artifact, the report), the cluster tree is saved and browsable (``imgclust labels --level``), and
HDBSCAN's noise rows keep their nearest cluster with a low confidence."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgclust.data.datasets import load_digits_images, write_image_folder
from imgclust.io.store import Store
from imgclust_cli.main import main

pytestmark = pytest.mark.integration

CLASSES = (0, 1, 4, 6)
"""Four digits: a corpus whose number of kinds the user is not told."""


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> dict[str, Any]:
    """One ``imgclust run`` without ``--k`` on the four digits' PNG files (real files, the CLI, a real Prefect API,
    a local Dask cluster of one worker)."""
    root = tmp_path_factory.mktemp("auto_k")
    images, labels = load_digits_images()
    keep = np.isin(labels, CLASSES)
    names = [f"digit{c}" for c in range(10)]
    write_image_folder(images[keep], labels[keep], names, root / "src")
    for name in names:  # write_image_folder makes every class folder; the corpus holds four
        folder = root / "src" / name
        if not any(folder.iterdir()):
            folder.rmdir()
    store = root / "store"
    code = main(["run", str(root / "src"), "--store", str(store), "--extractor", "pixels", "--pca", "20",
                 "--truth", "parent_dir", "--workers", "1", "--json"])
    assert code == 0
    model_id = Store(store).read_bytes("models/CURRENT").decode().strip()
    return {"store": store, "model_id": model_id, "n": int(keep.sum()), "root": root}


def test_run_without_k_chooses_k_and_records_the_sweep(auto_run: dict[str, Any]) -> None:
    info = Store(auto_run["store"]).read_json(f"models/{auto_run['model_id']}/model.json")
    sweep = info["k_sweep"]
    assert info["cluster"]["k"] == "auto"  # the recipe asked: a refit chooses again
    assert sweep["chosen"] == info["n_clusters"] and sweep["chosen"] in sweep["ks"]
    assert 3 <= sweep["chosen"] <= 6, sweep  # four well separated digits
    assert sweep["criterion"] in sweep["scores"] and sweep["rule"] and str(sweep["chosen"]) in sweep["reason"]
    assert all(len(v) == len(sweep["ks"]) for v in sweep["scores"].values())
    from imgclust_cli.main import _k_choice  # the run summary's "clusters" line

    said = _k_choice(str(auto_run["store"]), auto_run["model_id"])
    assert said.startswith(f"{sweep['chosen']} of 2..") and "by silhouette" in said
    metrics = Store(auto_run["store"]).read_json(f"models/{auto_run['model_id']}/metrics.json")
    assert metrics["n_clusters"] == sweep["chosen"] and metrics["nmi"] > 0.6, metrics.get("nmi")


def test_the_sweep_is_a_prefect_artifact(auto_run: dict[str, Any]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["k-sweep"])))
    mine = [a for a in artifacts if auto_run["model_id"] in (a.description or "")]
    assert len(mine) == 1
    rows = mine[0].data if isinstance(mine[0].data, list) else json.loads(str(mine[0].data))
    sweep = Store(auto_run["store"]).read_json(f"models/{auto_run['model_id']}/model.json")["k_sweep"]
    assert [r["k"] for r in rows] == sweep["ks"] and [r["k"] for r in rows if r["chosen"]] == [sweep["chosen"]]


def test_labels_at_a_coarser_level_without_refit(auto_run: dict[str, Any], capsys: pytest.CaptureFixture[str]
                                                  ) -> None:
    store, out = str(auto_run["store"]), auto_run["root"] / "level2.csv"
    assert main(["labels", "--store", store, "--level", "2", "--out", str(out)]) == 0
    assert "level 2" in capsys.readouterr().out
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == auto_run["n"]
    coarse = {int(r["cluster_id"]) for r in rows} - {-1}
    assert len(coarse) == 2
    fine_to_coarse: dict[int, set[int]] = {}
    for r in rows:
        fine_to_coarse.setdefault(int(r["fine_cluster_id"]), set()).add(int(r["cluster_id"]))
    assert all(len(v) == 1 for v in fine_to_coarse.values())  # a level merges whole clusters
    n_clusters = Store(store).read_json(f"models/{auto_run['model_id']}/model.json")["n_clusters"]
    assert main(["labels", "--store", store, "--level", str(n_clusters + 1)]) == 2
    assert "1.." in capsys.readouterr().err  # the valid range


def test_the_report_shows_the_sweep_and_the_tree(auto_run: dict[str, Any]) -> None:
    from imgclust.models.report import build_report

    store = Store(auto_run["store"])
    out = build_report(store, auto_run["model_id"], run="auto-k", names={})
    assert "reports/auto-k/k_sweep.png" in out["files"] and "reports/auto-k/tree.png" in out["files"]
    page = store.read_bytes(out["index"]).decode()
    assert "Number of clusters" in page and "Cluster tree" in page and "--level" in page


def test_hdbscan_noise_keeps_its_nearest_cluster_with_low_confidence(tmp_path: Path) -> None:
    from imgclust.batches import as_batch_source
    from imgclust.config import ClusterConfig, Recipe, ReduceConfig
    from imgclust.models.model import NOISE_CONFIDENCE, fit_model

    images, _ = load_digits_images()
    X = images.reshape(len(images), -1).astype(np.float32) / 255.0
    model = fit_model(as_batch_source(X, 512), extractor_key="pixels",
                      recipe=Recipe(reduce=ReduceConfig(n_components=20),
                                    cluster=ClusterConfig(method="hdbscan", min_cluster_size=15, seed=0)))
    a = model.assign(X)
    noise = a.raw < 0
    assert noise.any() and model.meta["noise_share"] > 0
    assert (a.cluster_id[noise & ~a.is_novel] >= 0).all()  # noise that is not novel still gets a cluster
    assert (a.confidence[noise] <= NOISE_CONFIDENCE + 1e-6).all()
    assert model.meta["hdbscan"]["min_cluster_size"] == 15  # given: that size with HDBSCAN's own other defaults
    assert model.meta["hdbscan"]["cluster_selection_method"] == "eom"
    assert np.median(a.confidence[noise]) < np.median(a.confidence[~noise])
    Z = model.embed(X[noise])
    nearest = ((Z[:, None, :] - model.centroids[None]) ** 2).sum(-1).argmin(1)
    kept = ~a.is_novel[noise]
    assert (a.cluster_id[noise][kept] == model.stable_ids[nearest][kept]).all()


def test_a_refit_with_another_k_keeps_ids_and_records_splits(auto_run: dict[str, Any]) -> None:
    """The next recluster chooses (or is given) another k: the clusters that persist keep their stable ids and the
    lineage says which old cluster split into which new ones."""
    from imgclust.config import ClusterConfig, ExtractConfig, Recipe, ReduceConfig
    from imgclust.models.recluster import refit_with_lineage

    store = Store(auto_run["store"])
    previous = store.read_json(f"models/{auto_run['model_id']}/model.json")
    finer = previous["n_clusters"] + 3
    model = refit_with_lineage(store, previous["extractor_key"],
                               recipe=Recipe(reduce=ReduceConfig(n_components=20),
                                             cluster=ClusterConfig(k=finer)), extract=ExtractConfig(extractor="pixels"),
                               previous_model_id=auto_run["model_id"])
    lineage = model.meta["lineage"]
    assert model.n_clusters == finer
    assert len(lineage["matched"]) >= previous["n_clusters"] - 1  # most old clusters live on under their ids
    assert set(lineage["matched"].values()) <= set(range(previous["n_clusters"]))  # the first model's ids: 0..k-1
    assert lineage["splits"] and len(lineage["new_ids"]) >= 1  # the extra clusters are splits with new ids
    assert min(lineage["new_ids"]) >= previous["n_clusters"]


def test_a_novelty_recluster_keeps_k_auto_from_the_previous_count_up(tmp_path: Path) -> None:
    from imgclust.config import ClusterConfig
    from imgclust.models.novelty_night import cluster_config_for_novelty

    store = Store(tmp_path)
    store.write_json("models/m1/model.json", {"model_id": "m1", "n_clusters": 5})
    store.write_json("novelty/m1/date=2026-12-01/candidates.json",
                     {"model_id": "m1", "date": "2026-12-01", "novel": 80, "candidates": [{"candidate": 0}]})
    auto = cluster_config_for_novelty(store, "m1", ClusterConfig(k_max=5))
    assert (auto.k, auto.k_min, auto.k_max) == ("auto", 6, 6)  # chosen, from 5 clusters + 1 candidate up
    assert cluster_config_for_novelty(store, "m1", ClusterConfig(k=7)).k == 8  # a given k grows by the candidates
    hdb = ClusterConfig(method="hdbscan")
    assert cluster_config_for_novelty(store, "m1", hdb) == hdb


def test_the_report_says_how_hdbscan_found_its_clusters() -> None:
    from imgclust.models.report_model import k_choice_section

    info = {"n_clusters": 13, "noise_share": 0.0006, "cluster": {"method": "hdbscan", "k": "auto"},
            "hdbscan": {"min_cluster_size": 18, "min_samples": 5, "cluster_selection_method": "leaf",
                        "cluster_selection_epsilon": 0.4297}}
    written: dict[str, bytes] = {}
    html = "".join(k_choice_section(info, written.__setitem__, lambda img: b""))
    assert "HDBSCAN found 13 clusters" in html and "0.1% of the fitted images were noise" in html
    assert "cluster_selection_epsilon 0.43" in html and not written  # no sweep, no picture
    given = "".join(k_choice_section({"cluster": {"method": "kmeans", "k": 8}}, written.__setitem__, lambda i: b""))
    assert "k=8 was given" in given
