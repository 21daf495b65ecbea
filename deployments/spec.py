"""The one declaration of imgclust's deployments, read by both ways of running them.

* ``imgclust serve`` (``deployments/serve.py``) builds ``RunnerDeployment`` objects from :data:`DEPLOYMENTS`;
* ``deployments/prefect.yaml`` (``prefect deploy`` onto a work pool; ``imgclust deploy`` runs it) is rendered
  from the same list by ``python -m deployments.spec > deployments/prefect.yaml``; a test fails when the
  committed file and this list differ.

Values that depend on the installation are Prefect templates ``{{ $VAR }}`` resolved from the environment,
the same variables for both ways, with the defaults of :data:`ENV_DEFAULTS`:

==============================  ===============================================  =====================
variable                        meaning                                          default
==============================  ===============================================  =====================
IMGCLUST_SOURCE                 folder / URL the nightly run ingests             (required)
IMGCLUST_STORE                  store root                                       (required)
IMGCLUST_TIMEZONE               timezone of the cron schedules                   UTC
IMGCLUST_NIGHTLY_CRON           nightly auto-label schedule                      ``0 2 * * *``
IMGCLUST_RECLUSTER_CRON         weekly recluster schedule                        ``0 4 * * 0``
IMGCLUST_REFINE_CRON            weekly deep refinement schedule                  ``0 3 * * 6``
IMGCLUST_REFINE_METHOD          deep method of the scheduled refinement          the recommended recipe
IMGCLUST_NOVELTY_COOLDOWN       how long the novelty automation waits between    ``PT6H`` (6 hours)
                                two early reclusters (ISO 8601 or HH:MM:SS)
IMGCLUST_WORK_POOL              work pool of ``prefect.yaml``                    imgclust
IMGCLUST_PROJECT_DIR            where workers find this project (``prefect.yaml``)  this checkout
IMGCLUST_DASK_ADDRESS etc.      where tasks run (see ``flows/runtime.py``)       a local cluster
==============================  ===============================================  =====================

The novelty automation: ``auto-label/nightly`` emits ``imgclust.novelty.high`` for its store when a night has
more novel images than known kinds give or a candidate new cluster (``imgclust.models.novelty_night``); ``recluster/weekly`` carries a reactive event trigger on that event for the
same store (threshold 1 within ``IMGCLUST_NOVELTY_COOLDOWN``), so the first such event starts a
recluster early (parameter ``reason="novelty"``) and later ones within the cooldown do not.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flows.events import NOVELTY_EVENT, STORE_LABEL
from imgclust.config import RECOMMENDED_REFINE_METHOD
from imgclust.exceptions import ConfigError

PROJECT_DIR = Path(__file__).resolve().parents[1]
YAML_PATH = Path(__file__).with_name("prefect.yaml")
REQUIRED_ENV = ("IMGCLUST_SOURCE", "IMGCLUST_STORE")
ENV_DEFAULTS: dict[str, str] = {
    "IMGCLUST_TIMEZONE": "UTC",
    "IMGCLUST_NIGHTLY_CRON": "0 2 * * *",
    "IMGCLUST_RECLUSTER_CRON": "0 4 * * 0",
    "IMGCLUST_REFINE_CRON": "0 3 * * 6",
    "IMGCLUST_REFINE_METHOD": RECOMMENDED_REFINE_METHOD,
    "IMGCLUST_NOVELTY_COOLDOWN": "PT6H",
    "IMGCLUST_WORK_POOL": "imgclust",
}


def env(name: str) -> str:
    """``{{ $NAME }}``: a Prefect template resolved from the environment."""
    return "{{ $" + name + " }}"


@dataclass(frozen=True)
class NoveltyTrigger:
    """Start the deployment when its store's nightly run reports a high novelty rate, at most once per cooldown."""

    parameters: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """The trigger as ``prefect.yaml`` writes it (a ``DeploymentEventTrigger``'s fields)."""
        return {"type": "event", "name": "recluster on novel media", "enabled": True,
                "match": {"prefect.resource.id": "imgclust.store.*", STORE_LABEL: env("IMGCLUST_STORE")},
                "expect": [NOVELTY_EVENT], "posture": "Reactive", "threshold": 1,
                "within": env("IMGCLUST_NOVELTY_COOLDOWN"), "parameters": self.parameters}


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: ``<flow>/<name>``, its entrypoint, parameter defaults (templates allowed), an optional
    cron schedule (the environment variable that holds it) and an optional novelty trigger."""

    flow: str
    name: str
    entrypoint: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)
    cron_env: str | None = None
    tags: tuple[str, ...] = ("imgclust",)
    trigger: NoveltyTrigger | None = None

    @property
    def full_name(self) -> str:
        return f"{self.flow}/{self.name}"

    def as_dict(self) -> dict[str, Any]:
        """The deployment as ``prefect.yaml`` writes it (templates unresolved)."""
        out: dict[str, Any] = {"name": self.name, "entrypoint": self.entrypoint, "description": self.description,
                               "tags": list(self.tags), "parameters": self.parameters}
        if self.cron_env:
            out["schedules"] = [{"cron": env(self.cron_env), "timezone": env("IMGCLUST_TIMEZONE")}]
        if self.trigger:
            out["triggers"] = [self.trigger.as_dict()]
        out["concurrency_limit"] = {"limit": 1, "collision_strategy": "ENQUEUE"}  # one run at a time; others queue
        out["work_pool"] = {"name": env("IMGCLUST_WORK_POOL"), "job_variables": {"env": {
            "IMGCLUST_DASK_WORKERS": env("IMGCLUST_DASK_WORKERS"),
            "PREFECT_LOGGING_EXTRA_LOGGERS": "imgclust"}}}  # library progress lines reach the run logs
        return out


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        "auto-label", "nightly", "flows/auto_label.py:auto_label",
        "Label images ingested since the last run with the CURRENT model.",
        {"source": env("IMGCLUST_SOURCE"), "store": env("IMGCLUST_STORE")}, cron_env="IMGCLUST_NIGHTLY_CRON"),
    DeploymentSpec(
        "recluster", "weekly", "flows/recluster.py:recluster",
        "Refit on all features, keep stable ids, relabel, promote through the gate. Also started early by the "
        "novelty automation.",
        {"store": env("IMGCLUST_STORE")}, cron_env="IMGCLUST_RECLUSTER_CRON",
        trigger=NoveltyTrigger({"reason": "novelty"})),
    DeploymentSpec(
        "refine", "weekly", "flows/refine.py:refine",
        "Train a deep-clustering method; its candidate model goes through the promotion gate.",
        {"store": env("IMGCLUST_STORE"), "method": env("IMGCLUST_REFINE_METHOD")}, cron_env="IMGCLUST_REFINE_CRON",
        tags=("imgclust", "gpu")),
    DeploymentSpec(
        "backfill", "on-demand", "flows/backfill.py:backfill",
        "Re-ingest / re-extract / re-label a date range (start it from the UI form).",
        {"store": env("IMGCLUST_STORE"), "sources": [env("IMGCLUST_SOURCE")]}),
    DeploymentSpec(
        "pipeline", "on-demand", "flows/pipeline.py:pipeline",
        "Run the whole pipeline once on a source.",
        {"config": {"source": env("IMGCLUST_SOURCE"), "store": env("IMGCLUST_STORE")}}),
)


def environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default ``os.environ``) with :data:`ENV_DEFAULTS` for unset variables; a clear error when
    a required one is missing."""
    values = dict(os.environ if environ is None else environ)
    for name, default in ENV_DEFAULTS.items():
        if not values.get(name, "").strip():
            values[name] = default
    values.setdefault("IMGCLUST_PROJECT_DIR", str(PROJECT_DIR))
    values.setdefault("IMGCLUST_DASK_WORKERS", "2")
    missing = [n for n in REQUIRED_ENV if not values.get(n, "").strip()]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; export "
                          "the source folder/URL and the store root (see deployments/spec.py) before serving or "
                          "deploying")
    return values


