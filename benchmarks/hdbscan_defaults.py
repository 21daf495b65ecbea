"""HDBSCAN without k (issue 24): the old defaults against :func:`imgclust.cluster.density.hdbscan_params`.

Corpora (labels used only for scoring):

* ``fashion``: the Fashion-MNIST test split, 10,000 images, 10 classes (pixel recipe);
* ``fashion-simclr``: the same images as SimCLR features (``create_deep("simclr", k=10, epochs=10, seed=0,
  device="cpu")`` trained on the test split, ``/tmp/kfeat/simclr_fashion_test.npy``) -> UMAP(10, 20 neighbours),
  the refine flow's deep embedding (:func:`imgclust.deep.methods.refit_recipe`);
* ``digits``: scikit-learn's 1,797 digits, 10 classes (pixel recipe);
* ``fashion5``: the Fashion-MNIST test images of classes 0, 1, 5, 7, 8 (5,000 images, 5 classes; pixel recipe);
* selection set (the rule was chosen on these, never on the corpora above): ``train10k`` a seeded 10,000 of the
  Fashion-MNIST *train* split (pixel recipe), and ``train10k-simclr`` the same images through the encoder
  trained on the test split (the encoder never saw them).

Pixel recipe as the pipeline runs it: pixels / 255 flattened -> IncrementalPCA(50)
(:class:`imgclust.reduce.streaming.StreamingPCA`) -> UMAP(10, 15 neighbours, seed 0) fitted on every row, then
``transform`` of every row (what :meth:`imgclust.models.model.ClusterModel.embed` does). ``--min-dist`` sets UMAP's
min_dist (the pipeline's :class:`imgclust.reduce.streaming.UMAPReducer` default is 0). Embeddings are cached under
``/tmp/hdbscan_defaults/``.

Per corpus: the old defaults (``HDBSCANClusterer(min_cluster_size=50)``, min_samples = min_cluster_size, eom),
the rule, and the k-given reference (:class:`imgclust.cluster.gmm.GaussianMixtureClusterer` at the true k on the same
embedding; 8-run consensus for the deep embedding as in ``refit_recipe``, plain EM for pixels as
``--method gmm``). Columns: clusters, noise share, NMI of all rows (noise its own label), NMI of the non-noise
rows, ACC (noise one more cluster), and NMI / ACC with every noise row given its nearest cluster mean (what the
pipeline does with noise).

``--grid`` prints the exploration on the selection set the rule was chosen from (min_cluster_size as a share of
n, min_samples, eom / leaf, cluster_selection_epsilon in units of the median core distance,
:func:`imgclust.cluster.density.core_distance_scale`); ``--min-dist 0 0.1`` adds UMAP's own default min_dist.

    PYTHONPATH=. .venv/bin/python benchmarks/hdbscan_defaults.py
    PYTHONPATH=. .venv/bin/python benchmarks/hdbscan_defaults.py --grid --corpora train10k train10k-simclr
"""
from __future__ import annotations

import argparse
import datetime as dt
import itertools
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("benchmarks.hdbscan_defaults")

CACHE = Path("/tmp/hdbscan_defaults")
SIMCLR_TEST = Path("/tmp/kfeat/simclr_fashion_test.npy")
SIMCLR_TRAIN = CACHE / "simclr_fashion_train10k.npy"
TRAIN_IDX = CACHE / "fashion_train10k_idx.npy"
FASHION5 = (0, 1, 5, 7, 8)
CORPORA = ("fashion", "fashion-simclr", "digits", "fashion5")
SELECTION = ("train10k", "train10k-simclr")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", nargs="+", default=None, choices=CORPORA + SELECTION,
                   help="default: the four corpora (table) or the selection set (--grid)")
    p.add_argument("--min-dist", type=float, nargs="+", default=[0.0], help="UMAP min_dist values")
    p.add_argument("--grid", action="store_true", help="the exploration grid instead of the table")
    p.add_argument("--seed", type=int, default=0, help="UMAP / GMM seed")
    p.add_argument("--shares", type=float, nargs="+", default=[0.0025, 0.005, 0.01, 0.02],
                   help="--grid: min_cluster_size as a share of the rows")
    p.add_argument("--min-samples", type=int, nargs="+", default=[1, 5, 10, 25, 0],
                   help="--grid: min_samples values (0: = min_cluster_size, hdbscan's default)")
    p.add_argument("--methods", nargs="+", default=["eom", "leaf"], choices=["eom", "leaf"], help="--grid")
    p.add_argument("--epsilon-ratios", type=float, nargs="+", default=[0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0],
                   help="--grid: cluster_selection_epsilon in units of the median core distance (5 neighbours)")
    return p.parse_args(argv)


