"""Candidate new clusters on held-out Fashion-MNIST classes: does the rule find the new kind, and only it? (issue 23)

Setup as ``benchmarks/novelty_heldout.py`` (pixel recipe): per held-out class pair, IncrementalPCA 50 of the
pixel recipe (``StreamingPCA(n_components=50)``, the reducer ``fit_model`` fits for ``ReduceConfig(method="ipca",
n_components=50)``; UMAP and the GMM play no part in the score or the candidates, so they are not fitted) on the
**train** images of the 8 other classes. The reducer does not depend on the seed, so it is fitted once per pair
and shared by the seeds. Per seed, ``NoveltyScorer(seed=seed)`` with its defaults (k = 20, 10,000 references,
5,000 calibration rows, conformal threshold at a 5 % false-novel rate) is fitted on ``novelty_rows(reducer,
fitted images)``, and the **test** split is scored. Nights: ``--nights`` sub-sampled nights of ``--night-size``
test images per kind and run, known classes only, or ``--held-share`` (20 %) from the held-out classes (drawn
without replacement within a night, seeded by (pair, seed)), as in that benchmark's event table.

Per night the novel images (``scorer.predict``) go to :func:`imgclust.models.candidates.find_candidates` in the
scorer's novelty space (``scorer.space`` / ``scorer.reference_space``: PCA coordinates without the residual
column) with ``n_night = --night-size``: its groups (:func:`imgclust.models.candidates.find_groups`) are computed once
per night and the candidate rule (``size >= min_size`` and ``tightness <= max_tightness``) applied at each
``max_tightness`` of ``--sweep``. Reported per night type and seed: nights with >= 1 candidate; candidate purity
(held-out images among the candidates' members, pooled); the share of the nights' held-out images in candidates
("covered"), and of their *flagged* held-out images; nights whose flagged share is above the Beta-Binomial
0.999 margin (:func:`novelty_heldout.event_margins`); and the combined event (margin OR >= 1 candidate).
Seed 0 is the tuning seed of the defaults (:data:`imgclust.models.candidates.MAX_TIGHTNESS` etc.), seed 1 is reported
unseen.

    PYTHONPATH=. .venv/bin/python benchmarks/novelty_candidates.py           # 3 pairs x 2 seeds x 200 nights
    PYTHONPATH=. .venv/bin/python benchmarks/novelty_candidates.py --quick   # 1 pair, 1 seed, 20 nights
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fashion_mnist_splits, setup_logging  # noqa: E402
from novelty_heldout import event_margins  # noqa: E402

log = logging.getLogger("benchmarks.novelty_candidates")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from imgclust.models.candidates import MAX_TIGHTNESS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", default="5-7,0-6,8-9", help="held-out class pairs (default %(default)s)")
    p.add_argument("--seeds", default="0,1", help="seeds (default %(default)s; 0 tuned the defaults)")
    p.add_argument("--nights", type=int, default=200, help="sub-sampled nights per kind and run (default %(default)s)")
    p.add_argument("--night-size", type=int, default=3_000, help="images per night (default %(default)s)")
    p.add_argument("--held-share", type=float, default=0.2, help="held-out share of a held-out night")
    p.add_argument("--rate", type=float, default=0.05, help="NoveltyScorer's target false-novel rate")
    p.add_argument("--min-size", type=int, default=None, help="find_candidates min_size (default its own)")
    p.add_argument("--max-tightness", type=float, default=MAX_TIGHTNESS, help="threshold of the main table "
                   "(default %(default)s, find_candidates' default)")
    p.add_argument("--sweep", default="0.7,0.8,0.9,1.0,1.2", help="max_tightness values of the sweep table")
    p.add_argument("--quick", action="store_true", help="smoke run: pair 8-9, seed 0, 20 nights")
    args = p.parse_args(argv)
    if args.quick:
        args.pairs, args.seeds, args.nights = "8-9", "0", 20
    return args


@dataclass
class Night:
    """One night: flagged share, its held-out images (all / flagged) and its groups (tightness, size, held)."""

    flagged_share: float
    n_held: int
    n_held_flagged: int
    groups: list[tuple[float, int, int]] = field(default_factory=list)


def run_pair(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             held: tuple[int, int], seeds: list[int], args: argparse.Namespace
             ) -> dict[tuple[int, str], list[Night]]:
    from imgclust.batches import as_batch_source
    from imgclust.models.candidates import find_groups
    from imgclust.models.novelty import NoveltyScorer, novelty_rows
    from imgclust.reduce.streaming import StreamingPCA

    t0 = time.perf_counter()
    x_fit = x_train[~np.isin(y_train, held)]
    pca = StreamingPCA(n_components=50).fit(as_batch_source(x_fit, 8192))
    fit_rows, test_rows = novelty_rows(pca, x_fit), novelty_rows(pca, x_test)
    log.info("pair %s: PCA and novelty rows of %d fitted images in %.0f s", held, len(x_fit), time.perf_counter() - t0)
    is_new = np.isin(y_test, held)
    known, new = np.flatnonzero(~is_new), np.flatnonzero(is_new)
    m = args.night_size
    n_new = int(round(m * args.held_share))
    out: dict[tuple[int, str], list[Night]] = {}
    for seed in seeds:
        t1 = time.perf_counter()
        scorer = NoveltyScorer(rate=args.rate, seed=seed).fit(fit_rows)
        flag = scorer.predict(test_rows)
        space, ref = scorer.space(test_rows), scorer.reference_space()
        rng = np.random.default_rng([seed, *held])
        for kind in ("known only", f"{args.held_share:.0%} held-out"):
            nights = []
            for _ in range(args.nights):
                if kind == "known only":
                    idx = rng.choice(known, m, replace=False)
                else:
                    idx = np.concatenate([rng.choice(known, m - n_new, replace=False),
                                          rng.choice(new, n_new, replace=False)])
                novel = idx[flag[idx]]
                night = Night(float(flag[idx].mean()), int(is_new[idx].sum()), int(is_new[novel].sum()))
                for g in find_groups(space[novel], ref, n_night=m, min_size=args.min_size, seed=seed):
                    night.groups.append((g.tightness, g.members.size, int(is_new[novel[g.members]].sum())))
                nights.append(night)
            out[(seed, kind)] = nights
        log.info("pair %s seed %d: %d nights in %.0f s", held, seed, 2 * args.nights, time.perf_counter() - t1)
    return out


def summarise(nights: list[Night], thr: float, margin: float, min_size: int) -> dict[str, float]:
    """Counts and shares of a list of nights under the candidate rule (``is_candidate``) at ``max_tightness = thr``."""
    cand_nights = members = held_members = flag_nights = events = 0
    n_held = n_held_flagged = 0
    for nt in nights:
        cands = [g for g in nt.groups if g[1] >= min_size and g[0] <= thr]  # imgclust.models.candidates.is_candidate
        above = nt.flagged_share > margin
        cand_nights += bool(cands)
        flag_nights += above
        events += above or bool(cands)
        members += sum(g[1] for g in cands)
        held_members += sum(g[2] for g in cands)
        n_held += nt.n_held
        n_held_flagged += nt.n_held_flagged
    return {"nights": len(nights), "cand": cand_nights, "flag": flag_nights, "event": events,
            "purity": held_members / members if members else float("nan"),
            "covered": held_members / n_held if n_held else float("nan"),
            "covered_flagged": held_members / n_held_flagged if n_held_flagged else float("nan"),
            "members": members}


def _pct(x: float) -> str:
    return "-" if np.isnan(x) else f"{x:.1%}"


def main(argv: list[str] | None = None) -> None:
    setup_logging(quiet=("imgclust", "numba", "faiss"))
    args = parse_args(argv)
    from imgclust.models.candidates import MIN_SAMPLES, default_min_size

    t0 = time.perf_counter()
    x_train, y_train, x_test, y_test = fashion_mnist_splits()
    x_train = x_train.reshape(len(x_train), -1).astype(np.float32) / 255.0
    x_test = x_test.reshape(len(x_test), -1).astype(np.float32) / 255.0
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[tuple[str, int, str], list[Night]] = {}
    for pair in pairs:
        held = tuple(int(c) for c in pair.split("-"))
        for (seed, kind), nights in run_pair(x_train, y_train, x_test, y_test, held, seeds, args).items():  # type: ignore[arg-type]
            results[(pair, seed, kind)] = nights
    _, margin = event_margins(args.night_size, args.rate, 5_000)  # NoveltyScorer's default calibration rows
    min_size = args.min_size or default_min_size(args.night_size)
    kinds = list(dict.fromkeys(k for _, _, k in results))
    print(f"\nFashion-MNIST pixel recipe (IPCA 50) fitted on the train images of 8 classes; NoveltyScorer defaults "
          f"(k=20, 10,000 references, 5,000 calibration rows, rate {args.rate:.0%}); held-out pairs "
          f"{', '.join(pairs)}; seeds {', '.join(map(str, seeds))}; {args.nights} nights of {args.night_size:,} "
          f"test images per kind and run; find_candidates min_size={min_size}, HDBSCAN min_samples={MIN_SAMPLES}; "
          f"Beta-Binomial 0.999 margin {margin:.1%} of the night; {os.cpu_count()} CPUs; "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    print(f"max_tightness = {args.max_tightness}:\n")
    print("| pair | seed | night | nights | nights with >= 1 candidate | candidate purity | held-out covered "
          "(of flagged held-out) | nights above margin | combined event |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seed in seeds:
        for kind in kinds:
            for pair in [*pairs, "all"]:
                nights = [n for p in pairs for n in results[(p, seed, kind)]] if pair == "all" else \
                    results[(pair, seed, kind)]
                s = summarise(nights, args.max_tightness, margin, min_size)
                cells = (f"{_pct(s['covered'])} ({_pct(s['covered_flagged'])})" if kind != "known only" else "-")
                name = f"**{pair}**" if pair == "all" else pair
                print(f"| {name} | {seed} | {kind} | {s['nights']} | {s['cand']} | {_pct(s['purity'])} | {cells} | "
                      f"{s['flag']} | {s['event']} |")
    print("\nSweep of max_tightness (all pairs; known-only nights with a candidate are false candidate nights):\n")
    print("| max_tightness | seed | known-only nights with a candidate | held-out nights with a candidate | "
          "candidate purity | held-out covered | combined event, known-only | combined event, held-out |")
    print("|---|---|---|---|---|---|---|---|")
    for thr in (float(t) for t in args.sweep.split(",")):
        for seed in seeds:
            k = summarise([n for p in pairs for n in results[(p, seed, kinds[0])]], thr, margin, min_size)
            h = summarise([n for p in pairs for n in results[(p, seed, kinds[1])]], thr, margin, min_size)
            print(f"| {thr:g} | {seed} | {k['cand']} of {k['nights']} | {h['cand']} of {h['nights']} | "
                  f"{_pct(h['purity'])} | {_pct(h['covered'])} | {k['event']} of {k['nights']} | "
                  f"{h['event']} of {h['nights']} |")
    tk = [g[0] for (_, _, kind), ns in results.items() if kind == kinds[0] for n in ns for g in n.groups]
    th = [g[0] for (_, _, kind), ns in results.items() if kind != kinds[0] for n in ns for g in n.groups]
    print(f"\nHDBSCAN groups of dense novel rows: {len(tk)} in known-only nights (tightness "
          f"{min(tk, default=float('nan')):.3f} to {max(tk, default=float('nan')):.3f}), {len(th)} in held-out nights "
          f"(tightness {min(th, default=float('nan')):.3f} to {max(th, default=float('nan')):.3f})")


if __name__ == "__main__":
    main()
