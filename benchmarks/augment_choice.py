"""How the ``simclr`` augmentation was chosen: SimCLR views with and without a random tone curve.

Runs on the seeded 10,000-image subset of the Fashion-MNIST **train** split (``benchmarks/train_subset.py``;
never the test split ``benchmarks/quality.py`` scores). For each candidate augmentation and seed it trains the
library's :class:`~imgclust.deep.contrastive.ContrastiveClusterer` at its defaults otherwise (20 epochs) and
prints:

- **kNN label agreement** of the representation: the fraction of each image's 1 / 20 nearest neighbours
  (cosine, exact faiss search over the subset) that share its class. It measures the representation
  without any clustering draw, so it moves far less between seeds than ACC does;
- ACC / NMI of cosine k-means on the representation and of the estimator's own labels (UMAP(10, 20
  neighbours, min_dist 0) + 8-run GMM consensus).

    .venv/bin/python benchmarks/augment_choice.py --candidates none,random --seeds 0,1
"""
from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import numpy as np
from train_subset import add_subset_args, train_subset

log = logging.getLogger("benchmarks.augment_choice")

CANDIDATES: dict[str, dict[str, Any]] = {
    "none": {"tone_curve": "none"},
    "monotone": {"tone_curve": "monotone"},
    "random": {"tone_curve": "random"},
    "random-crop0.6": {"tone_curve": "random", "min_crop_area": 0.6},
    "random8-crop0.6": {"tone_curve": "random", "tone_segments": 8, "min_crop_area": 0.6},
    "monotone-b512": {"tone_curve": "monotone", "batch_size": 512},
}
"""Candidate augmentations (ContrastiveClusterer parameters); ``none`` is the augmentation before the tone
curve was added (crop 0.3-1, flip, contrast/brightness jitter)."""


def neighbour_agreement(emb: np.ndarray, y: np.ndarray, k: int,
                        queries: np.ndarray | None = None) -> tuple[float, float]:
    """Fraction of the nearest neighbour, and of the ``k`` nearest, of each query row of ``emb`` ``(N, D)``
    (cosine, searched among all ``N``; the row itself excluded) whose label equals the row's:
    ``(agreement@1, agreement@k)``. ``queries``: row indices ``(Q,)`` to score; ``None`` = every row."""
    from imgclust.cluster.scan import nearest_neighbours

    e = np.ascontiguousarray(emb / np.linalg.norm(emb, axis=1, keepdims=True), dtype=np.float32)
    q = np.arange(len(e)) if queries is None else np.asarray(queries)
    nb = nearest_neighbours(e, k, q)
    same = y[nb] == y[q][:, None]
    return float(same[:, 0].mean()), float(same.mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidates", default=",".join(CANDIDATES), help=f"comma-separated, of {', '.join(CANDIDATES)}")
    p.add_argument("--seeds", default="0,1", help="comma-separated training/UMAP/EM seeds")
    p.add_argument("--epochs", type=int, default=20)
    add_subset_args(p)
    args = p.parse_args()
    names = [c for c in args.candidates.split(",") if c]
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        p.error(f"unknown candidates {unknown}; choose from {', '.join(CANDIDATES)}")
    x, y = train_subset(args)
    from imgclust.cluster.classic import FaissKMeans
    from imgclust.deep.contrastive import ContrastiveClusterer
    from imgclust.metrics import cluster_accuracy, nmi

    rows: list[str] = []
    for name in names:
        for seed in (int(s) for s in args.seeds.split(",")):
            t0 = time.perf_counter()
            est = ContrastiveClusterer.with_training(n_clusters=10, epochs=args.epochs, seed=seed, device="cpu",
                                                     **CANDIDATES[name]).fit(x)
            seconds = time.perf_counter() - t0
            feats = est.transform(x)
            at1, at20 = neighbour_agreement(feats, y, 20)
            km = FaissKMeans(n_clusters=10, n_redo=10, seed=seed, spherical=True).fit(feats).predict(feats)
            rows.append(f"| {name} | {seed} | {at1:.3f} | {at20:.3f} | {cluster_accuracy(y, km):.3f} / {nmi(y, km):.3f} "
                        f"| {cluster_accuracy(y, est.labels_):.3f} / {nmi(y, est.labels_):.3f} | {seconds:.0f} |")
            log.info("done: %s", rows[-1])
    print(f"\nsimclr augmentations on {len(x)} Fashion-MNIST train images ({args.epochs} epochs, {args.threads} "
          "threads)")
    print("| candidate | seed | kNN agreement @1 | @20 | cosine k-means ACC / NMI | UMAP + GMM consensus ACC / NMI "
          "| fit s |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
