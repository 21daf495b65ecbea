"""Static HTML report of one model version: montages per cluster, a 2-D map, sizes and metrics.

``reports/<run>/`` holds (every file written through :meth:`Store.write_bytes`, so s3 works too):

* ``cluster_<id>.png`` (``cluster_novel.png`` for id -1): up to ``thumbs_per_cluster`` thumbnails in
  row-major order on a grid of ``ceil(sqrt(n))`` columns, ``thumb_size`` px squares :data:`GAP` px
  apart. The members shown are a seeded uniform sample of the cluster (seed ``(seed, id + 1)`` over
  the members sorted by ``image_id``), not the members nearest the centroid: a random sample shows
  the cluster's spread, including its bad members, which is what a reviewer needs to see. A source
  that cannot be read or decoded becomes a plain :data:`MISSING_RGB` tile; the count is logged, shown
  in the HTML and returned.
* ``map.png``: a seeded sample of at most ``map_points`` labeled images, their features embedded with
  the model (``model.embed``) and projected to 2-D by PCA (numpy SVD, Pearson 1901), one dot per
  image coloured by cluster id, with a legend.
* ``sizes.png``: one horizontal bar per cluster (largest first) with its id, name and count.
* ``duplicates_<n>.png``: when ``imgclust dedup`` has run for the model's features, the largest
  near-duplicate groups (:mod:`imgclust.models.dedup`) as thumbnail strips, representative first.
* ``candidate_<date>_<i>.png``: the montages of the candidate new clusters the nightly runs found for the model
  (:mod:`imgclust.models.novelty_night`), copied from ``novelty/<model_id>/``.
* ``k_sweep.png``: when ``k=auto`` chose the number of clusters, the sweep's criteria against k with the chosen k
  marked; ``tree.png``: the model's cluster tree with thumbnails at its nodes (:mod:`imgclust.models.report_model`).
* ``index.html`` (written last): model id, run, scalar metrics, the two charts, one section per cluster, then
  how k was chosen, the cluster tree, the near-duplicate groups and the candidate new clusters. All text is escaped with :func:`html.escape`; images are linked by relative path.

Human cluster names live in ``cluster_names.csv`` at the store root (``cluster_id,name``, user-edited);
see :func:`load_cluster_names` and :func:`write_cluster_names_template`. Names a CLIP model proposed
(``cluster_names_suggested.csv``, :mod:`imgclust.models.naming`) for the reported model are tabled beside them.
"""
from __future__ import annotations

import colorsys
import csv
import datetime as dt
import html
import io
import logging
import math
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageDraw, ImageFont, ImageOps

from imgclust.exceptions import ConfigError, CorruptArtifactError, ImageDecodeError, StoreError
from imgclust.extract.images import decode_image
from imgclust.io.features import iter_feature_batches
from imgclust.io.layout import LABELS_DIR, NAMES_FILE, candidates_glob, report_dir
from imgclust.io.manifest import read_manifest
from imgclust.io.sources import read_uri
from imgclust.io.store import Store
from imgclust.models.dedup import near_duplicate_search_space, read_near_duplicates
from imgclust.models.labels import load_model_cached, read_labels
from imgclust.models.report_model import k_choice_section, tree_section

log = logging.getLogger(__name__)

GAP = 2  # px between montage tiles and around the grid
MISSING_RGB = (128, 128, 128)  # a thumbnail whose source cannot be read or decoded
_TILE_BG = (255, 255, 255)
_NOVEL_RGB = (160, 160, 160)
_TAB20 = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
          (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
          (219, 219, 141), (158, 218, 229))
_RUN_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_READ_THREADS = 8


