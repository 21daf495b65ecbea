"""Choosing a multi-view consensus: pool the GMM partitions of several encoders (and the pixels) before the cut.

Runs on the seeded 10,000-image subset of the Fashion-MNIST **train** split (never the test split that
``benchmarks/quality.py`` scores). Each *view* is a feature extractor and a seed: ``pixels:S`` (IPCA(50) of
the raw pixels), ``hog:S`` (IPCA(50) of the library's 1764-d HOG features), ``scae:S`` (the 50-d F layer of the symmetric conv AE of seeds/003 trained ``--epochs``
epochs from seed S), ``convae:S`` (the ConvAE embedding of seeds/004 stage 1). Every view is mapped by
UMAP (10-d, 20 neighbours, min_dist 0, seed S: N2D's settings) and clustered by ``--runs`` single EM runs
of a full-covariance GMM. The script then prints, for every *combination* of views, ACC / NMI of the
evidence-accumulation consensus (Fred & Jain, TPAMI 2005) of all their partitions pooled, with the
library's outlier-aware cut (``min_cluster_fraction=MIN_CLUSTER_FRACTION``, 0.1) and with the plain cut (0), so one sees
what a second encoder seed, or the pixel view, adds, and what the cut changes.

Per-view partitions are cached in ``--cache`` (one ``.npz`` a view, keyed by view, subset and epochs),
so new combinations cost only the consensus.

    .venv/bin/python benchmarks/view_ensemble.py --views pixels:0,scae:0,scae:1,scae:2,convae:0 \\
        --combos "scae:0+scae:1+scae:2;pixels:0+scae:0+scae:1+scae:2"
"""
from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np
from train_subset import add_subset_args, train_subset

log = logging.getLogger("benchmarks.view_ensemble")


def view_partitions(view: str, x: np.ndarray, args: argparse.Namespace) -> tuple[np.ndarray, float]:
    """``(n, runs)`` GMM partitions of ``view`` on images ``x`` and the seconds they took (cached)."""
    path = os.path.join(args.cache, f"{view.replace(':', '_')}_n{len(x)}_e{args.epochs}_r{args.runs}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            return z["partitions"], float(z["seconds"])
    import torch

    from imgclust.cluster.gmm import GaussianMixtureClusterer
    from imgclust.reduce.streaming import StreamingPCA, UMAPReducer

    name, seed = view.split(":")
    t0 = time.perf_counter()
    if name == "pixels":
        flat = x.reshape(len(x), -1).astype(np.float32) / 255.0
        feats = StreamingPCA(n_components=50).fit(flat).transform(flat)
    elif name == "hog":
        import torch as _torch

        from imgclust.extract.backbones.registry import create_backbone

        hog = create_backbone("hog", device="cpu")
        batch = _torch.stack([hog.preprocess(img) for img in x])
        h = np.concatenate([hog.embed(batch[i:i + 1000]) for i in range(0, len(batch), 1000)])
        feats = StreamingPCA(n_components=50).fit(h).transform(h)
    elif name in ("scae", "convae", "ascae"):
        from imgclust.deep.methods import create_deep

        feats = create_deep(name, k=10, epochs=args.epochs, seed=int(seed), device="cpu").fit(x).transform(x)
    else:
        raise SystemExit(f"unknown view {view!r}: pixels:S, hog:S, scae:S, ascae:S or convae:S")
    u = UMAPReducer(n_components=10, n_neighbors=20, min_dist=0.0, fit_sample=None,
                    random_state=int(seed)).fit(feats).embedding_
    torch.set_num_threads(args.threads)  # numba's OpenMP layer resets it after UMAP
    parts = np.stack([GaussianMixtureClusterer(n_clusters=10, fit_sample=None, random_state=s).fit(u).predict(u)
                      for s in range(args.runs)], axis=1)
    seconds = time.perf_counter() - t0
    os.makedirs(args.cache, exist_ok=True)
    np.savez(path, partitions=parts, seconds=seconds)
    return parts, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--views", default="pixels:0,scae:0,scae:1,scae:2")
    p.add_argument("--combos", default="", help="';'-separated, views joined by '+'; every view alone is always "
                   "scored, and the pool of all views")
    p.add_argument("--runs", type=int, default=8, help="EM runs per view")
    p.add_argument("--epochs", type=int, default=20, help="autoencoder epochs")
    p.add_argument("--cache", default="/tmp/imgclust-view-ensemble")
    add_subset_args(p)
    args = p.parse_args()
    x, y = train_subset(args)
    from imgclust.cluster.consensus import MIN_CLUSTER_FRACTION, consensus_labels
    from imgclust.metrics import cluster_accuracy, nmi

    views = [v.strip() for v in args.views.split(",") if v.strip()]
    parts: dict[str, np.ndarray] = {}
    secs: dict[str, float] = {}
    for v in views:
        parts[v], secs[v] = view_partitions(v, x, args)
        log.info("view %s ready (%.0f s)", v, secs[v])
    combos = [[v] for v in views] + [c.split("+") for c in args.combos.split(";") if c.strip()] + [views]
    print(f"Fashion-MNIST train subset of {len(x)} images, {args.runs} EM runs a view, autoencoders "
          f"{args.epochs} epochs; load average {os.getloadavg()[0]:.2f} at the end\n")
    print("| views pooled | partitions | consensus ACC | NMI | plain cut ACC | NMI | views' s (sum) | consensus s |")
    print("|---|---|---|---|---|---|---|---|")
    for combo in combos:
        missing = [v for v in combo if v not in parts]
        if missing:
            raise SystemExit(f"combination {'+'.join(combo)} names views not in --views: {missing}")
        pooled = np.concatenate([parts[v] for v in combo], axis=1)
        t0 = time.perf_counter()
        lab = consensus_labels(pooled, 10, min_cluster_fraction=MIN_CLUSTER_FRACTION)
        sec = time.perf_counter() - t0
        plain = consensus_labels(pooled, 10, min_cluster_fraction=0.0)
        print(f"| {' + '.join(combo)} | {pooled.shape[1]} | {cluster_accuracy(y, lab):.3f} | {nmi(y, lab):.3f} | "
              f"{cluster_accuracy(y, plain):.3f} | {nmi(y, plain):.3f} | {sum(secs[v] for v in combo):.0f} | {sec:.1f} |")


if __name__ == "__main__":
    main()
