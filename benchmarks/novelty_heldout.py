"""Which novelty score sees a new kind of image? A held-out-class benchmark on Fashion-MNIST (issue 23).

Per class pair and seed: the pixel recipe (784 raw pixels / 255 -> IncrementalPCA 50 -> UMAP 10 -> GMM,
``imgclust.models.model.fit_model``, k = 8, one EM run) is fitted on the **train** split's images of the 8
other classes. From those fitted rows a seeded permutation takes ``--refs`` reference rows and, disjoint
from them, ``--calib`` calibration rows. The "night" is the **test** split: 8,000 unseen images of the 8
known classes and 2,000 of the 2 held-out ones. Candidate scores, all in the PCA-50 space (before UMAP):

* ``knn-k``: Euclidean distance to the k-th nearest reference row (faiss ``IndexFlatL2``, exact);
* ``mean-knn-10``: mean distance to the 10 nearest reference rows;
* ``mahalanobis``: squared Mahalanobis distance to one Gaussian fitted on the reference rows;
* ``gmm-nll``: negative log-likelihood under a full-covariance Gaussian mixture (k components) on the references;
* ``pca-residual``: distance of the pixels to the PCA subspace (reconstruction error);
* ``knn-k+residual``: ``sqrt(knn-k^2 + residual^2)``, the pixel-space distance to the k-th nearest reference
  *projected* on the PCA subspace (the residual is orthogonal to it);
* ``ppca-nll``: probabilistic PCA's negative log-likelihood up to a constant (Tipping & Bishop 1999):
  ``(sum_i z_i^2 / lambda_i + residual^2 / sigma^2) / 2``, sigma^2 the mean discarded eigenvalue;

and today's rule in the final (UMAP / GMM) space: ``today`` is ``is_novel`` of ``ClusterModel.assign``
(distance to the assigned cluster's centroid above that cluster's 0.99 quantile), whose score for the AUROC is
the distance divided by the cluster's threshold; ``today-conformal`` is the same ratio thresholded like the
others. Every other threshold is the split-conformal quantile of the calibration rows' scores at
``--rate`` (Vovk, Gammerman & Shafer 2005; Angelopoulos & Bates 2021): flagged = score > threshold.

Reported per score: AUROC (held-out-class test images positive, known-class test images negative;
``sklearn.metrics.roc_auc_score``), the flagged share of held-out-class images ("new flagged") and of
known-class test images ("known flagged", the realised false-novel rate; the target is ``--rate``). A second
table varies the number of reference rows for the kNN scores.

``--recipe simclr`` measures the deep recipe the demo promotes instead (:func:`run_simclr`): the ``simclr``
encoder trained for ``--epochs`` (default 10, the demo's) on a seeded 10,000-image sample of the 8 known classes'
train images (the demo's corpus size), its refit as the refine flow does it, and the scores in its representation
before UMAP.

The last table is the event question: per run, the night's flagged share (chosen score, conformal threshold) for
a night of known classes only and for one with held-out images, whole and sub-sampled to ``--night-size``
images, against binomial and Beta-Binomial margins above the target rate (:func:`event_table`).

    PYTHONPATH=. .venv/bin/python benchmarks/novelty_heldout.py            # 3 pairs x 2 seeds
    PYTHONPATH=. .venv/bin/python benchmarks/novelty_heldout.py --quick    # 1 pair, 1 seed, 12k fitted rows
    PYTHONPATH=. .venv/bin/python benchmarks/novelty_heldout.py --recipe simclr --pairs 5-7,0-6 --seeds 0
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from collections import defaultdict
from typing import Any

import numpy as np
from _common import fashion_mnist_splits, setup_logging

log = logging.getLogger("benchmarks.novelty_heldout")
KS = (1, 5, 10, 20)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", default="5-7,0-6,8-9", help="held-out class pairs (default %(default)s: "
                   "sandal/sneaker, t-shirt/shirt, bag/ankle boot)")
    p.add_argument("--seeds", default="0,1", help="seeds (default %(default)s)")
    p.add_argument("--fit-rows", type=int, default=None, help="fitted rows per run (default: all 48,000 train rows "
                   "of the 8 known classes)")
    p.add_argument("--refs", type=int, default=10_000, help="reference rows (default %(default)s)")
    p.add_argument("--calib", type=int, default=5_000, help="calibration rows, disjoint from the references")
    p.add_argument("--ref-sizes", default="2500,10000,40000", help="reference sizes of the second table")
    p.add_argument("--rate", type=float, default=0.05, help="target false-novel rate (default %(default)s)")
    p.add_argument("--umap-sample", type=int, default=20_000, help="rows UMAP and the GMM are fitted on")
    p.add_argument("--quick", action="store_true", help="smoke run: one pair, one seed, 12,000 fitted rows")
    p.add_argument("--recipe", choices=("pixels", "simclr"), default="pixels",
                   help="pixels (default): IPCA 50 -> UMAP 10 -> GMM; simclr: the demo's deep recipe (see above)")
    p.add_argument("--epochs", type=int, default=10, help="simclr training epochs (default %(default)s, the demo's)")
    p.add_argument("--night-size", type=int, default=3_000, help="images per sub-sampled night of the event "
                   "table (default %(default)s)")
    p.add_argument("--nights", type=int, default=200, help="sub-sampled nights per kind and run (default %(default)s)")
    args = p.parse_args(argv)
    if args.quick:
        args.pairs, args.seeds, args.fit_rows, args.ref_sizes = "5-7", "0", 12_000, "2500,5000"
        args.refs, args.calib = 5_000, 3_000
        if args.recipe == "simclr":
            args.fit_rows, args.epochs, args.nights = 3_000, 1, 20
    if args.recipe == "simclr":  # the demo's budget: the encoder trains on a 10,000-image corpus
        args.fit_rows = args.fit_rows or 10_000
        if args.refs + args.calib > args.fit_rows:  # NoveltyScorer.fit's rule: calibration keeps its share
            args.calib = round(args.fit_rows * args.calib / (args.refs + args.calib))
            args.refs = args.fit_rows - args.calib
        args.ref_sizes = str(args.refs)
    return args


def conformal_threshold(cal: np.ndarray, rate: float) -> float:
    """Split-conformal threshold: the ceil((n+1)(1-rate))-th smallest calibration score (+inf if > n)."""
    n = cal.size
    rank = int(np.ceil((n + 1) * (1.0 - rate)))
    return float(np.inf) if rank > n else float(np.sort(cal)[rank - 1])


def knn_distances(ref: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Sorted Euclidean distances (n, k) of ``queries`` to their ``k`` nearest rows of ``ref`` (exact faiss)."""
    import faiss

    index = faiss.IndexFlatL2(ref.shape[1])
    index.add(np.ascontiguousarray(ref, np.float32))
    d2, _ = index.search(np.ascontiguousarray(queries, np.float32), k)
    return np.sqrt(np.maximum(d2, 0.0))