@dataclass(frozen=True)
class ReportConfig:
    """What a report shows. ``seed`` fixes every sample (montages and map)."""

    thumbs_per_cluster: int = 36
    thumb_size: int = 64
    map_points: int = 5000
    seed: int = 0
    duplicate_groups: int = 12  # largest near-duplicate groups shown (when `imgclust dedup` has run)
    thumbs_per_group: int = 8

    def __post_init__(self) -> None:
        for name, lo, hi in (("thumbs_per_cluster", 1, 10_000), ("thumb_size", 8, 1024),
                             ("map_points", 1, 10_000_000), ("seed", 0, 2**63 - 1), ("duplicate_groups", 0, 10_000),
                             ("thumbs_per_group", 2, 1000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"ReportConfig.{name} must be an int in [{lo}, {hi}], got {value!r}")


# ---- cluster names --------------------------------------------------------------------------
def load_cluster_names(store: Store) -> dict[int, str]:
    """``cluster_names.csv`` as ``{stable cluster id: name}``; {} when the file does not exist.

    The header ``cluster_id,name`` is required; blank lines and rows with an empty name are skipped.
    A malformed file raises :class:`CorruptArtifactError` naming the file and line.
    """
    if not store.exists(NAMES_FILE):
        return {}
    where = store.uri(NAMES_FILE)
    try:
        text = store.read_bytes(NAMES_FILE).decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CorruptArtifactError(f"{where} is not UTF-8 text ({err}); save it as UTF-8 CSV") from err
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header] != ["cluster_id", "name"]:
            raise CorruptArtifactError(f"{where} line 1: the header must be 'cluster_id,name', got {header!r}")
        names: dict[int, str] = {}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            if len(row) != 2:
                raise CorruptArtifactError(f"{where} line {line}: expected 2 fields (cluster_id,name), got "
                                           f"{len(row)}; quote names that contain commas")
            try:
                cid = int(row[0].strip())
            except ValueError:
                raise CorruptArtifactError(f"{where} line {line}: cluster_id {row[0]!r} is not an integer") from None
            if cid < -1:
                raise CorruptArtifactError(f"{where} line {line}: cluster_id {cid} is negative (only -1 = novel)")
            if cid in names:
                raise CorruptArtifactError(f"{where} line {line}: cluster_id {cid} appears twice; keep one row")
            if row[1].strip():
                names[cid] = row[1].strip()
    except csv.Error as err:
        raise CorruptArtifactError(f"{where} line {reader.line_num}: {err}") from err
    return names


def write_cluster_names_template(store: Store, cluster_ids: Iterable[int]) -> bool:
    """Create ``cluster_names.csv`` with one empty-named row per id; never touches an existing file.

    Returns whether the file was written.
    """
    if store.exists(NAMES_FILE):
        return False
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["cluster_id", "name"])
    writer.writerows([cid, ""] for cid in sorted({int(c) for c in cluster_ids}))
    store.write_bytes(NAMES_FILE, buf.getvalue().encode())
    return True


# ---- drawing helpers --------------------------------------------------------------------------
def cluster_color(cluster_id: int) -> tuple[int, int, int]:
    """Fixed RGB colour of a cluster id (grey for -1), the same in every chart."""
    if cluster_id < 0:
        return _NOVEL_RGB
    if cluster_id < len(_TAB20):
        return _TAB20[cluster_id]
    r, g, b = colorsys.hsv_to_rgb((cluster_id * 0.618033988749895) % 1.0, 0.65, 0.85)
    return int(r * 255), int(g * 255), int(b * 255)


def _drawable(text: str, font: Any) -> str:
    """``text`` the font can render (PIL's bitmap fallback font knows only Latin-1)."""
    try:
        font.getbbox(text)
        return text
    except UnicodeEncodeError:
        return text.encode("latin-1", "replace").decode("latin-1")


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: Any) -> int:
    box = draw.textbbox((0, 0), text, font=font)
    return int(box[2] - box[0])


def _clip(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    text = _drawable(text, font)
    if _text_width(draw, text, font) <= width:
        return text
    while text and _text_width(draw, text + "...", font) > width:
        text = text[:-1]
    return text + "..."


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=False)
    return buf.getvalue()


def _label(cluster_id: int, names: dict[int, str]) -> str:
    base = "novel" if cluster_id < 0 else str(cluster_id)
    return f"{base}: {names[cluster_id]}" if cluster_id in names else base


# ---- montages ---------------------------------------------------------------------------------
def _thumbnail(uri: str | None, size: int, storage_options: dict[str, Any] | None) -> Image.Image | None:
    """``size x size`` RGB tile of the image at ``uri``, aspect kept on white; None when unusable."""
    if uri is None:
        return None
    try:
        arr = decode_image(read_uri(uri, storage_options), mode="RGB")
    except (OSError, ValueError, ImageDecodeError) as err:
        log.debug("report thumbnail of %s unavailable: %s", uri, err)
        return None
    img = ImageOps.contain(Image.fromarray(arr), (size, size))
    tile = Image.new("RGB", (size, size), _TILE_BG)
    tile.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return tile


