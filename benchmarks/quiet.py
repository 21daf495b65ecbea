"""Shared by the benchmark scripts: wait for a quiet machine, and say how quiet it was.

Timings on a shared 2-core machine are only comparable when nothing else runs. Before each timed
part a script sits idle for 5 s and measures the machine's CPU use with psutil (all cores, so 50% is
one core busy on 2 cores); that is what *other* processes use. It waits (never forever) until that
is below ``--max-busy`` and records the value it measured, so a table taken on a busy machine says so.
The 1-minute load average is not used: it also counts this script's own work of the last minutes.
"""
from __future__ import annotations

import argparse
import logging
import time

import psutil

log = logging.getLogger("benchmarks.quiet")


def wait_for_quiet(max_busy: float, max_wait_s: float) -> float:
    """Idle-measure CPU busy % (5 s) until below ``max_busy`` or ``max_wait_s`` passed; return the last value."""
    deadline = time.monotonic() + max_wait_s
    busy = psutil.cpu_percent(interval=5)
    while busy > max_busy and time.monotonic() < deadline:
        log.info("other processes use %.0f%% CPU (> %.0f%%); waiting", busy, max_busy)
        time.sleep(10)
        busy = psutil.cpu_percent(interval=5)
    if busy > max_busy:
        log.warning("still %.0f%% busy after waiting %.0f s; measuring anyway (the table records it)",
                    busy, max_wait_s)
    return busy


def add_quiet_args(parser: argparse.ArgumentParser) -> None:
    """``--max-busy`` and ``--max-wait`` options."""
    parser.add_argument("--max-busy", type=float, default=10.0,
                        help="wait until other processes use less than this %% of all cores (default: 10)")
    parser.add_argument("--max-wait", type=float, default=300.0,
                        help="at most this many seconds of waiting before each timed part (default: 300)")
