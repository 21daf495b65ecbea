"""The store invariant, checkable by users (``imgclust verify``) and by every fault test.

Every manifest row of a processed range ends in exactly one of features or quarantine (for one
extractor), and a model labels each featured image exactly once.
"""
from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field

from imgclust.io.features import done_shards
from imgclust.io.layout import feature_path, label_shards_glob, quarantine_path
from imgclust.io.manifest import list_parts
from imgclust.io.store import Store

log = logging.getLogger(__name__)
_SHOW = 10


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_store`; ``ok`` when every list of problems is empty."""

    manifest_rows: int = 0
    features: int = 0
    quarantined: int = 0
    labels: int = 0
    missing: list[str] = field(default_factory=list)  # in manifest, in neither features nor quarantine
    duplicated: list[str] = field(default_factory=list)  # more than once across features + quarantine
    unknown: list[str] = field(default_factory=list)  # in features/quarantine but not in the manifest
    label_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.unknown or self.label_problems)

    def summary(self) -> str:
        head = (f"manifest {self.manifest_rows}, features {self.features}, quarantined {self.quarantined}, "
                f"labels {self.labels}")
        if self.ok:
            return f"OK: {head}"
        probs = [f"{name}: {len(v)} e.g. {v[:_SHOW]}" for name, v in
                 (("missing", self.missing), ("duplicated", self.duplicated), ("unknown", self.unknown),
                  ("labels", self.label_problems)) if v]
        return f"FAILED: {head}; " + "; ".join(probs)


def verify_store(store: Store, extractor_key: str, *, model_id: str | None = None,
                 parts: list[str] | None = None) -> VerifyReport:
    """Check the invariant over ``parts`` (default: the whole manifest) and, optionally, one model's labels."""
    whole = parts is None
    parts = list_parts(store) if parts is None else parts
    manifest: list[str] = []
    for p in parts:
        manifest.extend(store.read_parquet(p, columns=["image_id"]).column("image_id").to_pylist())
    seen: collections.Counter[str] = collections.Counter()
    featured: list[str] = []
    rep = VerifyReport(manifest_rows=len(manifest))
    for sid in done_shards(store, extractor_key):
        f = store.read_parquet(feature_path(extractor_key, sid), columns=["image_id"]).column("image_id").to_pylist()
        q = store.read_parquet(quarantine_path(extractor_key, sid), columns=["image_id"]).column("image_id").to_pylist()
        featured.extend(f)
        seen.update(f)
        seen.update(q)
        rep.features += len(f)
        rep.quarantined += len(q)
    mset = set(manifest)
    dup_manifest = [i for i, c in collections.Counter(manifest).items() if c > 1]
    rep.duplicated = sorted(dup_manifest + [i for i, c in seen.items() if c > 1])
    rep.missing = sorted(mset - set(seen))
    if not whole:  # shards of other parts are not this range's concern
        rep.duplicated = [i for i in rep.duplicated if i in mset]
    rep.unknown = sorted(set(seen) - mset) if whole else []  # a partial range cannot judge other parts
    if model_id is not None:
        label_ids: list[str] = []
        for rel in store.glob(label_shards_glob(model_id)):
            label_ids.extend(store.read_parquet(rel, columns=["image_id"]).column("image_id").to_pylist())
        rep.labels = len(label_ids)
        counts = collections.Counter(label_ids)
        rep.label_problems = sorted(f"labelled {c}x: {i}" for i, c in counts.items() if c > 1)
        rep.label_problems += sorted(f"unlabelled: {i}" for i in set(featured) - set(counts))
    log.info("verify %s: %s", store.url, rep.summary())
    return rep