def density_scores(ref: np.ndarray, rows: np.ndarray, k: int, seed: int) -> dict[str, np.ndarray]:
    """Mahalanobis (one Gaussian) and GMM negative log-likelihood of ``rows`` given ``ref`` (PCA space)."""
    from sklearn.mixture import GaussianMixture

    ref64 = ref.astype(np.float64)
    mu = ref64.mean(axis=0)
    prec = np.linalg.inv(np.cov(ref64, rowvar=False) + 1e-6 * np.eye(ref.shape[1]))
    diff = rows.astype(np.float64) - mu
    gm = GaussianMixture(n_components=k, covariance_type="full", reg_covar=1e-4, random_state=seed).fit(ref64)
    return {"mahalanobis": np.einsum("ij,jk,ik->i", diff, prec, diff), "gmm-nll": -gm.score_samples(rows)}


def threshold_ratio(a: Any, thresholds: np.ndarray) -> np.ndarray:
    """Today's novelty score of an ``Assignment`` ``a``: distance over its cluster's threshold ``(n,)`` (+inf for noise)."""
    r = np.full(a.raw.shape[0], np.inf)
    ok = a.raw >= 0
    r[ok] = a.distance[ok] / thresholds[a.raw[ok]]
    return r


def flag_shares(cal: np.ndarray, test: np.ndarray, is_new: np.ndarray, rate: float,
                flagged: np.ndarray | None = None) -> dict[str, float]:
    """AUROC of the ``test`` scores against ``is_new``, and the flagged shares of new and known test rows: flagged
    is ``flagged`` when given, else score > the conformal threshold of ``cal`` at ``rate``."""
    from sklearn.metrics import roc_auc_score

    flag = test > conformal_threshold(cal, rate) if flagged is None else flagged
    return {"auroc": float(roc_auc_score(is_new, test)), "new": float(flag[is_new].mean()),
            "known": float(flag[~is_new].mean())}


