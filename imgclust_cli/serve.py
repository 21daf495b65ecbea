"""``imgclust serve``: the deployments served under a supervisor that outlives Prefect server failures.

Two child processes, each in its own process group:

* **the Prefect server** (only without ``PREFECT_API_URL``): ``prefect server start`` on ``--host``/``--port``
  with the UI's API URL set to the same port (so the UI works on any port), its SQLite database under
  ``PREFECT_HOME``;
* **the runner**: ``python -m deployments.serve``, which serves every deployment of ``deployments/spec.py``.

Every ``check_interval`` seconds the supervisor asks the API for ``/health`` and looks at both processes:

* its own server exited or stopped answering for ``server_grace`` seconds: logged, and restarted on the same
  port and database (at most ``max_restarts`` times per ``restart_window`` seconds, else exit status 4);
* an external server (``PREFECT_API_URL``) that stops answering: logged; if it is not back within
  ``server_grace`` seconds the supervisor stops the runner and exits with status 3, so a process supervisor
  (systemd, Kubernetes) restarts it against a healthy server;
* after any outage, the runner is restarted once no flow run of these deployments is in flight: Prefect's
  runner keeps polling across an outage, but its cancellation observer does not recover, so cancelling a run
  from the UI would silently stop working. That restart kills the idle runner instead of stopping it
  gracefully, because a graceful stop pauses the deployments, which deletes their scheduled runs;
* the runner exited: logged and restarted (same limit).

SIGTERM or SIGINT stop the runner, then the server, and exit 0.

The module also registers the ``serve`` and ``deploy`` subcommands; it imports ``httpx`` where the supervisor
calls the API, so that parsing any ``imgclust`` command stays quick.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from imgclust.exceptions import ConfigError
from imgclust_cli.common import default_of, prepare_environment

log = logging.getLogger("imgclust.serve")

EXIT_SERVER_LOST = 3
EXIT_RESTART_LIMIT = 4
_IN_FLIGHT = ["PENDING", "RUNNING", "CANCELLING"]


class RestartLimitError(RuntimeError):
    """A child process had to be restarted more often than the limit allows."""


@dataclass
class ServeOptions:
    """How ``imgclust serve`` runs (see the module docstring)."""

    host: str = "127.0.0.1"
    port: int = 4200
    server_grace: float = 300.0
    check_interval: float = 5.0
    max_restarts: int = 5
    restart_window: float = 600.0
    startup_timeout: float = 180.0
    deployment_names: list[str] = field(default_factory=list)


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` yet."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class _Child:
    """A child process in its own session (so its whole group can be stopped), output passed through."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.popen = subprocess.Popen(args, env=dict(env), start_new_session=True)
        log.info("started %s (pid %d)", name, self.popen.pid)

    def exited(self) -> int | None:
        return self.popen.poll()

    def stop(self, timeout: float = 30.0, *, graceful: bool = True) -> None:
        """SIGTERM the process (unless not ``graceful``), wait, then SIGKILL its whole group."""
        if graceful and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s of SIGTERM; killing it", self.name, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        log.info("stopped %s (status %s)", self.name, self.popen.returncode)


