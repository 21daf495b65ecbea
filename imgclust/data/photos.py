"""Real photographs for tests and benchmarks: Debian's wallpapers and near-duplicate corpora made from them.

:func:`find_system_photos` lists the raster wallpapers that ``gnome-backgrounds``, ``mate-backgrounds``,
``sway-backgrounds`` and ``desktop-base`` install (JPEG, PNG, WebP; SVG and XML are not rasters), one
entry per distinct content, each with a *family* key: files that are one picture in several sizes,
orientations or light/dark/tinted versions share a family.

:func:`build_photo_variant_corpus` turns one photo per family into a folder of derived variants (crops,
rescales, re-encodes, flips, colour shifts, small rotations), so the near-duplicate groups are known by
construction: folder ``<group>/`` holds one source's variants and nothing else. It is seeded and
deterministic (same seed and sources: the same bytes), and its :class:`PhotoCorpus` says for every file
its group, variant kind and source.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from imgclust.exceptions import ConfigError, ImageDecodeError, UnknownNameError
from imgclust.extract.images import decode_image, image_size
from imgclust.io.sources import list_source

log = logging.getLogger(__name__)

PHOTO_PACKAGES: tuple[str, ...] = ("gnome-backgrounds", "mate-backgrounds", "sway-backgrounds", "desktop-base")
INSTALL_COMMAND: str = "apt-get install -y " + " ".join(PHOTO_PACKAGES)
RASTER_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")
MANIFEST_NAME: str = "photo_corpus.json"
THUMB_SIDE: int = 256


@dataclasses.dataclass(frozen=True)
class PhotoRoot:
    """A folder to search and the ``fnmatch`` patterns (relative to it) a file must match."""

    path: str
    include: tuple[str, ...] = ("*",)


#: /usr/share/backgrounds (gnome-, mate-, sway-backgrounds) and desktop-base's raster backgrounds (boot menu
#: and login screen; its desktop wallpapers are SVG, its plymouth sprites are not photos).
DEFAULT_PHOTO_ROOTS: tuple[PhotoRoot, ...] = (
    PhotoRoot("/usr/share/backgrounds"),
    PhotoRoot("/usr/share/desktop-base", ("*-theme/grub/*", "*-theme/login/*")),
)

#: Name rules that map the files of one picture to one family key (sizes, portrait crops, GNOME's -d/-l,
#: MATE's Dark/Light stripes and Ubuntu MATE's tinted versions); a ``*-theme`` folder is one family.
_FAMILY_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"_\d+x\d+"), ""),
    (re.compile(r"_Portrait$"), ""),
    (re.compile(r"-[dl]$"), ""),
    (re.compile(r"-(Dark|Light)$"), ""),
    (re.compile(r"^(Ubuntu-Mate)-\w+-(no-logo)$"), r"\1-\2"),
)


@dataclasses.dataclass(frozen=True)
class SystemPhoto:
    """One installed raster wallpaper: real ``path`` (symlinks resolved), content hash, header size, family."""

    path: Path
    sha256: str
    format: str
    width: int
    height: int
    family: str

    @property
    def pixels(self) -> int:
        """``width * height``."""
        return self.width * self.height


class PhotoRecord(NamedTuple):
    """One corpus file: its ``path``, near-duplicate ``group`` (its folder), variant ``kind`` and ``source``."""

    path: Path
    group: str
    kind: str
    source: Path


@dataclasses.dataclass(frozen=True)
class PhotoCorpus:
    """A photo-variant corpus on disk: ``records`` in path order, one per file under ``root``."""

    root: Path
    records: list[PhotoRecord]
    seed: int
    max_side: int | None
    _by_path: dict[Path, PhotoRecord] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_path", {r.path: r for r in self.records})

    def groups(self) -> dict[str, list[PhotoRecord]]:
        """Group id -> its records (path order); every group holds the variants of one source photo."""
        out: dict[str, list[PhotoRecord]] = {}
        for record in self.records:
            out.setdefault(record.group, []).append(record)
        return out

    def kinds(self) -> list[str]:
        """The variant kinds present, in :data:`VARIANT_KINDS` order."""
        present = {r.kind for r in self.records}
        return [k for k in VARIANT_KINDS if k in present]

    def group_of(self, path: str | os.PathLike[str]) -> str:
        """The group of the corpus file at ``path`` (absolute, or relative to ``root``)."""
        return self._by_path[self._key(path)].group

    def record_of(self, path: str | os.PathLike[str]) -> PhotoRecord:
        """The record of the corpus file at ``path`` (absolute, or relative to ``root``)."""
        return self._by_path[self._key(path)]

    def _key(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        p = p if p.is_absolute() else self.root / p
        if p not in self._by_path:
            raise UnknownNameError(f"{p} is not a file of the photo corpus under {self.root}")
        return p

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> PhotoCorpus:
        """Read the corpus that :func:`build_photo_variant_corpus` wrote under ``root``."""
        root = Path(root)
        meta = json.loads((root / MANIFEST_NAME).read_text())
        records = [PhotoRecord(root / r["path"], r["group"], r["kind"], Path(r["source"])) for r in meta["records"]]
        return cls(root=root, records=records, seed=meta["seed"], max_side=meta["max_side"])


# ---- the installed photos ------------------------------------------------------------------------
def photos_installed(roots: Sequence[PhotoRoot] = DEFAULT_PHOTO_ROOTS) -> bool:
    """Cheap probe for test markers: does any root hold a raster-named file its patterns select?

    Reads and decodes nothing and follows no symlinked folder; :func:`find_system_photos` says which are usable.
    """
    for root in roots:
        for folder, _dirs, files in os.walk(root.path):
            for name in files:
                rel = os.path.relpath(os.path.join(folder, name), root.path)
                if name.lower().endswith(RASTER_EXTENSIONS) and any(fnmatch.fnmatch(rel, p) for p in root.include):
                    return True
    return False


def find_system_photos(roots: Sequence[PhotoRoot] = DEFAULT_PHOTO_ROOTS, *, min_side: int = 480,
                       min_detail: float = 4.0) -> list[SystemPhoto]:
    """The installed raster wallpapers, one per content hash, sorted by path.

    Files are found by extension under ``roots`` (symlinks followed once, each resolved to its real
    path; of identical contents the first real path is kept) and must parse as JPEG/PNG/WebP. Dropped:
    a side under ``min_side`` (logos, 256 px solid tiles) and pictures with transparency whose grey
    standard deviation once composited on white (as :func:`~imgclust.extract.images.decode_image` does) is
    under ``min_detail``: overlays meant for a coloured desktop, blank over white.

    Raises:
        FileNotFoundError: nothing usable is installed; the message names the apt command.
    """
    by_hash: dict[str, tuple[Path, bytes]] = {}
    for path in sorted(_candidates(roots)):
        data = path.read_bytes()
        by_hash.setdefault(hashlib.sha256(data).hexdigest(), (path, data))
    found = [_describe(path, sha, data, min_side, min_detail) for sha, (path, data) in by_hash.items()]
    photos = sorted((p for p in found if p is not None), key=lambda p: p.path)
    if not photos:
        raise FileNotFoundError(
            f"no raster wallpapers of at least {min_side} px under {', '.join(r.path for r in roots)}; "
            f"install them with `{INSTALL_COMMAND}` (as root; `make test` does it)")
    log.info("found %d distinct wallpapers (%d families)", len(photos), len({p.family for p in photos}))
    return photos


def _candidates(roots: Sequence[PhotoRoot]) -> list[Path]:
    """Real paths of raster-named files under ``roots`` matching their patterns (symlinked folders once)."""
    out: set[Path] = set()
    for root in roots:
        if not os.path.isdir(root.path):
            continue
        for found in list_source(root.path, extensions=RASTER_EXTENSIONS):
            rel = os.path.relpath(found.uri, root.path)
            if any(fnmatch.fnmatch(rel, pattern) for pattern in root.include):
                out.add(Path(os.path.realpath(found.uri)))
    return sorted(out)


def _describe(path: Path, sha: str, data: bytes, min_side: int, min_detail: float) -> SystemPhoto | None:
    """The photo's header facts, or None (logged) when it is too small, blank over white or unreadable."""
    try:
        width, height = image_size(data)
        header = Image.open(io.BytesIO(data))  # trusted system file: PIL's own opener is fine here
        if min(width, height) < min_side:
            return None
        if _has_alpha(header):
            grey = Image.fromarray(decode_image(data, mode="L"))
            grey.thumbnail((256, 256), Image.Resampling.BILINEAR)
            detail = float(np.asarray(grey, dtype=np.float32).std())
            if detail < min_detail:
                log.info("skipping %s: grey std %.1f < min_detail=%.1f once composited on white", path, detail,
                         min_detail)
                return None
    except (ImageDecodeError, OSError) as err:
        log.warning("skipping %s: %s", path, err)
        return None
    return SystemPhoto(path=path, sha256=sha, format=header.format or "?", width=width, height=height,
                       family=photo_family(path))


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def photo_family(path: str | os.PathLike[str]) -> str:
    """Family key of an installed wallpaper: ``<folder>/<stem without size/orientation/tone>``, or the
    ``*-theme`` folder for desktop-base's themes."""
    p = Path(path)
    for i, part in enumerate(p.parts[:-1]):
        if part.endswith("-theme"):
            return str(Path(*p.parts[: i + 1]))
    stem = p.stem
    for pattern, repl in _FAMILY_RULES:
        stem = pattern.sub(repl, stem)
    return str(p.parent / stem)


