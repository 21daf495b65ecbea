"""Progress lines for long steps: which stage runs, how far it is (done/total) and for how long.

A step that can take more than ~10 s says so in the log, so neither a terminal nor a Prefect run log goes
silent for minutes (the library logs through :mod:`logging`; the CLI and the deployments forward the
``imgclust`` loggers to Prefect's run logs). Lines are throttled: one when a stage starts, then at most one
per ``every`` seconds (or one per unit of work, ``every=0``, for units that are each slow: EM runs, k-means
restarts), and one when it ends::

    with Progress("GMM consensus: EM runs", 8, log, every=0) as p:
        for r in range(8):
            ...
            p.advance()

logs ``GMM consensus: EM runs: started (8 runs)``, ``GMM consensus: EM runs: 1/8 runs (12%), 3.1 s, ~22 s left``,
..., ``GMM consensus: EM runs: done 8/8 runs in 24.6 s``. :func:`tracked` wraps a :data:`BatchSource` so each pass
over the feature stream reports the rows it has read; :func:`timed` brackets one opaque call (a UMAP fit).
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from types import TracebackType

import numpy as np

from imgclust.batches import BatchSource

__all__ = ["EVERY_SECONDS", "Progress", "timed", "tracked"]

EVERY_SECONDS = 10.0
"""Default throttle: at most one progress line per stage this often (the start and end lines aside)."""


class Progress:
    """Progress of one stage over ``total`` units of ``unit`` (``None``: total unknown).

    :meth:`start` logs the start line, :meth:`advance` the throttled progress lines, :meth:`finish` the end
    line with the elapsed time; as a context manager it calls :meth:`start` and, when the block ends without an
    exception, :meth:`finish`. Elapsed time counts from construction when :meth:`start` is never called.
    """

    def __init__(self, stage: str, total: int | None, logger: logging.Logger, *, unit: str = "",
                 every: float = EVERY_SECONDS, level: int = logging.INFO,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.stage = stage
        self.total = total
        self.logger = logger
        self.unit = unit
        self.every = every
        self.level = level
        self.clock = clock
        self.done = 0
        self.t0 = self._last = clock()

    @property
    def elapsed(self) -> float:
        """Seconds since the stage started."""
        return self.clock() - self.t0

    def _count(self, done: int) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.total is None:
            return f"{done}{unit}"
        pct = f" ({100 * done / self.total:.0f}%)" if self.total else ""
        return f"{done}/{self.total}{unit}{pct}"

    def start(self, detail: str = "") -> Progress:
        """Log ``<stage>: started (<total> <unit>[, detail])`` and restart the clock."""
        self.t0 = self._last = self.clock()
        what = [f"{self.total} {self.unit}".strip()] if self.total is not None else []
        what += [detail] if detail else []
        self.logger.log(self.level, "%s: started%s", self.stage, f" ({', '.join(what)})" if what else "")
        return self

    def advance(self, n: int = 1, detail: str = "") -> None:
        """Count ``n`` more units done; log a line if ``every`` seconds passed since the last one (every unit
        when ``every <= 0``), with an estimate of the time left when the total is known. Reaching the total
        logs nothing: :meth:`finish` reports it."""
        self.done += n
        now = self.clock()
        if now - self._last < self.every or (self.total is not None and self.done >= self.total):
            return  # the last unit is reported by finish()
        self._last = now
        elapsed = now - self.t0
        left = ""
        if self.total and 0 < self.done < self.total:
            left = f", ~{elapsed * (self.total - self.done) / self.done:.0f} s left"
        self.logger.log(self.level, "%s: %s, %.1f s%s%s", self.stage, self._count(self.done), elapsed, left,
                        f"; {detail}" if detail else "")

    def finish(self, detail: str = "") -> None:
        """Log ``<stage>: done <done>/<total> in <elapsed> s[; detail]``."""
        self.logger.log(self.level, "%s: done %s in %.1f s%s", self.stage, self._count(self.done), self.elapsed,
                        f"; {detail}" if detail else "")

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:  # an error (or a consumer that stopped early) reports itself
            self.finish()


@contextlib.contextmanager
def timed(stage: str, logger: logging.Logger, detail: str = "") -> Iterator[Progress]:
    """Bracket one opaque step (nothing to count, e.g. a UMAP fit) with a start line and, when it succeeds, an
    end line with the elapsed time."""
    progress = Progress(stage, None, logger).start(detail)
    yield progress
    logger.log(progress.level, "%s: finished in %.1f s", stage, progress.elapsed)


def tracked(source: BatchSource, stage: str, total_rows: int | None, logger: logging.Logger, *,
            every: float = EVERY_SECONDS) -> BatchSource:
    """``source`` whose every pass logs its progress in rows (``stage``; ``total_rows`` when known): a start
    line, a line at most every ``every`` seconds, and an end line when the pass reads the whole stream. A
    block counts as done when the consumer asks for the next one, so the time includes its processing."""

    def passes() -> Iterator[np.ndarray]:
        progress = Progress(stage, total_rows, logger, unit="rows", every=every).start()
        for block in source():
            yield block
            progress.advance(int(block.shape[0]))
        progress.finish()

    return passes
