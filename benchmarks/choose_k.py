"""Automatic choice of k (issue 24, ``--k auto``): does :func:`imgclust.cluster.choose_k.choose_k` find the number of kinds?

Corpora (labels used only for scoring):

* ``fashion``: the Fashion-MNIST test split, 10,000 images, 10 classes;
* ``digits``: scikit-learn's 1,797 digits (8x8), 10 classes;
* ``fashion5``: the Fashion-MNIST test images of classes 0 T-shirt/top, 1 trouser, 5 sandal, 7 sneaker,
  8 bag (5,000 images, 5 classes);
* ``pooled``: all 1,797 digits (resized 8x8 -> 28x28, PIL bilinear) + a seeded 2,000 of the Fashion test
  split, their labels kept apart: 20 classes;
* ``simclr`` (when ``/tmp/kfeat/simclr_fashion_test.npy`` exists): SimCLR features of the Fashion test split
  trained by another session, -> UMAP(10, n_neighbors 20).

Pixel recipe as the pipeline runs it: pixels / 255 flattened -> IncrementalPCA(50)
(:class:`imgclust.reduce.streaming.StreamingPCA`) -> UMAP(10, n_neighbors 15) fitted with the recipe's seed, then
``transform`` of every row (what :meth:`imgclust.models.model.ClusterModel.embed` does); embeddings are cached under
``/tmp/choose_k/``. Per corpus, UMAP seed and clusterer (``gmm``, the demo's, and ``kmeans``):

* the sweep (:func:`choose_k`): chosen k, and NMI at the chosen k and at the true number of classes (the same
  clusterer and seed fitted on every row of the corpus);
* ``--rule NAME``: the same sweep with another candidate rule of :data:`imgclust.cluster.choose_k.RULES`;
* ``--dense``: the candidate criteria at every k of ``2..--dense-kmax`` and the k each candidate rule would pick
  there, with the NMI (the table the rule was chosen from). Rules are ranked by the runs meeting both goals of
  issue 24 (k within 20 % of the number of classes, NMI within 0.02 of the NMI at that number), then by the runs
  meeting the NMI goal.

    PYTHONPATH=. .venv/bin/python benchmarks/choose_k.py                  # all corpora, gmm + kmeans, seeds 0,1
    PYTHONPATH=. .venv/bin/python benchmarks/choose_k.py --rule finest-stable
    PYTHONPATH=. .venv/bin/python benchmarks/choose_k.py --dense          # candidate rules, every k in 2..30
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("benchmarks.choose_k")

CACHE = Path(os.environ.get("CHOOSE_K_CACHE", "/tmp/choose_k"))
KFEAT = Path("/tmp/kfeat")
FASHION5 = (0, 1, 5, 7, 8)
CORPORA = ("fashion", "digits", "fashion5", "pooled", "simclr")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", default=",".join(CORPORA), help="subset of %(default)s")
    p.add_argument("--methods", default="gmm,kmeans", help="clusterers (default %(default)s)")
    p.add_argument("--seeds", default="0,1", help="UMAP / sweep seeds (default %(default)s)")
    p.add_argument("--max-rows", type=int, default=10_000, help="choose_k's max_rows (default %(default)s)")
    p.add_argument("--space", choices=("umap", "pca"), default="umap",
                   help="umap: PCA(50) -> UMAP(10) (the demo's space); pca: PCA(50) only, the space of `imgclust run`'s "
                        "default recipe (k-means on PCA) (default %(default)s)")
    p.add_argument("--rule", default=None, help="sweep with this candidate rule instead of choose_k's RULE")
    p.add_argument("--dense", action="store_true", help="score every k of the range and compare candidate rules")
    p.add_argument("--dense-kmax", type=int, default=30, help="upper end of the dense range (default %(default)s)")
    return p.parse_args(argv)


# ---- corpora and embeddings -------------------------------------------------------------------------
def load_corpus(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(features (n, D) float32, labels (n,) int64)`` of a corpus: pixels / 255, or the SimCLR features."""
    from imgclust.data.datasets import load_digits_images, load_fashion_mnist

    if name == "simclr":
        return (np.load(KFEAT / "simclr_fashion_test.npy").astype(np.float32),
                np.load(KFEAT / "fashion_test_labels.npy").astype(np.int64))
    if name == "digits":
        x, y = load_digits_images()
    elif name in ("fashion", "fashion5"):
        x, y = load_fashion_mnist("test")
        if name == "fashion5":
            keep = np.isin(y, FASHION5)
            x, y = x[keep], y[keep]
    elif name == "pooled":
        from PIL import Image

        xd, yd = load_digits_images()
        xd = np.stack([np.asarray(Image.fromarray(im).resize((28, 28), Image.Resampling.BILINEAR)) for im in xd])
        xf, yf = load_fashion_mnist("test")
        idx = np.sort(np.random.default_rng(12345).choice(len(xf), 2000, replace=False))  # fixed across seeds
        x, y = np.concatenate([xd, xf[idx]]), np.concatenate([yd, yf[idx] + 10])
    else:
        raise ValueError(f"unknown corpus {name!r}; choose from {CORPORA}")
    return x.reshape(len(x), -1).astype(np.float32) / 255.0, y.astype(np.int64)