class _RestartBudget:
    """At most ``limit`` restarts within any ``window`` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window, self.times = limit, window, deque[float]()

    def spend(self, what: str) -> None:
        now = time.monotonic()
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()
        if len(self.times) >= self.limit:
            raise RestartLimitError(f"{what} needed more than {self.limit} restarts within {self.window:.0f} s")
        self.times.append(now)


class Supervisor:
    """Runs the server (unless external) and the runner, and keeps them serving (module docstring)."""

    def __init__(self, opts: ServeOptions, env: Mapping[str, str] | None = None) -> None:
        self.opts = opts
        self.env = dict(os.environ if env is None else env)
        self.external = bool(self.env.get("PREFECT_API_URL"))
        self.api_url = self.env.get("PREFECT_API_URL") or f"http://{opts.host}:{opts.port}/api"
        self.env["PREFECT_API_URL"] = self.api_url
        self.server: _Child | None = None
        self.runner: _Child | None = None
        self.budget = _RestartBudget(opts.max_restarts, opts.restart_window)
        self._stop = False

    # ---- children ----------------------------------------------------------------------------
    def _start_server(self) -> None:
        o = self.opts
        env = dict(self.env, PREFECT_SERVER_API_HOST=o.host, PREFECT_SERVER_API_PORT=str(o.port),
                   PREFECT_UI_API_URL=self.env.get("PREFECT_UI_API_URL") or self.api_url)
        env.pop("PREFECT_API_URL")  # the server's own UI settings come from PREFECT_UI_API_URL above
        self.server = _Child("prefect server", [sys.executable, "-m", "prefect", "server", "start", "--host", o.host,
                                                "--port", str(o.port)], env)
        self._wait_healthy()
        log.info("Prefect server and UI at http://%s:%d (API %s)", o.host, o.port, self.api_url)

    def _start_runner(self) -> None:
        self.runner = _Child("deployment runner", [sys.executable, "-m", "deployments.serve"], self.env)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.opts.startup_timeout
        while time.monotonic() < deadline:
            if self.server is not None and (rc := self.server.exited()) is not None:
                raise ConfigError(f"`prefect server start` exited with status {rc} (see its output above)")
            if self.healthy():
                return
            time.sleep(1)
        raise ConfigError(f"Prefect server at {self.api_url} did not become healthy within "
                          f"{self.opts.startup_timeout:.0f} s")

    def healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.api_url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def in_flight(self) -> int:
        """Flow runs of the served deployments that are pending, running or cancelling (-1 if unknown)."""
        body = {"flow_runs": {"state": {"type": {"any_": _IN_FLIGHT}}},
                "deployments": {"name": {"any_": self.opts.deployment_names}}}
        import httpx

        try:
            r = httpx.post(f"{self.api_url}/flow_runs/count", json=body, timeout=10)
            r.raise_for_status()
            return int(r.json())
        except (httpx.HTTPError, ValueError):
            return -1

    def reschedule_orphans(self) -> int:
        """Put runs of the served deployments that are pending or running back to Scheduled; called right
        after killing an idle runner, so any such run was picked up by it in the meantime and died with it."""
        body = {"flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING"]}}},
                "deployments": {"name": {"any_": self.opts.deployment_names}}}
        import httpx

        runs = httpx.post(f"{self.api_url}/flow_runs/filter", json=body, timeout=10).json()
        for run in runs:
            log.warning("flow run %s was started by the runner just killed; scheduling it again", run["name"])
            httpx.post(f"{self.api_url}/flow_runs/{run['id']}/set_state", timeout=10, json={
                "state": {"type": "SCHEDULED", "name": "Rescheduled",
                          "message": "imgclust serve restarted its runner while this run was starting"},
                "force": True}).raise_for_status()
        return len(runs)

    # ---- the loop ----------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self._stop = True

    def run(self) -> int:
        """Serve until a signal (0), a lost external server (3) or too many restarts (4)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            if self.external:
                if not self.healthy():
                    raise ConfigError(f"no Prefect API answers at PREFECT_API_URL={self.api_url}; start the "
                                      "server first or unset PREFECT_API_URL to let `imgclust serve` start one")
            else:
                if not port_free(self.opts.host, self.opts.port):
                    raise ConfigError(f"port {self.opts.port} on {self.opts.host} is in use; pass another --port "
                                      "(or set PREFECT_API_URL to use the server already there)")
                self._start_server()
            self._start_runner()
            return self._loop()
        except RestartLimitError as err:
            log.error("%s; exiting with status %d", err, EXIT_RESTART_LIMIT)
            return EXIT_RESTART_LIMIT
        finally:
            for child in (self.runner, self.server):
                if child is not None:
                    child.stop()

    def _loop(self) -> int:
        import httpx

        outage_since: float | None = None
        runner_stale = False
        while not self._stop:
            time.sleep(self.opts.check_interval)
            if self._stop:
                break
            now = time.monotonic()
            if self.server is not None and (rc := self.server.exited()) is not None:
                log.error("the Prefect server exited with status %s; restarting it on port %d", rc, self.opts.port)
                self.budget.spend("the Prefect server")
                outage_since = outage_since or now
                self.server.stop()  # whatever is left of its process group must not hold the port
                self._start_server()
            if not self.healthy():
                if outage_since is None:
                    outage_since = now
                    log.error("the Prefect API at %s does not answer; flow runs cannot be scheduled or reported",
                              self.api_url)
                elif now - outage_since > self.opts.server_grace:
                    if self.server is None:
                        log.error("the Prefect API at %s has not answered for %.0f s (--server-grace); exiting with "
                                  "status %d so a supervisor can restart serve against a healthy server",
                                  self.api_url, now - outage_since, EXIT_SERVER_LOST)
                        if self.runner is not None:
                            self.runner.stop(graceful=False)  # it cannot pause deployments on a dead server
                        return EXIT_SERVER_LOST
                    log.error("the Prefect server has not answered for %.0f s; restarting it", now - outage_since)
                    self.budget.spend("the Prefect server")
                    self.server.stop()
                    self._start_server()
                continue
            if outage_since is not None:
                log.warning("the Prefect API is back after %.0f s; the runner restarts once no run is in flight",
                            time.monotonic() - outage_since)
                outage_since, runner_stale = None, True
            assert self.runner is not None
            if (rc := self.runner.exited()) is not None:
                log.error("the deployment runner exited with status %s; restarting it", rc)
                self.budget.spend("the deployment runner")
                self._start_runner()
                runner_stale = False
            elif runner_stale and self.in_flight() == 0:
                log.info("restarting the deployment runner after the outage")
                self.runner.stop(graceful=False)  # a graceful stop would pause the schedules and drop their runs
                try:
                    self.reschedule_orphans()  # a run it picked up between the check and the kill
                except httpx.HTTPError as err:
                    log.error("could not check for runs orphaned by the runner restart: %s", err)
                self._start_runner()
                runner_stale = False
        return 0