def measure_all(scores: dict[str, tuple[np.ndarray, np.ndarray]], a_cal: Any, a_test: Any, thresholds: np.ndarray,
                is_new: np.ndarray, rate: float) -> dict[str, dict[str, float]]:
    """:func:`flag_shares` of today's rule (``is_novel`` of the test ``Assignment`` ``a_test``) and of every score
    ``(calibration, test)`` of ``scores``, once ``scores["today-conformal"]`` (:func:`threshold_ratio`) is added."""
    scores["today-conformal"] = (threshold_ratio(a_cal, thresholds), threshold_ratio(a_test, thresholds))
    out = {"today": flag_shares(*scores["today-conformal"], is_new, rate, a_test.is_novel)}
    out.update({name: flag_shares(c, t, is_new, rate) for name, (c, t) in scores.items()})
    return out


def run_one(x_all: np.ndarray, y_all: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, held: tuple[int, int],
            seed: int, args: argparse.Namespace
            ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], float, dict[str, tuple]]:
    from imgclust.batches import as_batch_source
    from imgclust.config import ClusterConfig, Recipe, ReduceConfig
    from imgclust.models.model import fit_model

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    known = ~np.isin(y_all, held)
    x_fit = x_all[known]
    if args.fit_rows is not None and args.fit_rows < len(x_fit):
        x_fit = x_fit[np.sort(rng.choice(len(x_fit), args.fit_rows, replace=False))]
    model = fit_model(as_batch_source(x_fit, 8192), extractor_key="pixels-28-L",
                      recipe=Recipe(reduce=ReduceConfig(method="ipca", n_components=50, umap_components=10),
                                    cluster=ClusterConfig(method="gmm", k=8, fit_sample=args.umap_sample, seed=seed)))
    assert model.reducer is not None
    fit_s = time.perf_counter() - t0
    perm = rng.permutation(len(x_fit))
    cal_idx = perm[: args.calib]
    rest = perm[args.calib:]
    z_fit = model.reducer.transform(x_fit)
    z_cal, z_test = z_fit[cal_idx], model.reducer.transform(x_test)
    is_new = np.isin(y_test, held)

    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (calibration, test)
    sized: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    kmax = max(KS)
    for n_ref in sorted({args.refs, *(int(s) for s in args.ref_sizes.split(","))}):
        if n_ref > len(rest):
            log.warning("skipping %d references: only %d fitted rows outside the calibration set", n_ref, len(rest))
            continue
        ref = z_fit[rest[:n_ref]]
        dc, dt = knn_distances(ref, z_cal, kmax), knn_distances(ref, z_test, kmax)
        for k in KS:
            sized[f"knn-{k} @ {n_ref}"] = (dc[:, k - 1], dt[:, k - 1])
        sized[f"mean-knn-10 @ {n_ref}"] = (dc[:, :10].mean(1), dt[:, :10].mean(1))
        if n_ref == args.refs:
            for k in KS:
                scores[f"knn-{k}"] = sized[f"knn-{k} @ {n_ref}"]
            scores["mean-knn-10"] = sized[f"mean-knn-10 @ {n_ref}"]
            both = density_scores(ref, np.concatenate([z_cal, z_test]), 8, seed)
            for name, s in both.items():
                scores[name] = (s[: len(z_cal)], s[len(z_cal):])
    pixels_cal, pixels_test = x_fit[cal_idx], x_test
    comp, mean = model.reducer.components_, model.reducer.mean_
    assert comp is not None

    def residual(xx: np.ndarray, zz: np.ndarray) -> np.ndarray:
        return np.linalg.norm(xx - mean - zz @ comp, axis=1)

    res_cal, res_test = residual(pixels_cal, z_cal), residual(pixels_test, z_test)
    scores["pca-residual"] = (res_cal, res_test)
    for k in KS:  # distance to the k-th nearest *projected* reference in pixel space: sqrt(knn^2 + residual^2)
        c, t = scores[f"knn-{k}"]
        scores[f"knn-{k}+residual"] = (np.hypot(c, res_cal), np.hypot(t, res_test))
    ev = model.reducer.explained_variance_.astype(np.float64)
    total = float(ev.sum() / model.reducer.explained_variance_ratio_.sum())
    sigma2 = (total - float(ev.sum())) / (x_fit.shape[1] - ev.size)  # mean discarded eigenvalue

    def ppca(zz: np.ndarray, rr: np.ndarray) -> np.ndarray:
        return 0.5 * (np.sum(zz.astype(np.float64) ** 2 / ev, axis=1) + rr.astype(np.float64) ** 2 / sigma2)

    scores["ppca-nll"] = (ppca(z_cal, res_cal), ppca(z_test, res_test))
    out = measure_all(scores, model.assign(pixels_cal), model.assign(pixels_test), model.thresholds, is_new, args.rate)
    out_sized = {name: flag_shares(c, t, is_new, args.rate) for name, (c, t) in sized.items()}
    log.info("pair %s seed %d: fitted %d rows in %.0f s, scored in %.0f s", held, seed, len(x_fit), fit_s,
             time.perf_counter() - t0 - fit_s)
    return out, out_sized, fit_s, {"knn-20+residual": scores["knn-20+residual"]}


