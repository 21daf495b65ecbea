"""Novelty as the nightly run computes it, on held-out Fashion-MNIST classes, per recipe (issue 23).

Per recipe, class pair and seed, a model is fitted with :func:`imgclust.models.model.fit_model` on the **train** images
of the 8 other classes, so it carries its calibrated novelty score (:mod:`imgclust.models.novelty`; defaults: 10,000
references, 5,000 calibration rows, target false-novel rate 0.05):

* ``pixels``: 784 raw pixels / 255 -> IncrementalPCA 50 -> UMAP 10 -> GMM (k = 8), all 48,000 train images;
  the score is ``knn`` + residual (distance to the 20th nearest reference projected on the PCA subspace);
* ``simclr``: the demo's deep recipe, ``create_deep("simclr", k=8, epochs=10)`` trained (CPU) on a seeded
  10,000-image sample, then the refine flow's refit (``refit_recipe``: no PCA, UMAP 8 -> GMM consensus) on the
  rows its ``deep:`` extractor stores (``extractor_features``: the representation, then the last feature map's
  channel means and spatial standard deviations); the score is ``mahalanobis`` on those statistics;
* ``simclr-representation``: the same encoder (trained once when both are asked), the model fitted on the
  representation alone, as the extractor stored it before the statistics: the score is ``pca-residual``
  (distance to the 32-dim PCA subspace of the references).

The night is the **test** split: ``model.assign`` gives ``novelty_score`` and ``is_novel`` (what the label rows
keep). Reported: AUROC of the score (held-out classes positive), the flagged share of held-out and of known-class
images, and the event of :func:`imgclust.models.novelty_night.assess_night` (novel count above
:func:`imgclust.models.novelty.event_limit` at quantile 0.999, a candidate new cluster from
:func:`imgclust.models.candidates.find_candidates` on the novel rows, or the score shift:
:meth:`~imgclust.models.novelty.NoveltyScorer.shift_pvalue` below 0.001; each rule counted too) on the whole split (known classes only: 8,000
images; with the held-out classes: 10,000) and on ``--nights`` seeded sub-sampled nights of ``--night-size``
images, known only or with ``--new-share`` of held-out images.

    PYTHONPATH=. .venv/bin/python benchmarks/novelty_nightly.py                        # pixels, 3 pairs x 2 seeds
    PYTHONPATH=. .venv/bin/python benchmarks/novelty_nightly.py --recipe simclr,simclr-representation --seeds 0
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

from imgclust.models.novelty_night import SHIFT_ALPHA

log = logging.getLogger("benchmarks.novelty_nightly")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="pixels",
                   help=f"comma-separated recipes of {', '.join(RECIPES)} (default %(default)s)")
    p.add_argument("--pairs", default="5-7,0-6,8-9", help="held-out class pairs (default %(default)s)")
    p.add_argument("--seeds", default="0,1", help="seeds (default %(default)s)")
    p.add_argument("--fit-rows", type=int, default=None,
                   help="train images fitted (default: all 48,000 for pixels, 10,000 for simclr)")
    p.add_argument("--epochs", type=int, default=10, help="simclr training epochs (default: the demo's 10)")
    p.add_argument("--nights", type=int, default=100, help="sub-sampled nights per run and kind (default 100)")
    p.add_argument("--night-size", type=int, default=3000, help="images per sub-sampled night (default 3000)")
    p.add_argument("--new-share", type=float, default=0.2, help="held-out share of a mixed night (default 0.2)")
    return p.parse_args(argv)


RECIPES = ("pixels", "simclr", "simclr-representation")

_ENCODERS: dict[tuple[tuple[int, int], int], tuple[Any, float]] = {}  # (pair, seed) -> (simclr estimator, seconds)


def fit_recipe(recipe: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
               held: tuple[int, int], seed: int, args: argparse.Namespace) -> tuple[Any, np.ndarray, float]:
    """``(model, test features (10000, D), fit seconds)`` of one recipe fitted on the 8 known classes."""
    import torch

    from imgclust.batches import as_batch_source
    from imgclust.config import ClusterConfig, Recipe, ReduceConfig
    from imgclust.models.model import fit_model

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    known = np.flatnonzero(~np.isin(y_train, held))
    rows = args.fit_rows or (None if recipe == "pixels" else 10_000)
    if rows is not None and rows < len(known):
        known = np.sort(rng.choice(known, rows, replace=False))
    if recipe == "pixels":
        x_fit = x_train[known].reshape(len(known), -1).astype(np.float32) / 255.0
        model = fit_model(as_batch_source(x_fit, 8192), extractor_key="pixels-28-L",
                          recipe=Recipe(reduce=ReduceConfig(method="ipca", n_components=50, umap_components=10),
                                        cluster=ClusterConfig(method="gmm", k=8, fit_sample=20_000, seed=seed)))
        feats = x_test.reshape(len(x_test), -1).astype(np.float32) / 255.0
        return model, feats, time.perf_counter() - t0
    from imgclust.deep.methods import create_deep, refit_recipe

    torch.set_num_threads(os.cpu_count() or 1)
    if (held, seed) not in _ENCODERS:
        est = create_deep("simclr", k=8, epochs=args.epochs, seed=seed, device="cpu").fit(x_train[known])
        _ENCODERS[(held, seed)] = est, time.perf_counter() - t0
    est, train_s = _ENCODERS[(held, seed)]
    t0 = time.perf_counter() - train_s  # the fit time includes training, also when the encoder is shared
    if recipe == "simclr":
        fit_rows, feats = est.extractor_features(x_train[known]), est.extractor_features(x_test)
        representation: int | None = est.extractor_dims()[1]
    else:
        fit_rows, feats, representation = est.transform(x_train[known]), est.transform(x_test), None
    model = fit_model(as_batch_source(fit_rows, 8192), extractor_key="deep:benchmark",
                      recipe=refit_recipe("simclr", 8, seed), representation_dim=representation)
    return model, feats, time.perf_counter() - t0


def night_event(model: Any, feats: np.ndarray, score: np.ndarray, flagged: np.ndarray, seed: int
                ) -> tuple[bool, bool, int, bool]:
    """``(rate rule fired, candidate found, candidates, shift rule fired)`` of one night, as :func:`assess_night`
    decides it; the shift rule: :func:`~imgclust.models.novelty.shift_pvalue` below ``SHIFT_ALPHA``."""
    from imgclust.models.candidates import find_candidates
    from imgclust.models.novelty import event_limit

    n = len(score)
    rate_fired = int(flagged.sum()) > event_limit(n, model.novelty.n_calibration_, model.novelty.rate)
    cands = []
    if flagged.any():
        rows = model.novelty.space(model.novelty_input(feats[flagged]))
        cands = find_candidates(rows, model.novelty.reference_space(), n_night=n, seed=seed)
    shift_fired = model.novelty.shift_pvalue(score) < SHIFT_ALPHA
    return rate_fired, bool(cands), len(cands), shift_fired


def run(recipe: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
        held: tuple[int, int], seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    model, feats, fit_s = fit_recipe(recipe, x_train, y_train, x_test, held, seed, args)
    a = model.assign(feats)
    is_new = np.isin(y_test, held)
    out: dict[str, Any] = {"fit_s": fit_s, "score": model.meta["novelty"]["score"],
                           "auroc": float(roc_auc_score(is_new, a.novelty_score)),
                           "new": float(a.is_novel[is_new].mean()), "known": float(a.is_novel[~is_new].mean())}
    known_idx, new_idx = np.flatnonzero(~is_new), np.flatnonzero(is_new)
    out["whole_known"] = night_event(model, feats[known_idx], a.novelty_score[known_idx], a.is_novel[known_idx], seed)
    out["whole_mixed"] = night_event(model, feats, a.novelty_score, a.is_novel, seed)
    rng = np.random.default_rng((seed, 7))
    n_new = int(round(args.night_size * args.new_share))
    for kind in ("known", "mixed"):
        fired = []
        for _ in range(args.nights):
            if kind == "known":
                idx = rng.choice(known_idx, args.night_size, replace=False)
            else:
                idx = np.concatenate([rng.choice(known_idx, args.night_size - n_new, replace=False),
                                      rng.choice(new_idx, n_new, replace=False)])
            fired.append(night_event(model, feats[idx], a.novelty_score[idx], a.is_novel[idx], seed))
        out[f"nights_{kind}"] = fired
    log.info("%s pair %s seed %d: AUROC %.3f, new %.1f%%, known %.1f%% (%.0f s fit)", recipe, held, seed,
             out["auroc"], 100 * out["new"], 100 * out["known"], fit_s)
    return out


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    x_train, y_train, x_test, y_test = fashion_mnist_splits()
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    recipes = [r.strip() for r in args.recipe.split(",") if r.strip()]
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown or not recipes:
        raise SystemExit(f"unknown recipe(s) {unknown or recipes}: choose from {', '.join(RECIPES)}")
    t0 = time.perf_counter()
    by_recipe: dict[str, dict[str, list[dict[str, Any]]]] = {r: defaultdict(list) for r in recipes}
    for pair in pairs:
        held = (int(pair.split("-")[0]), int(pair.split("-")[1]))
        for seed in seeds:
            for recipe in recipes:
                by_recipe[recipe][pair].append(run(recipe, x_train, y_train, x_test, y_test, held, seed, args))
    for recipe, results in by_recipe.items():
        print_tables(recipe, results, pairs, seeds, time.perf_counter() - t0, args)


def print_tables(recipe: str, results: dict[str, list[dict[str, Any]]], pairs: list[str], seeds: list[int],
                 seconds: float, args: argparse.Namespace) -> None:
    """The two Markdown tables of one recipe: per held-out pair, and the sub-sampled nights' events."""
    every = [r for rs in results.values() for r in rs]
    print(f"\nFashion-MNIST, {recipe} recipe fitted on the train images of 8 classes, night = test split; "
          f"score {every[0]['score']}; pairs {', '.join(pairs)}; seeds {', '.join(map(str, seeds))}; "
          f"{os.cpu_count()} CPUs; {seconds:.0f} s in all (fits {np.mean([r['fit_s'] for r in every]):.0f} s each)\n")
    print("| held-out pair | AUROC mean (min) | new kind flagged mean (min) | known flagged mean (max) | "
          "event (rate or candidate), whole split: known only / with held-out | shift rule, whole split: known only "
          "/ with held-out | event (any), whole split |")
    print("|---|---|---|---|---|---|---|")
    for pair, rs in [*results.items(), ("all", every)]:
        au, new, kn = ([r[k] for r in rs] for k in ("auroc", "new", "known"))
        wk = sum(r["whole_known"][0] or r["whole_known"][1] for r in rs)
        wm = sum(r["whole_mixed"][0] or r["whole_mixed"][1] for r in rs)
        sk, sm = (sum(r[f"whole_{k}"][3] for r in rs) for k in ("known", "mixed"))
        ak, am = (sum(any(r[f"whole_{k}"][i] for i in (0, 1, 3)) for r in rs) for k in ("known", "mixed"))
        print(f"| {pair} | {np.mean(au):.3f} ({min(au):.3f}) | {np.mean(new):.1%} ({min(new):.1%}) | "
              f"{np.mean(kn):.1%} ({max(kn):.1%}) | {wk} / {wm} of {len(rs)} | {sk} / {sm} | {ak} / {am} |")
    print(f"\nSub-sampled nights of {args.night_size} images ({args.nights} per run and kind; mixed = "
          f"{args.new_share:.0%} held-out): nights where the event fired, by rule\n")
    print("| night | nights | rate rule | candidate rule | event (either) | candidates per night, mean (max) | "
          f"shift rule (p < {SHIFT_ALPHA}) | any of the three |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in ("known", "mixed"):
        ev = [e for r in every for e in r[f"nights_{kind}"]]
        counts = [e[2] for e in ev]
        print(f"| {'known only' if kind == 'known' else 'with held-out'} | {len(ev)} | {sum(e[0] for e in ev)} | "
              f"{sum(e[1] for e in ev)} | {sum(e[0] or e[1] for e in ev)} | {np.mean(counts):.2f} ({max(counts)}) | "
              f"{sum(e[3] for e in ev)} | {sum(e[0] or e[1] or e[3] for e in ev)} |")


if __name__ == "__main__":
    main()
