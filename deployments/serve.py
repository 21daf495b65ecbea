"""Serve imgclust's deployments from this process (``imgclust serve`` runs it under its supervisor).

The deployment set, its schedules, parameters and the novelty trigger are declared once in
``deployments/spec.py`` (environment variables and defaults are listed there); this module turns that
declaration into ``RunnerDeployment`` objects and serves them with ``prefect.serve``.
"""
from __future__ import annotations

import datetime as dt
import importlib
import logging
from collections.abc import Mapping
from typing import Any

from deployments.spec import DEPLOYMENTS, DeploymentSpec, environment, resolve

log = logging.getLogger(__name__)


def _flow(entrypoint: str) -> Any:
    path, name = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def _to_deployment(spec: DeploymentSpec, values: Mapping[str, str]) -> Any:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron
    from pydantic import TypeAdapter

    d = resolve(spec.as_dict(), values)
    kwargs: dict[str, Any] = {}
    if spec.cron_env:
        kwargs["schedules"] = [Cron(s["cron"], timezone=s["timezone"]) for s in d["schedules"]]
    if spec.trigger:
        t = dict(d["triggers"][0])
        t.pop("type")
        t["within"] = TypeAdapter(dt.timedelta).validate_python(t["within"])
        kwargs["triggers"] = [DeploymentEventTrigger(**t)]
    limit = ConcurrencyLimitConfig(limit=d["concurrency_limit"]["limit"],
                                   collision_strategy=ConcurrencyLimitStrategy(d["concurrency_limit"]
                                                                               ["collision_strategy"]))
    return _flow(spec.entrypoint).to_deployment(
        name=spec.name, parameters=d["parameters"], description=spec.description, tags=list(spec.tags),
        concurrency_limit=limit, **kwargs)


def build_deployments(environ: Mapping[str, str] | None = None) -> list[Any]:
    """The RunnerDeployments of :data:`deployments.spec.DEPLOYMENTS`, resolved against ``environ``."""
    values = environment(environ)
    return [_to_deployment(spec, values) for spec in DEPLOYMENTS]


def main() -> None:
    """Serve every deployment from this process until interrupted."""
    from prefect import serve

    serve(*build_deployments())


if __name__ == "__main__":
    main()