def run_simclr(x_all: np.ndarray, y_all: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, held: tuple[int, int],
               seed: int, args: argparse.Namespace
               ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], float, dict[str, tuple]]:
    """The deep recipe the demo promotes: ``create_deep("simclr", k=8, epochs=args.epochs)`` trained (CPU) on a
    seeded ``args.fit_rows``-image sample of the 8 known classes' train images (uint8 28 x 28), then the refine
    flow's refit (:func:`imgclust.deep.methods.refit_recipe`: no PCA, UMAP to 8 dims, GMM consensus) fitted with
    ``fit_model`` on the encoder's representations of those images, whose ``assign`` gives today's ``is_novel``.
    Scores live in the representation before UMAP (the L2-normalised pooled features; the recipe has no PCA):
    ``knn-k`` on it, and as candidates ``pca32-knn-20`` / ``pca32-residual`` / ``pca32-knn-20+residual`` after a
    PCA to 32 dims fitted on the reference rows. References and calibration rows are disjoint fitted rows (the
    encoder trained on both); ``*-cal-unseen`` calibrates the same score on train images of the known classes
    the encoder did *not* train on (the refine flow trains on a sample of the store, so such rows exist)."""
    import torch
    from sklearn.decomposition import PCA

    from imgclust.batches import as_batch_source
    from imgclust.deep.methods import create_deep, refit_recipe
    from imgclust.models.model import fit_model

    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(seed)
    known_idx = np.flatnonzero(~np.isin(y_all, held))
    pick = rng.permutation(known_idx)
    fit_idx, unseen_idx = np.sort(pick[: args.fit_rows]), pick[args.fit_rows: args.fit_rows + args.calib]
    t0 = time.perf_counter()
    est = create_deep("simclr", k=8, epochs=args.epochs, seed=seed, device="cpu").fit(x_all[fit_idx])
    train_s = time.perf_counter() - t0
    e_fit, e_test, e_unseen = (est.transform(x) for x in (x_all[fit_idx], x_test, x_all[unseen_idx]))
    recipe = refit_recipe("simclr", 8, seed)
    model = fit_model(as_batch_source(e_fit, 8192), extractor_key="deep:benchmark", recipe=recipe)
    fit_s = time.perf_counter() - t0
    perm = rng.permutation(len(fit_idx))
    cal_idx, ref_idx = perm[: args.calib], perm[args.calib: args.calib + args.refs]
    ref, e_cal = e_fit[ref_idx], e_fit[cal_idx]
    is_new = np.isin(y_test, held)
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    kmax = max(KS)
    dc, dt, du = (knn_distances(ref, q, kmax) for q in (e_cal, e_test, e_unseen))
    for k in KS:
        scores[f"knn-{k}"] = (dc[:, k - 1], dt[:, k - 1])
    scores["mean-knn-10"] = (dc[:, :10].mean(1), dt[:, :10].mean(1))
    scores["knn-20-cal-unseen"] = (du[:, 19], dt[:, 19])
    pca = PCA(n_components=min(32, ref.shape[1]), random_state=seed).fit(ref)

    def proj(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = pca.transform(e).astype(np.float32)
        return z, np.linalg.norm(e - pca.inverse_transform(z), axis=1)

    (z_ref, _), (z_cal, r_cal), (z_test, r_test), (z_un, r_un) = (proj(e) for e in (ref, e_cal, e_test, e_unseen))
    pc, pt, pu = (knn_distances(z_ref, q, 20)[:, -1] for q in (z_cal, z_test, z_un))
    scores["pca32-knn-20"] = (pc, pt)
    scores["pca32-residual"] = (r_cal, r_test)
    scores["pca32-knn-20+residual"] = (np.hypot(pc, r_cal), np.hypot(pt, r_test))
    scores["pca32-knn-20+residual-cal-unseen"] = (np.hypot(pu, r_un), np.hypot(pt, r_test))
    both = density_scores(ref, np.concatenate([e_cal, e_test]), 8, seed)
    for name, sc in both.items():
        scores[name] = (sc[: len(e_cal)], sc[len(e_cal):])
    out = measure_all(scores, model.assign(e_cal), model.assign(e_test), model.thresholds, is_new, args.rate)
    log.info("pair %s seed %d: simclr trained on %d images in %.0f s (%d epochs), refit %.0f s, scored in %.0f s",
             held, seed, len(fit_idx), train_s, args.epochs, fit_s - train_s, time.perf_counter() - t0 - fit_s)
    return out, {}, fit_s, {"knn-20": scores["knn-20"], "knn-20-cal-unseen": scores["knn-20-cal-unseen"]}


def event_margins(n: int, rate: float, n_cal: int, p: float = 0.999) -> tuple[float, float]:
    """Flagged shares a night of ``n`` images exceeds with chance ``1 - p`` when nothing is new: the ``p`` quantile
    of Binomial(n, rate) / n, and of the Beta-Binomial count under a conformal threshold from ``n_cal`` rows."""
    from scipy.stats import betabinom, binom

    rank = int(np.ceil((n_cal + 1) * (1 - rate)))
    return float(binom.ppf(p, n, rate)) / n, float(betabinom.ppf(p, n, n_cal + 1 - rank, rank)) / n


def event_table(events: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]], args: argparse.Namespace,
                seed: int = 0) -> str:
    """Night-level flagged shares: a known-only night vs a night with a held-out class, against event margins.

    Margins at the night's size N (one-sided, 0.1 % chance of a false event): ``binomial`` the 0.999 quantile of
    Binomial(N, rate) / N (a known threshold); ``beta-binomial`` the 0.999 quantile of the flagged count when the
    threshold is the conformal one from n calibration rows (false-novel probability ~ Beta(n + 1 - r, r),
    r = ceil((n + 1)(1 - rate)); Vovk 2012, "Conditional validity of inductive conformal predictors"). Sub-sampled
    nights draw ``--night-size`` test images without replacement: all known, or 20 % from the held-out classes."""
    rng = np.random.default_rng(seed)
    lines = ["| score | night | images | flagged share mean (range over runs/nights) | binomial margin | "
             "beta-binomial margin | nights above binomial / beta-binomial margin |", "|---|---|---|---|---|---|---|"]
    for name, runs in events.items():
        n_cal = runs[0][0].size
        kinds: dict[tuple[str, int], list[float]] = defaultdict(list)
        for cal, test, is_new in runs:
            flag = test > conformal_threshold(cal, args.rate)
            kinds[("known only (all known test images)", int((~is_new).sum()))].append(float(flag[~is_new].mean()))
            kinds[("known + held-out (whole test split)", is_new.size)].append(float(flag.mean()))
            known, new = np.flatnonzero(~is_new), np.flatnonzero(is_new)
            m = args.night_size
            n_new = m // 5
            for _ in range(args.nights):
                kinds[("known only, sub-sampled", m)].append(float(flag[rng.choice(known, m, replace=False)].mean()))
                night = np.concatenate([rng.choice(known, m - n_new, replace=False), rng.choice(new, n_new, replace=False)])
                kinds[("20 % held-out, sub-sampled", m)].append(float(flag[night].mean()))
        for (kind, n), shares in kinds.items():
            b, bb = event_margins(n, args.rate, n_cal)
            sh = np.array(shares)
            lines.append(f"| {name} | {kind} | {n:,} | {sh.mean():.1%} ({sh.min():.1%}-{sh.max():.1%}) | {b:.1%} | "
                         f"{bb:.1%} | {int((sh > b).sum())} / {int((sh > bb).sum())} of {sh.size} |")
    return "\n".join(lines)


