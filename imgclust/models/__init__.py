"""Model versions: fit, label, lineage, recluster, promotion, novelty, reports, verification."""
