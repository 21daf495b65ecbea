"""Report sections that explain a model's structure: how its number of clusters was chosen (the ``k=auto``
sweep, :mod:`imgclust.cluster.choose_k`) and its cluster tree (:mod:`imgclust.cluster.hierarchy`) with thumbnails at the nodes.

Both read what the fit recorded (``model.json``'s ``k_sweep``, the model's ``tree`` part) and draw with PIL;
:func:`imgclust.models.report.build_report` calls them and embeds the pictures in ``index.html``.
"""
from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

__all__ = ["draw_sweep", "hdbscan_summary", "k_choice_section", "tree_section"]

_PANEL_W, _PANEL_H, _PAD = 340, 170, 36
_LINE = (31, 119, 180)
_CHOSEN = (214, 39, 40)


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _panel(name: str, ks: Sequence[int], values: Sequence[float | None], chosen: int, used: bool) -> Image.Image:
    """One criterion's value against k (x linear in k), the chosen k as a red vertical line."""
    font = ImageFont.load_default()
    img = Image.new("RGB", (_PANEL_W, _PANEL_H), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    title = f"{name}{' (the rule)' if used else ''}"
    draw.text((_PAD, 4), title, fill=(0, 0, 0), font=font)
    x0, x1, y0, y1 = _PAD, _PANEL_W - 10, 20, _PANEL_H - 22
    draw.rectangle((x0, y0, x1, y1), outline=(160, 160, 160))
    finite = _finite(values)
    lo_k, hi_k = min(ks), max(ks)
    span_k = max(hi_k - lo_k, 1)

    def x_of(k: int) -> float:
        return x0 + (x1 - x0) * (k - lo_k) / span_k

    draw.text((x0, y1 + 4), str(lo_k), fill=(0, 0, 0), font=font)
    draw.text((x1 - 14, y1 + 4), str(hi_k), fill=(0, 0, 0), font=font)
    draw.line((x_of(chosen), y0, x_of(chosen), y1), fill=_CHOSEN, width=2)
    draw.text((min(x_of(chosen) + 3, x1 - 40), y1 + 4), f"k={chosen}", fill=_CHOSEN, font=font)
    if not finite:
        draw.text((x0 + 8, (y0 + y1) // 2), "not computed", fill=(120, 120, 120), font=font)
        return img
    lo, hi = min(finite), max(finite)
    span = hi - lo if hi > lo else 1.0
    draw.text((2, y0), f"{hi:.3g}", fill=(0, 0, 0), font=font)
    draw.text((2, y1 - 10), f"{lo:.3g}", fill=(0, 0, 0), font=font)
    points = [(x_of(k), y1 - (y1 - y0) * (float(v) - lo) / span) for k, v in zip(ks, values, strict=True)
              if v is not None and math.isfinite(float(v))]
    if len(points) > 1:
        draw.line(points, fill=_LINE, width=2)
    for x, y in points:
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=_LINE)
    return img


def draw_sweep(sweep: dict[str, Any]) -> Image.Image:
    """Small multiples, one panel per criterion of a recorded sweep (``KSweep.to_json()``): value against k, the
    chosen k marked; the rule's criterion first."""
    ks = [int(k) for k in sweep["ks"]]
    names = sorted(sweep["scores"], key=lambda n: (n != sweep["criterion"], n))
    panels = [_panel(n, ks, sweep["scores"][n], int(sweep["chosen"]), n == sweep["criterion"]) for n in names]
    cols = min(2, max(len(panels), 1))
    rows = max(1, math.ceil(len(panels) / cols))
    img = Image.new("RGB", (cols * _PANEL_W, rows * _PANEL_H), (255, 255, 255))
    for i, panel in enumerate(panels):
        img.paste(panel, ((i % cols) * _PANEL_W, (i // cols) * _PANEL_H))
    return img


def hdbscan_summary(info: dict[str, Any]) -> str:
    """``(parameters); x% of the fitted images were noise, ...`` of an HDBSCAN model's ``model.json`` ``info``, as
    the report and the run summary say it."""
    params = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in info.get("hdbscan", {}).items())
    return (f"({params}); {100 * float(info.get('noise_share', 0.0)):.1f}% of the fitted images were noise, "
            "labelled with their nearest cluster at a low confidence")


def k_choice_section(info: dict[str, Any], write: Callable[[str, bytes], None],
                     png: Callable[[Image.Image], bytes]) -> list[str]:
    """HTML (and ``k_sweep.png``) explaining how the model's k was chosen, from its ``model.json`` entries ``info``
    (``ClusterModel.meta`` with ``n_clusters``); a one-line note when k was given or the method found its own."""
    e = html.escape
    sweep = info.get("k_sweep")
    cluster = info.get("cluster", {})
    if not sweep:
        if cluster.get("method") == "hdbscan":
            how = f"HDBSCAN found {info.get('n_clusters')} clusters itself {hdbscan_summary(info)}"
        else:
            how = f"k={cluster.get('k')} was given"
        return ["<h2>Number of clusters</h2>", f'<p class="note">{e(how)}; no sweep ran.</p>']
    if not sweep["scores"]:  # too few rows to sweep: a rule of thumb chose k
        return ["<h2>Number of clusters</h2>", f'<p class="note">{e(sweep["reason"])} {e(sweep["rule"])}</p>']
    write("k_sweep.png", png(draw_sweep(sweep)))
    note = (f"k={sweep['chosen']} chosen among {len(sweep['ks'])} values of k from {min(sweep['ks'])} to "
            f"{max(sweep['ks'])} on {sweep['n_rows']} sampled rows in {sweep['seconds']:.1f} s. Rule: {sweep['rule']} "
            f"This run: {sweep['reason']}")
    return ["<h2>Number of clusters</h2>", f'<p class="note">{e(note)}</p>',
            '<img src="k_sweep.png" alt="criteria against k, the chosen k marked">']


def tree_section(tree: Any, leaf_images: dict[int, list[Image.Image | None]], leaf_labels: dict[int, str],
                 write: Callable[[str, bytes], None], png: Callable[[Image.Image], bytes]) -> list[str]:
    """HTML (and ``tree.png``) of the model's cluster tree (:class:`imgclust.cluster.hierarchy.ClusterTree`) with
    thumbnails at its nodes; ``leaf_images``/``leaf_labels`` are keyed by the clusterer's own index."""
    from imgclust.cluster.hierarchy import draw_tree

    if tree is None:
        return []
    write("tree.png", png(draw_tree(tree, leaf_images, leaf_labels=leaf_labels)))
    note = (f"The merge tree of the {tree.n_leaves_} clusters (size-weighted Ward on their means). "
            "Coarser labels without refitting: imgclust labels --store STORE --level N (N groups, 1.."
            f"{tree.n_leaves_}).")
    return ["<h2>Cluster tree</h2>", f'<p class="note">{html.escape(note)}</p>',
            '<img src="tree.png" alt="cluster tree with thumbnails">']