def family_representatives(photos: Sequence[SystemPhoto]) -> list[SystemPhoto]:
    """The largest file (most pixels, then path) of each family, sorted by path."""
    best: dict[str, SystemPhoto] = {}
    for photo in sorted(photos, key=lambda p: p.path):
        if photo.family not in best or photo.pixels > best[photo.family].pixels:
            best[photo.family] = photo
    return sorted(best.values(), key=lambda p: p.path)


# ---- variants ------------------------------------------------------------------------------------
Variant = tuple[Image.Image, str, dict[str, Any]]  # (image, PIL format, save options)
_JPEG = "JPEG"


def _crop(img: Image.Image, rng: np.random.Generator) -> Variant:
    """A random crop keeping ~85% of the area (aspect kept)."""
    w, h = img.size
    cw, ch = round(w * math.sqrt(0.85)), round(h * math.sqrt(0.85))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch)), _JPEG, {"quality": 90}


def _half(img: Image.Image, rng: np.random.Generator) -> Variant:
    w, h = img.size
    return img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS), _JPEG, {"quality": 90}


def _thumb(img: Image.Image, rng: np.random.Generator) -> Variant:
    out = img.copy()
    out.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    return out, _JPEG, {"quality": 85}


def _reencode(quality: int) -> Callable[[Image.Image, np.random.Generator], Variant]:
    def variant(img: Image.Image, rng: np.random.Generator) -> Variant:
        return img, _JPEG, {"quality": quality}
    return variant


