"""Prefect artifacts published by the flows (tables and markdown summaries)."""
from __future__ import annotations

from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact


def _rows(metrics: dict[str, Any]) -> str:
    return "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in metrics.items() if isinstance(v, (int, float)))


def publish_model_artifacts(model_id: str, metrics: dict[str, Any], decision: dict[str, Any],
                            names: dict[int, str] | None = None, report: str | None = None) -> None:
    """Cluster-size table, a markdown summary (metrics, promotion decision, report link) and, when ``k=auto``
    chose the number of clusters, the sweep as a table (criteria per k, the chosen k marked)."""
    names = names or {}
    sizes = metrics.get("cluster_sizes", {})
    create_table_artifact(key="cluster-sizes", description=f"Cluster sizes of model {model_id}",
                          table=[{"cluster_id": c, "name": names.get(int(c), ""), "images": n}
                                 for c, n in sizes.items()])
    md = (f"# Model {model_id}\n\n**promoted**: {decision.get('promoted')} ({decision.get('reason', '')})\n\n"
          + (f"report: `{report}`\n\n" if report else "")
          + f"| metric | value |\n|---|---|\n{_rows(metrics)}\n")
    create_markdown_artifact(key="model-summary", markdown=md, description="Model build summary")
    sweep = metrics.get("k_sweep")
    if sweep:
        create_table_artifact(
            key="k-sweep", description=f"k=auto chose k={sweep['chosen']} for model {model_id} by {sweep['criterion']}: "
            f"{sweep['reason']} Rule: {sweep['rule']}",
            table=[{"k": k, "chosen": k == sweep["chosen"], **{name: values[i] for name, values in sweep["scores"].items()}}
                   for i, k in enumerate(sweep["ks"])])


def publish_label_summary(summary: dict[str, Any], names: dict[int, str] | None = None,
                          suggestions: list[dict[str, Any]] | None = None) -> None:
    """Markdown summary of one auto-label run (new images, novel count and share, the novelty event and its
    candidate new clusters, near-duplicates of stored images, model) and, when images were labeled, a table of the night's images per cluster with the clusters'
    human names and, when ``imgclust name-clusters`` made some for this model, the suggested names (confidence)."""
    names = names or {}
    suggested = {int(r["cluster_id"]): f"{r['name']} ({float(r['confidence']):.2f})" for r in suggestions or []}
    if summary.get("sizes"):
        create_table_artifact(key="auto-label-clusters", description="Images labeled tonight per cluster",
                              table=[{"cluster_id": c, "name": "novel" if c == -1 else names.get(c, ""),
                                      **({"suggested name": suggested.get(c, "")} if suggested else {}), "images": n}
                                     for c, n in sorted(summary["sizes"].items())])
    md = "# Auto-label run\n\n| what | value |\n|---|---|\n" + _rows(summary) + "\n"
    if summary.get("novelty_alert"):
        md += (f"\n**{summary['novel']} of {summary['labeled']} new images are novel** (at most {summary['limit']} "
               f"expected of known kinds at a false-novel rate of {summary.get('expected_rate')}), "
               f"{len(summary.get('candidates', []))} candidate new cluster(s), score shift p = "
               f"{summary.get('shift_p')}: a recluster is due (event `imgclust.novelty.high` was emitted).\n")
    for c in summary.get("candidates", []):
        md += (f"\n- candidate new cluster {c['candidate']}: {c['size']} images, tightness {c['tightness']} "
               f"(montage `{c['montage']}` in the store)")
    if summary.get("near_duplicates_skipped"):
        md += f"\n**Near-duplicate flags skipped:** {summary['near_duplicates_skipped']}\n"
    if summary.get("near_duplicates"):
        md += f"\n**{summary['near_duplicates']} new image(s) nearly duplicate stored ones** (cosine similarity >= " \
              f"{summary.get('near_duplicate_threshold')} in `{summary.get('near_duplicate_key')}`): see " \
              "`near_duplicate_of` in their label rows.\n"
    create_markdown_artifact(key="auto-label-summary", markdown=md, description="Nightly auto-label summary")