def montage(tiles: list[Image.Image | None], size: int) -> Image.Image:
    """Grid of ``len(tiles)`` tiles (None -> a :data:`MISSING_RGB` square), layout as in the module doc."""
    n = max(len(tiles), 1)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = Image.new("RGB", (GAP + cols * (size + GAP), GAP + rows * (size + GAP)), (235, 235, 235))
    missing = Image.new("RGB", (size, size), MISSING_RGB)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        out.paste(tile if tile is not None else missing, (GAP + c * (size + GAP), GAP + r * (size + GAP)))
    return out


# ---- map -------------------------------------------------------------------------------------
def pca_2d(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project ``Z`` (m, d) onto its first two principal axes: ``((m, 2) float64, (2,) variance ratio)``.

    Axis signs are fixed (largest loading positive) so the same data always gives the same picture;
    with d < 2 or m < 2 the missing axes are zeros.
    """
    Z = np.asarray(Z, np.float64)
    out = np.zeros((Z.shape[0], 2))
    ratio = np.zeros(2)
    if Z.shape[0] < 2 or Z.shape[1] == 0:
        return out, ratio
    Zc = Z - Z.mean(axis=0)
    _, S, Vt = np.linalg.svd(Zc, full_matrices=False)
    k = min(2, Vt.shape[0])
    axes = Vt[:k] * np.sign(Vt[:k][np.arange(k), np.abs(Vt[:k]).argmax(axis=1)])[:, None]
    out[:, :k] = Zc @ axes.T
    total = float(np.sum(S**2))
    if total > 0:
        ratio[:k] = S[:k] ** 2 / total
    return out, ratio


def _sample_embedded(store: Store, model_id: str, ids: list[str]) -> tuple[list[str], np.ndarray]:
    """Clustering-space embeddings ``(m, d)`` of those ``ids`` that have stored features, in ``ids`` order."""
    model = load_model_cached(store, model_id)
    wanted = set(ids)
    got_ids: list[str] = []
    parts: list[np.ndarray] = []
    for batch_ids, X in iter_feature_batches(store, model.extractor_key):
        keep = np.fromiter((i in wanted for i in batch_ids), bool, len(batch_ids))
        if keep.any():
            got_ids.extend(np.asarray(batch_ids, dtype=object)[keep].tolist())
            parts.append(model.embed(X[keep]))
    if not parts:
        return [], np.zeros((0, 2), np.float32)
    Z = np.concatenate(parts)
    pos = {i: n for n, i in enumerate(got_ids)}
    order = [pos[i] for i in ids if i in pos]
    return [got_ids[j] for j in order], Z[order]


def draw_map(xy: np.ndarray, cluster_ids: np.ndarray, names: dict[int, str], *,
             size: int = 640, legend_width: int = 240) -> Image.Image:
    """Scatter of ``xy`` (m, 2) coloured by ``cluster_ids`` (m,), equal axis scales, legend on the right."""
    img = Image.new("RGB", (size + legend_width, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    pad = 12
    if len(xy):
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        scale = (size - 2 * pad) / max(float(np.max(hi - lo)), 1e-12)
        centre = (lo + hi) / 2
        pts = (xy - centre) * scale * np.array([1.0, -1.0]) + size / 2  # y up
        for (x, y), cid in zip(pts, cluster_ids, strict=True):
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=cluster_color(int(cid)))
    else:
        draw.text((pad, pad), "no features found for the sampled images", fill=(0, 0, 0), font=font)
    draw.line((size, 0, size, size), fill=(200, 200, 200))
    present = sorted({int(c) for c in cluster_ids}, key=lambda c: (c < 0, c))
    row = 16
    fits = (size - 2 * pad) // row
    shown = present if len(present) <= fits else present[: fits - 1]
    for i, cid in enumerate(shown):
        y = pad + i * row
        draw.rectangle((size + pad, y + 2, size + pad + 10, y + 12), fill=cluster_color(cid))
        draw.text((size + pad + 16, y), _clip(draw, _label(cid, names), font, legend_width - 2 * pad - 16),
                  fill=(0, 0, 0), font=font)
    if len(shown) < len(present):
        draw.text((size + pad, pad + len(shown) * row), f"... {len(present) - len(shown)} more", fill=(0, 0, 0),
                  font=font)
    return img


def draw_sizes(sizes: dict[int, int], names: dict[int, str], *, width: int = 720) -> Image.Image:
    """Horizontal bars, largest cluster first: label, bar, count."""
    font = ImageFont.load_default()
    row, pad = 18, 10
    order = sorted(sizes, key=lambda c: (-sizes[c], c))
    img = Image.new("RGB", (width, 2 * pad + row * max(len(order), 1)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    label_w = min(220, max([_text_width(draw, _drawable(_label(c, names), font), font) for c in order] + [20]))
    count_w = _text_width(draw, str(max(sizes.values(), default=0)), font) + 8
    bar_max = width - 2 * pad - label_w - 8 - count_w
    top = max(sizes.values(), default=1)
    for i, cid in enumerate(order):
        y = pad + i * row
        draw.text((pad, y + 3), _clip(draw, _label(cid, names), font, label_w), fill=(0, 0, 0), font=font)
        x0 = pad + label_w + 8
        x1 = x0 + max(1, round(bar_max * sizes[cid] / top))
        draw.rectangle((x0, y + 2, x1, y + row - 3), fill=cluster_color(cid))
        draw.text((x1 + 4, y + 3), str(sizes[cid]), fill=(0, 0, 0), font=font)
    return img


# ---- HTML ------------------------------------------------------------------------------------
_CSS = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}img{max-width:100%}"
        "section{margin:1.5em 0}.note{color:#666}")


def _scalar_metrics(metrics: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(name, text) of the scalar entries (floats to 4 significant digits); dicts/lists are skipped."""
    out = []
    for k, v in (metrics or {}).items():
        v = v.item() if isinstance(v, np.generic) else v
        if isinstance(v, (bool, int, float, str, type(None))):
            out.append((str(k), f"{v:.4g}" if isinstance(v, float) else str(v)))
    return out


def _html(model_id: str, run: str, metrics: list[tuple[str, str]], sizes: dict[int, int],
          names: dict[int, str], failed: dict[int, int], shown: dict[int, int], files: dict[int, str],
          map_caption: str, duplicates: list[str], suggested: Iterable[str] = ()) -> str:
    e = html.escape
    title = f"imgclust report: model {model_id}, run {run}"
    summary = (f"{sum(sizes.values())} labeled images in {len(sizes)} clusters; generated "
               f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>",
           f'<p class="note">{e(summary)}</p>', "<h2>Metrics</h2>"]
    if metrics:
        out.append("<table><tr><th>metric</th><th>value</th></tr>")
        out.extend(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in metrics)
        out.append("</table>")
    else:
        out.append('<p class="note">No metrics were given.</p>')
    out += ["<h2>Cluster sizes</h2>", '<img src="sizes.png" alt="cluster sizes">',
            "<h2>Map</h2>", f'<p class="note">{e(map_caption)}</p>', '<img src="map.png" alt="2-D map">',
            *suggested, "<h2>Clusters</h2>"]
    for cid in sorted(sizes, key=lambda c: (c < 0, c)):
        head = "Cluster -1 (novel)" if cid < 0 else f"Cluster {cid}"
        if cid in names:
            head += f": {names[cid]}"
        note = f"{sizes[cid]} images; {shown[cid]} shown (seeded random sample)"
        if failed[cid]:
            note += f"; {failed[cid]} unavailable (source missing or undecodable), shown as grey tiles"
        out += [f'<section id="cluster-{cid}">', f"<h3>{e(head)}</h3>", f'<p class="note">{e(note)}</p>',
                f'<img src="{e(files[cid])}" alt="{e(head)}">', "</section>"]
    out += duplicates
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _near_duplicate_section(store: Store, extractor_key: str, config: ReportConfig, write: Any,
                            storage_options: dict[str, Any] | None) -> list[str]:
    """HTML of the largest near-duplicate groups (``imgclust.models.dedup``) as thumbnail strips, representative
    first then by decreasing similarity; nothing when ``imgclust dedup`` has not run for these features."""
    found = read_near_duplicates(store, extractor_key)
    if found is None or config.duplicate_groups == 0:
        return []
    table, meta = found
    e = html.escape
    summary = (f"{meta['groups']} groups holding {meta['images_in_groups']} of {meta['rows']} images (cosine "
               f"similarity >= {meta['threshold']} among {meta['k']} nearest neighbours, computed "
               f"{meta['computed_at']}); the {min(config.duplicate_groups, meta['groups'])} largest shown")
    out = ["<h2>Near-duplicate groups</h2>", f'<p class="note">{e(summary)}</p>']
    rows = sorted(zip(table.column("group_id").to_pylist(), table.column("image_id").to_pylist(),
                      table.column("similarity").to_pylist(), table.column("group_size").to_pylist(), strict=True),
                  key=lambda r: (-r[3], r[0], r[0] != r[1], -r[2], r[1]))
    groups: dict[str, list[tuple[str, float]]] = {}
    for gid, iid, sim, _ in rows:
        if gid in groups or len(groups) < config.duplicate_groups:
            groups.setdefault(gid, []).append((iid, sim))
    wanted = pa.array(sorted({i for m in groups.values() for i, _ in m[:config.thumbs_per_group]}), pa.string())
    manifest = read_manifest(store, columns=["image_id", "uri"])
    manifest = manifest.filter(pc.is_in(manifest.column("image_id"), value_set=wanted))
    uris = dict(zip(manifest.column("image_id").to_pylist(), manifest.column("uri").to_pylist(), strict=True))
    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        for n, (gid, members) in enumerate(groups.items()):
            shown = members[:config.thumbs_per_group]
            tiles = list(pool.map(lambda m: _thumbnail(uris.get(m[0]), config.thumb_size, storage_options), shown))
            strip = Image.new("RGB", (GAP + len(tiles) * (config.thumb_size + GAP), config.thumb_size + 2 * GAP),
                              _TILE_BG)
            for j, tile in enumerate(tiles):
                strip.paste(tile or Image.new("RGB", (config.thumb_size,) * 2, MISSING_RGB),
                            (GAP + j * (config.thumb_size + GAP), GAP))
            write(f"duplicates_{n}.png", _png(strip))
            note = (f"{len(members)} images, representative {gid[:12]}; similarity to it "
                    f"{min(s for _, s in members):.3f}-{max(s for _, s in members):.3f}")
            out += [f'<p class="note">{e(note)}</p>', f'<img src="duplicates_{n}.png" alt="{e(note)}">']
    return out


def _candidates_section(store: Store, model_id: str, write: Any) -> list[str]:
    """HTML of the candidate new clusters the nightly runs found for ``model_id``
    (``novelty/<model_id>/date=*/candidates.json``, :mod:`imgclust.models.novelty_night`), newest night first, with their
    montages copied into the report; nothing when no night found any."""
    e = html.escape
    out: list[str] = []
    for rel in sorted(store.glob(candidates_glob(model_id)), reverse=True):
        record = store.read_json(rel)
        for c in record.get("candidates", []):
            name = f"candidate_{record['date']}_{c['candidate']}.png"
            write(name, store.read_bytes(c["montage"]))
            note = (f"night {record['date']}: candidate {c['candidate']}, {c['size']} of the night's "
                    f"{record['novel']} novel images, tightness {c['tightness']}")
            out += [f'<p class="note">{e(note)}</p>', f'<img src="{e(name)}" alt="{e(note)}">']
    if out:
        out = ["<h2>Candidate new clusters</h2>",
               '<p class="note">Groups of novel images (a kind the model was not fitted on) found by the nightly '
               "runs; the novelty event starts a recluster that gives them clusters of their own.</p>", *out]
    return out


# ---- the report ------------------------------------------------------------------------------
def build_report(store: Store, model_id: str, *, run: str, metrics: dict[str, Any] | None = None,
                 names: dict[int, str] | None = None, config: ReportConfig = ReportConfig(),  # noqa: B008
                 storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``reports/<run>/`` for ``model_id`` (see the module docstring) and return a summary.

    ``metrics``: e.g. :func:`imgclust.models.labels.evaluate`'s dict (scalar entries are tabled). ``names``:
    stable id -> human name; None reads ``cluster_names.csv`` (pass ``{}`` for no names).
    ``storage_options``: fsspec options for reading the source images.

    Returns ``{"index": rel path of index.html, "files": [rel paths, index last], "clusters": count,
    "thumbnails_failed": count, "map_points": count}``.
    """
    if not _RUN_RE.match(run) or set(run) == {"."}:
        raise ConfigError(f"run {run!r} may only contain letters, digits, '_', '.' and '-'")
    names = load_cluster_names(store) if names is None else dict(names)
    labels = read_labels(store, model_id).select(["image_id", "cluster_id"])
    if labels.num_rows == 0:
        raise StoreError(f"model {model_id} has no labels in {store.uri(LABELS_DIR)}; label images first")
    labels = labels.take(pc.sort_indices(labels, [("image_id", "ascending")]))
    ids = np.asarray(labels.column("image_id").to_pylist(), dtype=object)
    cids = labels.column("cluster_id").to_numpy().astype(np.int64)
    base = report_dir(run)
    written: list[str] = []

    def write(name: str, data: bytes) -> None:
        store.write_bytes(f"{base}/{name}", data)
        written.append(f"{base}/{name}")

    # montages: a seeded sample per cluster, read through a small thread pool (sources may be remote)
    order = np.argsort(cids, kind="stable")
    uniq, starts = np.unique(cids[order], return_index=True)
    clusters = [int(c) for c in uniq]
    members = dict(zip(clusters, np.split(order, starts[1:]), strict=True))
    picks = {c: np.sort(np.random.default_rng((config.seed, c + 1)).choice(
        m, size=min(len(m), config.thumbs_per_cluster), replace=False)) for c, m in members.items()}
    wanted = pa.array(sorted({ids[i] for p in picks.values() for i in p}), pa.string())
    manifest = read_manifest(store, columns=["image_id", "uri"])
    manifest = manifest.filter(pc.is_in(manifest.column("image_id"), value_set=wanted))
    uris = dict(zip(manifest.column("image_id").to_pylist(), manifest.column("uri").to_pylist(), strict=True))
    sizes = {c: len(members[c]) for c in clusters}
    files = {c: "cluster_novel.png" if c < 0 else f"cluster_{c}.png" for c in clusters}
    failed: dict[int, int] = {}
    tiles_of: dict[int, list[Image.Image | None]] = {}
    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        for c in clusters:
            tiles = list(pool.map(lambda i: _thumbnail(uris.get(ids[i]), config.thumb_size, storage_options),
                                  picks[c]))
            tiles_of[c] = tiles
            failed[c] = sum(t is None for t in tiles)
            write(files[c], _png(montage(tiles, config.thumb_size)))
    n_failed = sum(failed.values())
    if n_failed:
        log.warning("report %s: %d of %d thumbnails unavailable (source missing or undecodable); drawn grey",
                    run, n_failed, sum(len(p) for p in picks.values()))

    # map: a seeded sample of labeled images, embedded by the model, PCA to 2-D
    rng = np.random.default_rng(config.seed)
    sample = np.sort(rng.choice(len(ids), size=min(len(ids), config.map_points), replace=False))
    map_ids, Z = _sample_embedded(store, model_id, [ids[i] for i in sample])
    cid_of = dict(zip(ids[sample].tolist(), cids[sample].tolist(), strict=True))
    xy, ratio = pca_2d(Z)
    write("map.png", _png(draw_map(xy, np.array([cid_of[i] for i in map_ids], np.int64), names)))
    write("sizes.png", _png(draw_sizes(sizes, names)))
    caption = (f"{len(map_ids)} of {len(ids)} labeled images (seeded sample), clustering space projected by "
               f"PCA; the axes explain {ratio[0]:.1%} and {ratio[1]:.1%} of the sample's variance")
    if len(map_ids) < len(sample):
        caption += f"; {len(sample) - len(map_ids)} sampled images have no stored features"
    model = load_model_cached(store, model_id)
    structure = (k_choice_section({**model.meta, "n_clusters": model.n_clusters}, write, _png)
                 + tree_section(model.tree, {raw: tiles_of.get(int(sid), []) for raw, sid in enumerate(model.stable_ids)},
                                {raw: _label(int(sid), names) for raw, sid in enumerate(model.stable_ids)}, write, _png))
    dedup_key = near_duplicate_search_space(store, model_id).key or model.extractor_key
    duplicates = structure + _near_duplicate_section(store, dedup_key, config, write,
                                                     storage_options) + _candidates_section(store, model_id, write)
    from imgclust.models.naming import suggestions_html  # naming reads cluster_names.csv through this module

    page = _html(model_id, run, _scalar_metrics(metrics), sizes, names, failed,
                 {c: len(p) for c, p in picks.items()}, files, caption, duplicates, suggestions_html(store, model_id))
    write("index.html", page.encode("utf-8"))
    log.info("report for model %s written to %s (%d clusters)", model_id, store.uri(base), len(clusters))
    return {"index": f"{base}/index.html", "files": written, "clusters": len(clusters),
            "thumbnails_failed": n_failed, "map_points": len(map_ids)}