def _flip(img: Image.Image, rng: np.random.Generator) -> Variant:
    return ImageOps.mirror(img), _JPEG, {"quality": 90}


def _colour(img: Image.Image, rng: np.random.Generator) -> Variant:
    """Brightness x(1 +- 0.15..0.3), then saturation x0.75..1.25."""
    brightness = 1.0 + float(rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.3))
    out = ImageEnhance.Brightness(img).enhance(brightness)
    return ImageEnhance.Color(out).enhance(float(rng.uniform(0.75, 1.25))), _JPEG, {"quality": 90}


def _rotate(img: Image.Image, rng: np.random.Generator) -> Variant:
    """Rotated by 3-8 degrees either way, cropped to the largest upright rectangle inside (no corners)."""
    angle = float(rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 8.0))
    w, h = img.size
    cw, ch = _inscribed(w, h, math.radians(angle))
    out = img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False)
    left, top = (w - cw) // 2, (h - ch) // 2
    return out.crop((left, top, left + cw, top + ch)), _JPEG, {"quality": 90}


def _inscribed(w: int, h: int, angle: float) -> tuple[int, int]:
    """Largest axis-aligned rectangle inside a ``w x h`` rectangle rotated by ``angle`` radians."""
    long_side, short_side = max(w, h), min(w, h)
    sin_a, cos_a = abs(math.sin(angle)), abs(math.cos(angle))
    if short_side <= 2.0 * sin_a * cos_a * long_side or abs(sin_a - cos_a) < 1e-10:
        x = 0.5 * short_side
        wr, hr = (x / sin_a, x / cos_a) if w >= h else (x / cos_a, x / sin_a)
    else:
        cos_2a = cos_a * cos_a - sin_a * sin_a
        wr, hr = (w * cos_a - h * sin_a) / cos_2a, (h * cos_a - w * sin_a) / cos_2a
    return max(1, math.floor(wr) - 2), max(1, math.floor(hr) - 2)