def load_corpus(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    """``(rows (n, D) float32, labels (n,), kind)``; kind ``pixels`` (needs PCA 50) or ``features``."""
    from imgclust.data.datasets import load_digits_images, load_fashion_mnist

    if name == "digits":
        x, y = load_digits_images()
        return x.reshape(len(x), -1).astype(np.float32) / 255.0, y, "pixels"
    if name in ("fashion", "fashion5", "fashion-simclr"):
        x, y = load_fashion_mnist("test")
        if name == "fashion-simclr":
            if not SIMCLR_TEST.exists():
                raise FileNotFoundError(f"{SIMCLR_TEST} missing: train the simclr encoder first (module docstring)")
            return np.load(SIMCLR_TEST).astype(np.float32), y, "features"
        if name == "fashion5":
            keep = np.isin(y, FASHION5)
            x, y = x[keep], y[keep]
        return x.reshape(len(x), -1).astype(np.float32) / 255.0, y, "pixels"
    # selection set: a seeded 10,000 of the train split (indices written with the simclr features)
    x, y = load_fashion_mnist("train")
    idx = np.load(TRAIN_IDX) if TRAIN_IDX.exists() else np.sort(np.random.default_rng(0).choice(len(x), 10_000,
                                                                                                 replace=False))
    if name == "train10k-simclr":
        if not SIMCLR_TRAIN.exists():
            raise FileNotFoundError(f"{SIMCLR_TRAIN} missing: the test-split encoder's features of train10k")
        return np.load(SIMCLR_TRAIN).astype(np.float32), y[idx], "features"
    return x[idx].reshape(len(idx), -1).astype(np.float32) / 255.0, y[idx], "pixels"


def embed(name: str, min_dist: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """UMAP(10) coordinates ``(n, 10)`` float32 of a corpus, and its labels (cached)."""
    path = CACHE / f"{name}_md{min_dist:g}_seed{seed}.npz"
    if path.exists():
        with np.load(path) as f:
            return f["z"], f["y"]
    from imgclust.reduce.streaming import StreamingPCA, UMAPReducer

    X, y, kind = load_corpus(name)
    t0 = time.perf_counter()
    P, neighbors = (StreamingPCA(n_components=50).fit(X).transform(X), 15) if kind == "pixels" else (X, 20)
    umap = UMAPReducer(n_components=10, n_neighbors=neighbors, min_dist=min_dist, random_state=seed,
                       fit_sample=None).fit(P)
    Z = np.ascontiguousarray(umap.transform(P), dtype=np.float32)
    log.info("%s min_dist %g: UMAP(10, %d neighbours) of %s in %.0f s", name, min_dist, neighbors, X.shape,
             time.perf_counter() - t0)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, z=Z, y=y)
    os.replace(tmp, path)
    return Z, y


def scores(Z: np.ndarray, y: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Clusters, noise share, NMI (all / non-noise / noise to nearest mean), ACC (all / noise to nearest)."""
    from imgclust.cluster.classic import cluster_means
    from imgclust.metrics import cluster_accuracy, nmi

    k = int(labels.max()) + 1
    noise = labels < 0
    out = {"clusters": float(k), "noise": float(noise.mean()), "nmi": nmi(y, labels),
           "nmi_kept": nmi(y[~noise], labels[~noise]) if k > 0 and (~noise).any() else float("nan"),
           "acc": cluster_accuracy(y, labels)}
    if k > 0:
        means = cluster_means(Z, labels, k)
        full = labels.copy()
        if noise.any():
            d = ((Z[noise, None, :] - means[None, :, :]) ** 2).sum(-1)
            full[noise] = d.argmin(1)
        out["nmi_assigned"], out["acc_assigned"] = nmi(y, full), cluster_accuracy(y, full)
    else:
        out["nmi_assigned"] = out["acc_assigned"] = float("nan")
    return out


def run_hdbscan(Z: np.ndarray, *, min_cluster_size: int, min_samples: int | None, method: str,
                epsilon: float) -> np.ndarray:
    import hdbscan

    model = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples,
                            cluster_selection_method=method, cluster_selection_epsilon=epsilon)
    return np.asarray(model.fit(Z).labels_, dtype=np.int64)


def gmm_reference(Z: np.ndarray, k: int, seed: int, deep: bool) -> np.ndarray:
    from imgclust.cluster.gmm import GaussianMixtureClusterer
    from imgclust.deep.methods import N2D_CONSENSUS_RUNS

    gmm = GaussianMixtureClusterer(n_clusters=k, fit_sample=None, random_state=seed,
                                   consensus_runs=N2D_CONSENSUS_RUNS if deep else 1).fit(Z)
    return np.asarray(gmm.predict(Z), dtype=np.int64)


def row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def fmt(s: dict[str, float]) -> list[str]:
    return [f"{s['clusters']:.0f}", f"{100 * s['noise']:.1f} %", f"{s['nmi']:.3f}", f"{s['nmi_kept']:.3f}",
            f"{s['acc']:.3f}", f"{s['nmi_assigned']:.3f}", f"{s['acc_assigned']:.3f}"]


HEAD = ["clusters", "noise", "NMI all", "NMI non-noise", "ACC", "NMI noise->nearest", "ACC noise->nearest"]


def table(args: argparse.Namespace) -> None:
    from imgclust.cluster.classic import HDBSCANClusterer
    from imgclust.cluster.density import params_for

    print(row(["corpus", "UMAP min_dist", "n", "classes", "setting", *HEAD]))
    print(row(["---"] * (5 + len(HEAD))))
    for name, md in itertools.product(args.corpora or CORPORA, args.min_dist):
        Z, y = embed(name, md, args.seed)
        n, k = len(Z), len(np.unique(y))
        old = HDBSCANClusterer(min_cluster_size=50, fit_sample=None, random_state=args.seed).fit(Z).labels_
        t0 = time.perf_counter()
        p = params_for(Z, seed=args.seed)
        new = run_hdbscan(Z, min_cluster_size=p.min_cluster_size, min_samples=p.min_samples,
                          method=p.cluster_selection_method, epsilon=p.cluster_selection_epsilon)
        fit_s = time.perf_counter() - t0  # the rule's core-distance scale included
        ref = gmm_reference(Z, k, args.seed, deep=name.endswith("simclr"))
        rule = (f"rule: mcs {p.min_cluster_size}, ms {p.min_samples}, {p.cluster_selection_method}, "
                f"eps {p.cluster_selection_epsilon:.3f} ({fit_s:.1f} s)")
        for setting, labels in (("old: mcs 50, ms = mcs, eom", old), (rule, new), (f"GMM k = {k}", ref)):
            print(row([name, f"{md:g}", n, k, setting, *fmt(scores(Z, y, np.asarray(labels)))]), flush=True)


def grid(args: argparse.Namespace) -> None:
    from imgclust.cluster.density import core_distance_scale

    shares, methods, ratios = args.shares, args.methods, args.epsilon_ratios
    min_samples = [m or None for m in args.min_samples]
    print(row(["corpus", "UMAP min_dist", "mcs share", "mcs", "min_samples", "method", "epsilon / core", "epsilon",
               *HEAD]))
    print(row(["---"] * (8 + len(HEAD))))
    for name, md in itertools.product(args.corpora or SELECTION, args.min_dist):
        Z, y = embed(name, md, args.seed)
        scale = core_distance_scale(Z)
        for share, ms, method, ratio in itertools.product(shares, min_samples, methods, ratios):
            eps = ratio * scale
            mcs = max(5, round(share * len(Z)))
            labels = run_hdbscan(Z, min_cluster_size=mcs, min_samples=ms, method=method, epsilon=eps)
            print(row([name, f"{md:g}", share, mcs, "mcs" if ms is None else ms, method, ratio, f"{eps:.3f}",
                       *fmt(scores(Z, y, labels))]), flush=True)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    print(f"# HDBSCAN defaults (issue 24)\n\n{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"host {platform.node()}, {os.cpu_count()} CPUs; command: `{' '.join(['python', *sys.argv])}`\n")
    grid(args) if args.grid else table(args)


if __name__ == "__main__":
    main()
