"""Real Prefect servers and served deployments for the operations tests: processes, waits, runs, API reads.

A ``prefect server start`` or ``imgclust serve`` runs as a subprocess in its own session (so its whole
process group can be ended), its output in a log file whose tail goes into every failure message.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without PREFECT_* / IMGCLUST_* settings, plus quiet defaults and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "IMGCLUST_"))}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1", DASK_LOGGING__DISTRIBUTED="warning")
    env.update(extra)
    return env


class Proc:
    """A subprocess in its own session, output to ``logdir/<name>.log``."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name, self.log = name, logdir / f"{name}.log"
        self._out = self.log.open("ab")
        self.popen = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        log.info("started %s (pid %d): %s", name, self.popen.pid, " ".join(args))

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail(self.log)}")

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash, not a shutdown)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)
        log.info("killed %s", self.name)

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left of it."""
        pgid = self.popen.pid  # session leader: its pid is the group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=40)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop on SIGTERM; killing its process group", self.name)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # children (flow-run subprocesses, Dask workers) go too
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self._out.close()
        log.info("stopped %s (rc %s)", self.name, self.popen.returncode)

    def group_alive(self) -> bool:
        try:
            os.killpg(self.popen.pid, 0)
        except ProcessLookupError:
            return False
        return True


def wait_for(what: str, ok: Any, procs: list[Proc], timeout: float, every: float = 0.5) -> Any:
    """Poll ``ok()`` until truthy; fail with the processes' log tails after ``timeout`` or if one exits."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        for p in procs:
            p.check_alive()
        try:
            value = ok()
            if value:
                return value
        except Exception as err:  # noqa: BLE001 (not up yet)
            last = err
        time.sleep(every)
    tails = "\n".join(f"--- {p.name}\n{tail(p.log)}" for p in procs)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s (last error: {last!r})\n{tails}")


def start_server(port: int, home: Path, logdir: Path, *, name: str = "prefect-server", **env: str) -> Proc:
    """``prefect server start`` on 127.0.0.1:``port`` with its database under ``home`` (SQLite unless
    ``PREFECT_SERVER_DATABASE_CONNECTION_URL`` is given), healthy on return."""
    proc = Proc(name, [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                       str(port)], clean_env(PREFECT_HOME=str(home), **env), logdir)
    wait_for("Prefect server /api/health", lambda: healthy(f"http://127.0.0.1:{port}/api"), [proc], 180)
    return proc


def healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def api_post(api: str, path: str, body: dict[str, Any] | None = None) -> Any:
    r = httpx.post(f"{api}/{path}", json=body or {}, timeout=30)
    r.raise_for_status()
    return r.json()


def run_deployment_and_wait(api: str, name: str, procs: list[Proc], timeout: float = 240.0, **kwargs: Any) -> Any:
    """``run_deployment`` as the UI does it; wait for a final state; the flow run must be Completed."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    t0 = time.monotonic()
    with temporary_settings({PREFECT_API_URL: api}):
        flow_run = run_deployment(name, timeout=timeout, poll_interval=1, **kwargs)
    for p in procs:
        p.check_alive()
    state = flow_run.state
    log.info("%s -> flow run %s %s in %.1fs", name, flow_run.id, state.name if state else None,
             time.monotonic() - t0)
    if state is None or not state.is_completed():
        tails = "\n".join(f"--- {p.name}\n{tail(p.log, 8000)}" for p in procs)
        raise AssertionError(f"{name}: flow run {flow_run.id} ended {state!r}\n{tails}")
    return flow_run