def _webp(img: Image.Image, rng: np.random.Generator) -> Variant:
    return img, "WEBP", {"quality": 80, "method": 4}


def _png(img: Image.Image, rng: np.random.Generator) -> Variant:
    return img, "PNG", {"compress_level": 1}


#: Variant kind -> what it is. ``original`` is the source file itself, or the master (the source
#: resized to ``max_side``, in the source's format) when it is larger.
VARIANT_KINDS: dict[str, str] = {
    "original": "the source file, or its resize to max_side in the source's format",
    "crop85": "random crop keeping ~85% of the area, JPEG q90",
    "half": "half-size rescale (Lanczos), JPEG q90",
    "thumb": f"thumbnail, longest side {THUMB_SIDE} px, JPEG q85",
    "jpeg35": "JPEG re-encode at quality 35",
    "jpeg60": "JPEG re-encode at quality 60",
    "jpeg90": "JPEG re-encode at quality 90",
    "flip": "horizontal mirror, JPEG q90",
    "colour": "brightness +-15-30% and saturation x0.75-1.25, JPEG q90",
    "rotate": "rotation by 3-8 degrees, cropped to the inscribed rectangle, JPEG q90",
    "webp": "WebP re-encode at quality 80",
    "png": "lossless PNG re-encode",
}
_MAKERS: dict[str, Callable[[Image.Image, np.random.Generator], Variant]] = {
    "crop85": _crop, "half": _half, "thumb": _thumb, "jpeg35": _reencode(35), "jpeg60": _reencode(60),
    "jpeg90": _reencode(90), "flip": _flip, "colour": _colour, "rotate": _rotate, "webp": _webp, "png": _png,
}
_EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}


# ---- the corpus ----------------------------------------------------------------------------------
def build_photo_variant_corpus(out_dir: str | os.PathLike[str], *, seed: int, n_sources: int | None = None,
                               max_side: int | None = None, kinds: Sequence[str] = tuple(VARIANT_KINDS),
                               photos: Sequence[SystemPhoto] | None = None) -> PhotoCorpus:
    """Write ``out_dir/<group>/<kind>.<ext>`` for one source photo per family and return the corpus.

    Args:
        out_dir: an empty or missing folder, or one holding the same corpus (then it is read, not rebuilt).
        seed: picks the sources (when ``n_sources`` is given) and every random variant parameter; each
            source's parameters depend only on the seed and the source's content hash.
        n_sources: how many families to use (seeded sample), default all.
        max_side: longest side of the master each variant derives from (default: the source's own size,
            multi-megapixel); at least ``2 * THUMB_SIDE``.
        kinds: variant kinds from :data:`VARIANT_KINDS`.
        photos: candidate sources (default :func:`find_system_photos`); one per family is used.

    Raises:
        ConfigError: unknown kind, too small ``max_side``, more sources than families, or two variants
            of a source with identical bytes (the source is too flat to make distinct files).
        FileExistsError: ``out_dir`` holds other files or a different corpus.
        FileNotFoundError: no photos installed (see :func:`find_system_photos`).
    """
    unknown = [k for k in kinds if k not in VARIANT_KINDS]
    if unknown or not kinds or len(set(kinds)) != len(kinds):
        raise ConfigError(f"kinds must be distinct names from {list(VARIANT_KINDS)}, got {list(kinds)}")
    if max_side is not None and max_side < 2 * THUMB_SIDE:
        raise ConfigError(f"max_side={max_side} is below {2 * THUMB_SIDE}: the thumbnails ({THUMB_SIDE} px) "
                          "would not be smaller than the master; use max_side >= 512 or None (full size)")
    sources = _choose_sources(find_system_photos() if photos is None else photos, n_sources, seed)
    out = Path(out_dir)
    spec = {"version": 1, "seed": seed, "max_side": max_side, "kinds": list(kinds),
            "sources": [{"path": str(s.path), "sha256": s.sha256} for s in sources]}
    existing = _existing(out, spec)
    if existing is not None:
        return existing
    records: list[dict[str, str]] = []
    digests: dict[str, str] = {}
    for index, source in enumerate(sources):
        group = f"{index:02d}-{_slug(source.family)}"
        for kind, data, ext in _variants(source, seed, max_side, kinds):
            rel = f"{group}/{kind}{ext}"
            digest = hashlib.sha256(data).hexdigest()
            if digest in digests:
                raise ConfigError(f"{rel} has the same bytes as {digests[digest]}; {source.path} is too flat for "
                                  "distinct variants: leave it out of photos=")
            digests[digest] = rel
            _write_atomic(out / rel, data)
            records.append({"path": rel, "group": group, "kind": kind, "source": str(source.path)})
        log.info("photo corpus: group %s from %s (%dx%d)", group, source.path, source.width, source.height)
    records.sort(key=lambda r: r["path"])
    _write_atomic(out / MANIFEST_NAME, json.dumps({**spec, "records": records}, indent=1).encode())
    return PhotoCorpus.load(out)


