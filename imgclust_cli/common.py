"""What every ``imgclust`` subcommand shares: running a flow, the Dask runner rule, argument types, the execution
options, config-model defaults for argparse, the model a command works on, and printing results.

The subcommand modules (:mod:`imgclust_cli.main`, ``ops``, ``naming``, ``weights``, ``serve``) import this module
and never each other's helpers, so the package has no import cycle. Like the rest of the parsing side it imports
neither Prefect nor Dask at module level: a flow's module is imported by :func:`run_flow`, after the arguments
validated.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import json
import os
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from imgclust.config import AUTO_K, RunnerConfig
from imgclust.exceptions import ConfigError

if TYPE_CHECKING:
    from imgclust.io.store import Store


def home() -> Path:
    """``$IMGCLUST_HOME`` (default ``./.imgclust``), resolved: where an embedded run keeps its Prefect database."""
    return Path(os.environ.get("IMGCLUST_HOME", ".imgclust")).resolve()


def prefect_home() -> Path:
    """``$IMGCLUST_HOME/prefect``: the embedded Prefect API's home (its SQLite database)."""
    return home() / "prefect"


def prepare_environment() -> None:
    """Defaults for an embedded run; explicit user settings always win."""
    prefect_home().mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(prefect_home()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "imgclust")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    os.environ.setdefault("DASK_DISTRIBUTED__WORKER__DAEMON", "false")


def default_of(model: type[Any], name: str) -> Any:
    """The default of field ``name`` of ``model`` (a pydantic model or a dataclass): what an argparse option that
    sets that field shows and passes when it is not given, so the two cannot drift apart.

    Raises:
        ConfigError: ``model`` has no such field, or the field has no plain default (required, or a factory).
    """
    if isinstance(model, type) and issubclass(model, BaseModel):
        info = model.model_fields.get(name)
        if info is not None and not info.is_required() and info.default_factory is None:
            return info.default
    elif dataclasses.is_dataclass(model):
        found = {f.name: f for f in dataclasses.fields(model)}.get(name)
        if found is not None and found.default is not dataclasses.MISSING:
            return found.default
    raise ConfigError(f"{getattr(model, '__name__', model)} has no field {name!r} with a plain default")


def choices_of(model: type[BaseModel], name: str) -> list[Any]:
    """The values of a ``Literal[...]`` field of ``model``: an option's ``choices`` (e.g. ``--device``)."""
    values = list(typing.get_args(model.model_fields[name].annotation))
    if not values:
        raise ConfigError(f"{model.__name__}.{name} is not a Literal field; give the option's choices explicitly")
    return values


def given(**values: Any) -> dict[str, Any]:
    """``values`` without the ``None`` ones: the options the user gave, so a model's (or flow's) own defaults apply
    to the rest."""
    return {k: v for k, v in values.items() if v is not None}


def date_arg(text: str) -> dt.date:
    """An option's ``YYYY-MM-DD`` value."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from err


def cluster_count(text: str) -> int | str:
    """``--k``'s value: ``auto`` (choose k by a sweep, :mod:`imgclust.cluster.choose_k`) or a number of clusters; anything
    else is passed on as given and refused by :class:`~imgclust.config.ClusterConfig` with the valid values."""
    if text.strip().lower() == AUTO_K:
        return AUTO_K
    try:
        return int(text)
    except ValueError:
        return text


def method_option(text: str) -> tuple[str, Any]:
    """``--cluster-option``'s ``NAME=VALUE``: the value read as JSON (``3``, ``true``, ``[1, 2]``), else as a string."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value


def add_method_option_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--cluster-option NAME=VALUE`` (repeatable): ``ClusterConfig.options``, a method's own typed options."""
    p.add_argument("--cluster-option", type=method_option, action="append", default=[], metavar="NAME=VALUE",
                   help="an option of a method that declares its own (a plugin's method); repeatable")


def add_execution_args(p: argparse.ArgumentParser) -> None:
    """The ``execution`` options of every subcommand that runs Dask tasks; :func:`runner_config` reads them."""
    g = p.add_argument_group("execution")
    g.add_argument("--workers", type=int, default=default_of(RunnerConfig, "workers"),
                   help="local Dask worker processes")
    g.add_argument("--address", default=None, help="existing Dask scheduler (tcp://host:8786)")
    g.add_argument("--gpu-cluster", action="store_true", help="one Dask worker per GPU (dask-cuda)")
    g.add_argument("--offline", action="store_true",
                   help="never download weights: use the local torch hub / Hugging Face caches only (as "
                        "IMGCLUST_OFFLINE=1 or HF_HUB_OFFLINE=1 do; local workers inherit it)")


def runner_config(a: argparse.Namespace) -> RunnerConfig:
    """Where the flow's tasks run, from the execution options: ``--address`` (an existing scheduler) wins, then
    ``--gpu-cluster`` (one worker per GPU), else ``--workers`` local processes.

    Raises:
        ConfigError: an invalid value (e.g. ``--workers 0``), before any work.
    """
    return RunnerConfig.choose(address=a.address, gpu_cluster=a.gpu_cluster, workers=a.workers)


def run_flow(flow_path: str, runner: RunnerConfig | None, **params: Any) -> Any:
    """Run the flow ``"module:name"`` with ``params`` and return its result, against ``PREFECT_API_URL`` when set,
    else an embedded Prefect API under :func:`prefect_home`; ``runner`` replaces the flow's Dask task runner
    (``None``: the flow runs as declared, e.g. flows without Dask tasks)."""
    prepare_environment()
    from flows.runtime import dask_task_runner, embedded_prefect

    module, name = flow_path.rsplit(":", 1)
    flow = getattr(importlib.import_module(module), name)
    if runner is not None:
        flow = flow.with_options(task_runner=dask_task_runner(runner))
    with embedded_prefect(prefect_home()):
        return flow(**params)


def print_json(result: Any) -> None:
    """A flow's result on stdout, as indented JSON (dates and paths as strings)."""
    print(json.dumps(result, indent=1, default=str))


def model_or_current(store: Store, model_id: str | None) -> str:
    """``--model``'s id, else the store's CURRENT model.

    Raises:
        ConfigError: no ``--model`` given and the store has no CURRENT model.
    """
    from imgclust.models.model import current_model_id

    chosen = model_id or current_model_id(store)
    if chosen is None:
        raise ConfigError(f"no --model given and {store.uri('models/CURRENT')} does not exist")
    return chosen