SPACE = "umap"
"""The clustering space of this run (``--space``): ``umap`` or ``pca``."""


def embed(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The clustering space of a corpus (cached) and its labels: ``(n, 10)`` UMAP, or ``(n, 50)`` PCA with
    ``--space pca`` (the SimCLR features as they are)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / (f"{name}_seed{seed}.npz" if SPACE == "umap" else f"{name}_pca_seed{seed}.npz")
    if path.exists():
        with np.load(path) as f:
            return f["Z"], f["y"]
    from imgclust.reduce.streaming import StreamingPCA, UMAPReducer

    X, y = load_corpus(name, seed)
    t0 = time.perf_counter()
    if name == "simclr":
        P, neighbors = X, 20
    else:
        P, neighbors = StreamingPCA(n_components=50).fit(X).transform(X), 15
    if SPACE == "pca":
        np.savez(path, Z=np.ascontiguousarray(P, dtype=np.float32), y=y)
        return np.ascontiguousarray(P, dtype=np.float32), y
    umap = UMAPReducer(n_components=10, n_neighbors=neighbors, random_state=seed, fit_sample=50_000).fit(P)
    Z = np.ascontiguousarray(umap.transform(P), dtype=np.float32)
    log.info("embedded %s seed %d: %s in %.0f s", name, seed, Z.shape, time.perf_counter() - t0)
    np.savez(path, Z=Z, y=y)
    return Z, y


# ---- measurements ------------------------------------------------------------------------------------------
def nmi_at(Z: np.ndarray, y: np.ndarray, k: int, method: str, seed: int) -> float:
    """NMI of the clusterer with ``k`` clusters fitted (seed ``seed``) on every row of ``Z``."""
    from imgclust.cluster.choose_k import _make_clusterer, _one_thread
    from imgclust.metrics import nmi

    with _one_thread():
        return nmi(y, _make_clusterer(method, k, seed).fit(Z).predict(Z))


def dense(name: str, seed: int, method: str, k_max: int) -> dict[str, Any]:
    """Every candidate criterion and the NMI at every k in ``2..k_max`` (cached as JSON)."""
    import json

    from imgclust.cluster.choose_k import _one_thread, score_k
    from imgclust.metrics import nmi

    path = CACHE / f"dense2_{name}{'_pca' if SPACE == 'pca' else ''}_seed{seed}_{method}_k{k_max}.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    Z, y = embed(name, seed)
    t0 = time.perf_counter()
    ks, rows = list(range(2, k_max + 1)), []
    for k in ks:
        with _one_thread():
            scores, labels = score_k(Z, k, method=method, seed=seed,  # type: ignore[arg-type]
                                     criteria=("stability", "null_stability", "silhouette", "bic"))
        scores["nmi"] = nmi(y, labels)
        rows.append(scores)
        log.info("dense %s seed %d %s k=%d: %s", name, seed, method, k,
                 ", ".join(f"{c} {v:.4g}" for c, v in scores.items()))
    out = {"ks": ks, "scores": {c: [r[c] for r in rows] for c in rows[0]}, "n_true": int(np.unique(y).size),
           "seconds": time.perf_counter() - t0}
    path.write_text(json.dumps(out))
    return out


def header(args: argparse.Namespace, argv: list[str] | None) -> None:
    cmd = " ".join(["PYTHONPATH=. .venv/bin/python benchmarks/choose_k.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"\n{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, host {platform.node()}, "
          f"{os.cpu_count()} CPUs (shared), command: `{cmd}`\n")


def report_dense(args: argparse.Namespace, corpora: list[str], methods: list[str], seeds: list[int]) -> None:
    """Per corpus and method, the k and NMI each candidate rule picks from the dense scores."""
    from imgclust.cluster.choose_k import RULES, apply_rule

    print(f"Candidate rules on every k in 2..{args.dense_kmax}: chosen k (NMI there; NMI at the true k)\n")
    rules = list(RULES)
    print("| corpus | classes | method | seed | " + " | ".join(rules) + " |")
    print("|---|---|---|---|" + "---|" * len(rules))
    hits: dict[str, list[tuple[bool, bool]]] = {r: [] for r in rules}
    for name in corpora:
        for method in methods:
            for seed in seeds:
                d = dense(name, seed, method, args.dense_kmax)
                ks, sc, n_true = d["ks"], d["scores"], d["n_true"]
                nmi_true = sc["nmi"][ks.index(n_true)] if n_true in ks else float("nan")
                cells = []
                for r in rules:
                    if (r == "bic" and method != "gmm") or (r.startswith("clest") and "null_stability" not in sc):
                        cells.append("-")
                        continue
                    k, _, _ = apply_rule(ks, sc, r)
                    v = sc["nmi"][ks.index(k)]
                    ok_k, ok_n = abs(k - n_true) <= 0.2 * n_true, v >= nmi_true - 0.02
                    hits[r].append((ok_k, ok_n))
                    cells.append(f"{k} ({v:.3f}){'' if ok_k and ok_n else ' x'}")
                print(f"| {name} | {n_true} | {method} | {seed} | " + " | ".join(cells) + f" | (true k: {nmi_true:.3f})")
    print("\nRule ranking (runs meeting both goals / k within 20% / NMI within 0.02):\n")
    for r in rules:
        h = hits[r]
        print(f"- {r}: {sum(a and b for a, b in h)}/{len(h)} both, {sum(a for a, _ in h)} k, {sum(b for _, b in h)} NMI")
    print(f"\nPer-k criteria (seed {seeds[0]})\n")
    for name in corpora:
        for method in methods:
            d = dense(name, seeds[0], method, args.dense_kmax)
            names = [c for c in d["scores"] if not (c == "bic" and method != "gmm")]
            print(f"{name} / {method}:\n")
            print("| k | " + " | ".join(names) + " |")
            print("|---|" + "---|" * len(names))
            for i, k in enumerate(d["ks"]):
                print(f"| {k} | " + " | ".join(f"{d['scores'][c][i]:.4g}" for c in names) + " |")
            print()


def report_sweep(args: argparse.Namespace, corpora: list[str], methods: list[str], seeds: list[int]) -> None:
    """The rule as :func:`choose_k` runs it: chosen k, NMI there and at the true k."""
    import imgclust.cluster.choose_k as ck
    from imgclust.cluster.choose_k import choose_k

    if args.rule is not None:  # compare a candidate in the sweep as it runs (coarse grid, then fine)
        if args.rule not in ck.RULES:
            raise SystemExit(f"--rule must be one of {sorted(ck.RULES)}")
        ck.RULE = args.rule
    RULE = ck.RULE

    print(f"choose_k (rule {RULE!r}, max_rows {args.max_rows}): chosen k; NMI at the chosen k and at the true k "
          "(same clusterer and seed, fitted on every row); goal: k within 20% and NMI within 0.02\n")
    print("| corpus | rows | classes | method | seed | k range | chosen k | NMI chosen | NMI true k | goals | "
          "sweep s | k's scored |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    tally: list[tuple[bool, bool, float]] = []
    for name in corpora:
        for method in methods:
            for seed in seeds:
                Z, y = embed(name, seed)
                n_true = int(np.unique(y).size)
                sw = choose_k(Z, method=method, max_rows=args.max_rows, seed=seed)  # type: ignore[arg-type]
                v_c = nmi_at(Z, y, sw.chosen, method, seed)
                v_t = nmi_at(Z, y, n_true, method, seed)
                ok_k, ok_n = abs(sw.chosen - n_true) <= 0.2 * n_true, v_c >= v_t - 0.02
                goals = "both" if ok_k and ok_n else ("k only" if ok_k else ("NMI only" if ok_n else "neither"))
                print(f"| {name} | {len(y)} | {n_true} | {method} | {seed} | {sw.ks[0]}..{sw.ks[-1]} | {sw.chosen} | "
                      f"{v_c:.3f} | {v_t:.3f} | {goals} | {sw.seconds:.0f} | {len(sw.ks)} |", flush=True)
                log.info("%s %s seed %d: %s", name, method, seed, sw.reason)
                tally.append((ok_k, ok_n, v_t - v_c))
    print(f"\nRuns meeting both goals: {sum(a and b for a, b, _ in tally)}/{len(tally)}; k within 20 %: "
          f"{sum(a for a, _, _ in tally)}; NMI within 0.02: {sum(b for _, b, _ in tally)}; largest NMI shortfall "
          f"{max(d for _, _, d in tally):.3f}")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("numba", "umap", "imgclust.cluster.gmm", "imgclust.cluster.classic", "imgclust.progress"):
        logging.getLogger(name).setLevel(logging.WARNING)
    args = parse_args(argv)
    global SPACE
    SPACE = args.space
    corpora = [c for c in args.corpora.split(",") if c and (c != "simclr" or (KFEAT / "simclr_fashion_test.npy").exists())]
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    header(args, argv)
    if args.dense:
        report_dense(args, corpora, methods, seeds)
    else:
        report_sweep(args, corpora, methods, seeds)


if __name__ == "__main__":
    main()