def _choose_sources(photos: Sequence[SystemPhoto], n_sources: int | None, seed: int) -> list[SystemPhoto]:
    reps = family_representatives(photos)
    if n_sources is None:
        return reps
    if not 1 <= n_sources <= len(reps):
        raise ConfigError(f"n_sources={n_sources} but there are {len(reps)} photo families; use 1..{len(reps)}")
    pick = np.random.default_rng(seed).choice(len(reps), size=n_sources, replace=False)
    return [reps[i] for i in sorted(int(i) for i in pick)]


def _existing(out: Path, spec: dict[str, Any]) -> PhotoCorpus | None:
    """The corpus already in ``out`` when it was built with ``spec``; None when ``out`` is empty/missing."""
    manifest = out / MANIFEST_NAME
    if manifest.is_file():
        meta = json.loads(manifest.read_text())
        if {k: meta.get(k) for k in spec} == spec:
            log.info("photo corpus in %s is complete for this seed/sources/kinds; reusing it", out)
            return PhotoCorpus.load(out)
        raise FileExistsError(f"{out} holds a photo corpus built with other settings; use another out_dir")
    if out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no {MANIFEST_NAME}; use an empty or new out_dir")
    return None


def _variants(source: SystemPhoto, seed: int, max_side: int | None, kinds: Sequence[str]
              ) -> list[tuple[str, bytes, str]]:
    """``(kind, encoded bytes, extension)`` for each kind, derived from the source's master.

    Each kind draws from its own generator (seed, source hash, kind), so a kind's file does not depend
    on which other kinds are built."""
    data = source.path.read_bytes()
    master = Image.fromarray(decode_image(data, mode="RGB", target_side=max_side))
    resized = max_side is not None and max(source.width, source.height) > max_side
    if max_side is not None:
        master.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out: list[tuple[str, bytes, str]] = []
    for index, kind in enumerate(VARIANT_KINDS):
        if kind not in kinds:
            continue
        if kind == "original" and not resized:
            out.append((kind, data, source.path.suffix.lower()))
        elif kind == "original":
            fmt = source.format if source.format in _EXT else "PNG"
            out.append((kind, _encode(master, fmt, {} if fmt == "PNG" else {"quality": 95}), _EXT[fmt]))
        else:
            rng = np.random.default_rng([seed, int(source.sha256[:16], 16), index])
            image, fmt, options = _MAKERS[kind](master, rng)
            out.append((kind, _encode(image, fmt, options), _EXT[fmt]))
    return out


def _encode(image: Image.Image, fmt: str, options: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _slug(family: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", Path(family).name).strip("-") or "photo"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
