"""Benchmark: CPU throughput of the foundation-model backbones next to resnet50, in one run.

For every backbone (random weights, seeded: speed does not depend on the weight values):

* **embed img/s**: ``backbone.embed`` on batches of ``--batch-size`` images preprocessed beforehand,
  i.e. the model's forward pass as the extract stage runs it (torch's default thread count in this
  process). One full batch of warm-up is excluded. The ratio column is against resnet50.
* **preprocess img/s**: ``backbone.preprocess`` (resize with the entry's filter and crop,
  normalise) on the decoded images, one thread: the per-image CPU work added before the model.

Images: seeded random crops (short side 200-427 px, aspect 3:4 to 4:3) of scikit-learn's two sample
photos, so every backbone resizes real photographs of mixed sizes. Before each timed part the
script waits for the machine to be quiet (``quiet.py``) and records how busy it was.

    .venv/bin/python benchmarks/foundation_cpu.py            # about 6 minutes on 2 cores
    .venv/bin/python benchmarks/foundation_cpu.py --quick    # smoke run: 2 batches of 4
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _common import parse_benchmark_args, parse_image_counts
from quiet import wait_for_quiet

log = logging.getLogger("benchmarks.foundation_cpu")

DEFAULT = ("resnet50:96,dinov2-vits14:96,dinov2-vitb14:64,siglip-vitb16:64,convnext-tiny:96,"
           "efficientnet-b0:96,clip-vitb32:96,clip-vitl14:32")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default=DEFAULT, help="comma-separated NAME:IMAGES (default: %(default)s); "
                   "the first is the reference of the ratio column")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="seed of the image crops and of the random weights")
    args = parse_benchmark_args(p, argv, quick="batch 4, 8 images per backbone")
    if args.quick:
        args.batch_size = 4
    args.backbones = parse_image_counts(p, args.backbones, example="resnet50:96,clip-vitb32:96",
                                        quick=8 if args.quick else None)
    return args


def photos(n: int, seed: int) -> list[np.ndarray]:
    """``n`` uint8 RGB crops of scikit-learn's sample photos (427x640), mixed sizes, seeded."""
    from sklearn.datasets import load_sample_images

    sources = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        short = int(rng.integers(200, 428))
        long = min(int(short * rng.uniform(1.0, 4 / 3)), 640)
        h, w = (short, long) if rng.random() < 0.7 else (long if long <= 427 else 427, short)
        top, left = int(rng.integers(0, 428 - h)), int(rng.integers(0, 641 - w))
        crop = src[top:top + h, left:left + w]
        out.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return out


def timed(fn: Callable[[], int]) -> float:
    """Items per second of ``fn`` (which returns how many items it processed)."""
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)


def run_backbone(name: str, n_images: int, args: argparse.Namespace, images: list[np.ndarray]) -> dict[str, Any]:
    import torch

    from imgclust.extract.backbones import clear_backbone_cache, create_backbone

    clear_backbone_cache()
    t0 = time.perf_counter()
    backbone = create_backbone(name, weights="random", seed=args.seed)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in backbone.module.parameters()) / 1e6  # type: ignore[attr-defined]
    bs = args.batch_size
    busy_prep = wait_for_quiet(args.max_busy, args.max_wait)
    with _one_thread():
        prep_rate = timed(lambda: len([backbone.preprocess(img) for img in images[:n_images]]))
    tensors = [backbone.preprocess(images[i % len(images)]) for i in range(n_images + bs)]
    warm, rest = torch.stack(tensors[:bs]), tensors[bs:]
    batches = [torch.stack(rest[i:i + bs]) for i in range(0, n_images, bs)]
    backbone.embed(warm)  # warm-up: one full batch, excluded
    busy_embed = wait_for_quiet(args.max_busy, args.max_wait)
    embed_rate = timed(lambda: sum(backbone.embed(b).shape[0] for b in batches))
    log.info("%s: %.2f img/s embed, %.0f img/s preprocess (build %.1f s)", name, embed_rate, prep_rate, build_s)
    prep = backbone.preprocessing
    return {"name": name, "weights": backbone.weights_id, "dim": backbone.dim, "params": params,
            "input": f"{prep.input_size} {prep.resize.replace('short_side_center_crop', 'crop')}"
                     f" {prep.interpolation} {prep.crop_pct:g}",
            "images": n_images, "embed": embed_rate, "prep": prep_rate, "busy": (busy_prep, busy_embed)}


class _one_thread:
    """Run a block with ``torch.set_num_threads(1)`` (preprocessing is PIL + numpy in one thread)."""

    def __enter__(self) -> None:
        import torch

        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self._threads)


def table(rows: list[dict[str, Any]], batch_size: int) -> str:
    ref = rows[0]
    lines = [f"| backbone (weights) | dim | params (M) | input (size, resize, filter, crop_pct) | images | "
             f"embed img/s (batch {batch_size}) | embed vs {ref['name']} | preprocess img/s (1 thread) | "
             "others' CPU % before preprocess/embed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} ({r['weights']}) | {r['dim']} | {r['params']:.1f} | {r['input']} | {r['images']} | "
                     f"{r['embed']:.2f} | {r['embed'] / ref['embed']:.2f} | {r['prep']:.0f} | "
                     f"{r['busy'][0]:.0f}/{r['busy'][1]:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in (log.name, "benchmarks.quiet"):  # open_clip logs its build steps on the root logger at INFO
        logging.getLogger(name).setLevel(logging.INFO)
    import platform

    import torch

    t0 = time.perf_counter()
    images = photos(max(n for _, n in args.backbones), args.seed)
    rows = [run_backbone(name, n, args, images) for name, n in args.backbones]
    from importlib.metadata import version

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), timm {version('timm')}, "
          f"open_clip {version('open_clip_torch')}, Python {platform.python_version()}; "
          f"total {time.perf_counter() - t0:.0f} s\n")
    print(table(rows, args.batch_size))


if __name__ == "__main__":
    main()