def _env_with(source: str | None, store: str | None) -> dict[str, str]:
    """This process's environment with ``--source`` / ``--store`` as ``IMGCLUST_SOURCE`` / ``IMGCLUST_STORE``."""
    env = dict(os.environ)
    for name, value in (("IMGCLUST_SOURCE", source), ("IMGCLUST_STORE", store)):
        if value:
            env[name] = value
    return env


def serve(source: str | None, store: str | None, opts: ServeOptions) -> int:
    """``imgclust serve``: validate the settings before starting anything, then supervise."""
    from deployments.spec import DEPLOYMENTS, environment

    env = _env_with(source, store)
    environment(env)  # required variables set: a clear error before any process starts
    opts.deployment_names = [d.name for d in DEPLOYMENTS]
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    return Supervisor(opts, env).run()


def deploy(source: str | None, store: str | None) -> int:
    """``imgclust deploy``: ``prefect deploy --all`` of ``deployments/prefect.yaml`` with the IMGCLUST_* defaults
    filled in, onto the process work pool ``IMGCLUST_WORK_POOL`` (created if missing)."""
    from deployments.spec import PROJECT_DIR, YAML_PATH, environment

    env = environment(_env_with(source, store))
    if not env.get("PREFECT_API_URL"):
        raise ConfigError("PREFECT_API_URL is not set: `imgclust deploy` registers the deployments on a running "
                          "Prefect server (e.g. `prefect server start`, then export "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api)")
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
    pool = env["IMGCLUST_WORK_POOL"]
    if subprocess.run([*prefect, "work-pool", "inspect", pool], env=env, capture_output=True).returncode != 0:
        log.info("creating the process work pool %s", pool)
        subprocess.run([*prefect, "work-pool", "create", pool, "--type", "process"], env=env, check=True)
    done = subprocess.run([*prefect, "deploy", "--all", "--prefect-file", str(YAML_PATH)], env=env,
                          cwd=PROJECT_DIR)
    if done.returncode == 0:
        log.info("deployed; start a worker with `prefect worker start --pool %s`", pool)
    return done.returncode


def add_serve_parsers(sub: Any) -> None:
    """Register ``serve`` and ``deploy`` on ``sub`` (argparse sub-parsers); defaults from :class:`ServeOptions`."""
    p = sub.add_parser("serve", help="serve the deployments (nightly, recluster, refine, backfill, pipeline)",
                       description="Serves the deployments of deployments/spec.py under a supervisor. Needs "
                                   "IMGCLUST_SOURCE and IMGCLUST_STORE (or --source/--store); schedules and the "
                                   "novelty automation are set by the IMGCLUST_* variables listed in "
                                   "deployments/spec.py. Without PREFECT_API_URL it starts `prefect server start` on "
                                   "--host:--port (UI and API there) and restarts it if it dies. With PREFECT_API_URL "
                                   "it exits with status 3 when that server stays unreachable for --server-grace "
                                   "seconds, and with status 4 when a process keeps dying.")
    p.add_argument("--source", default=None)
    p.add_argument("--store", default=None)
    p.add_argument("--host", default=default_of(ServeOptions, "host"),
                   help="address of the server it starts (default %(default)s)")
    p.add_argument("--port", type=int, default=default_of(ServeOptions, "port"),
                   help="port of the server it starts (default %(default)s)")
    p.add_argument("--server-grace", type=float, default=default_of(ServeOptions, "server_grace"),
                   help="seconds the Prefect API may be unreachable before serve acts (default %(default)s)")
    p.add_argument("--check-interval", type=float, default=default_of(ServeOptions, "check_interval"),
                   help="health-check period in seconds")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("deploy", help="register the deployments on a work pool (prefect deploy of prefect.yaml)",
                       description="Fills the defaults of unset IMGCLUST_* variables (deployments/spec.py), creates "
                                   "the process work pool IMGCLUST_WORK_POOL (default imgclust) if missing, and runs "
                                   "`prefect deploy --all` with deployments/prefect.yaml against PREFECT_API_URL. "
                                   "Then start a worker: `prefect worker start --pool imgclust`.")
    p.add_argument("--source", default=None)
    p.add_argument("--store", default=None)
    p.set_defaults(func=cmd_deploy)


def cmd_serve(a: argparse.Namespace) -> int:
    if not 0 < a.port < 65536 or a.server_grace <= 0 or a.check_interval <= 0:
        raise ConfigError("--port must be in 1..65535 and --server-grace, --check-interval positive")
    prepare_environment()
    return serve(a.source, a.store, ServeOptions(host=a.host, port=a.port, server_grace=a.server_grace,
                                                 check_interval=a.check_interval))


def cmd_deploy(a: argparse.Namespace) -> int:
    prepare_environment()
    return deploy(a.source, a.store)