def table(results: dict[str, list[dict[str, float]]], pairs: list[str], per_pair: dict[str, dict[str, list]]) -> str:
    head = "| score | AUROC mean (min) | " + " | ".join(f"AUROC {p}" for p in pairs) + \
        " | new flagged mean (min) | known flagged mean (max) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, rows in results.items():
        au = [r["auroc"] for r in rows]
        new = [r["new"] for r in rows]
        kn = [r["known"] for r in rows]
        cells = [f"{np.mean([r['auroc'] for r in per_pair[name][p]]):.3f}" for p in pairs]
        lines.append(f"| {name} | {np.mean(au):.3f} ({min(au):.3f}) | " + " | ".join(cells) +
                     f" | {np.mean(new):.1%} ({min(new):.1%}) | {np.mean(kn):.1%} ({max(kn):.1%}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    x_train, y_train, x_test, y_test = fashion_mnist_splits()
    if args.recipe == "pixels":
        x_train = x_train.reshape(len(x_train), -1).astype(np.float32) / 255.0
        x_test = x_test.reshape(len(x_test), -1).astype(np.float32) / 255.0
    run = run_one if args.recipe == "pixels" else run_simclr
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[dict[str, float]]] = defaultdict(list)
    sized: dict[str, list[dict[str, float]]] = defaultdict(list)
    per_pair: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    events: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = defaultdict(list)
    t0 = time.perf_counter()
    fit_times = []
    for pair in pairs:
        held = tuple(int(c) for c in pair.split("-"))
        for seed in seeds:
            out, out_sized, fit_s, ev = run(x_train, y_train, x_test, y_test, held, seed, args)  # type: ignore[arg-type]
            fit_times.append(fit_s)
            for name, m in out.items():
                results[name].append(m)
                per_pair[name][pair].append(m)
            for name, m in out_sized.items():
                sized[name].append(m)
            for name, (cal, test) in ev.items():
                events[name].append((cal, test, np.isin(y_test, held)))
    recipe = ("pixel recipe (IPCA 50 -> UMAP 10 -> GMM k=8)" if args.recipe == "pixels" else
              f"simclr recipe ({args.epochs} epochs on CPU, then UMAP 8 -> GMM consensus k=8)")
    print(f"\nFashion-MNIST, {recipe} fitted on the train images of 8 classes "
          f"({args.fit_rows or 'all'} rows), night = test split; held-out pairs {', '.join(pairs)}; seeds "
          f"{', '.join(map(str, seeds))}; {args.refs} references, {args.calib} calibration rows, target false-novel "
          f"rate {args.rate:.0%}; {os.cpu_count()} CPUs; {time.perf_counter() - t0:.0f} s in all "
          f"(fits {np.mean(fit_times):.0f} s each)\n")
    print(table(results, pairs, per_pair))
    if sized:
        print("\nReference rows (kNN scores; same calibration rows):\n")
        print("| score @ references | AUROC mean (min) | new flagged mean (min) | known flagged mean (max) |")
        print("|---|---|---|---|")
        for name, rows in sized.items():
            au, new, kn = ([r[key] for r in rows] for key in ("auroc", "new", "known"))
            print(f"| {name} | {np.mean(au):.3f} ({min(au):.3f}) | {np.mean(new):.1%} ({min(new):.1%}) | "
                  f"{np.mean(kn):.1%} ({max(kn):.1%}) |")
    print(f"\nThe event question (target rate {args.rate:.0%}; margins one-sided at 0.1 %):\n")
    print(event_table(events, args))


if __name__ == "__main__":
    main()