def resolve(template: Any, environ: Mapping[str, str]) -> Any:
    """Resolve ``{{ $VAR }}`` templates in ``template`` the way ``prefect deploy`` does."""
    if isinstance(template, str):
        out = template
        for name in (*REQUIRED_ENV, *ENV_DEFAULTS, "IMGCLUST_PROJECT_DIR", "IMGCLUST_DASK_WORKERS"):
            out = out.replace(env(name), environ.get(name, env(name)))
        if "{{ $" in out:
            raise ConfigError(f"unresolved template in deployment declaration: {out!r}")
        return out
    if isinstance(template, dict):
        return {k: resolve(v, environ) for k, v in template.items()}
    if isinstance(template, list):
        return [resolve(v, environ) for v in template]
    return template


HEADER = """\
# GENERATED from deployments/spec.py by `python -m deployments.spec > deployments/prefect.yaml`; do not edit.
# `imgclust deploy` runs `prefect deploy --all` with this file after filling the defaults of unset IMGCLUST_*
# variables (deployments/spec.py lists them); a plain `prefect deploy` needs every variable below exported.
# Start a worker with `prefect worker start --pool imgclust` on a host that has this project installed.
# GPU hosts: IMGCLUST_GPU_CLUSTER=1 in the worker's environment (one Dask worker per GPU through dask-cuda,
# `pip install -e '.[gpu]'`), or IMGCLUST_DASK_ADDRESS for an existing `dask cuda worker` cluster.
# Store and source come from the environment; credentials stay in the standard AWS configuration.
"""


def render_yaml() -> str:
    """``deployments/prefect.yaml``: the project file ``prefect deploy --all`` reads."""
    doc = {"name": "imgclust", "prefect-version": "3.8.8",
           "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": env("IMGCLUST_PROJECT_DIR")}}],
           "deployments": [d.as_dict() for d in DEPLOYMENTS]}
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=110)


if __name__ == "__main__":
    sys.stdout.write(render_yaml())
