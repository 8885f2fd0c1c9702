"""Progress an operator can read: in the job's log (under ``ray job submit`` there is no TTY, so
no bars) and in the output while the job runs.

About every ``progress_s`` seconds, and at the end, the driver logs one line: shards written of
those this run writes, rows generated of those it generates (both known from the plan), images
per second over the last minute, and the time left at that rate. The same figures are kept in
``_runs/<run_id>.json``, rewritten at each shard write, so ``hired summary OUTPUT`` on a running
output shows where it stands.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

RATE_WINDOW_S = 60.0


class Progress:
    """This run's work done so far, against the plan's totals."""

    def __init__(self, shards_total: int, rows_total: int, already_complete: int = 0,
                 clock: Callable[[], float] = time.monotonic, window_s: float = RATE_WINDOW_S):
        self.shards_total, self.rows_total, self.already_complete = shards_total, rows_total, already_complete
        self.shards_done = self.rows_done = 0
        self.clock, self.window_s = clock, window_s
        self.started = clock()
        self.samples: deque[tuple[float, int]] = deque([(self.started, 0)])  # (time, rows done by then)

    def rows_arrived(self, count: int) -> None:
        if count:
            self.rows_done += count
            now = self.clock()
            self.samples.append((now, self.rows_done))
            while len(self.samples) > 1 and self.samples[1][0] <= now - self.window_s:
                self.samples.popleft()  # the first sample left is the last one at or before the window's start

    def shard_written(self) -> None:
        self.shards_done += 1

    def images_per_s(self) -> float | None:
        """Rows generated per second over the last ``window_s`` (or since the start, if sooner)."""
        now = self.clock()
        since = max(self.started, now - self.window_s)
        if now - since <= 0:
            return None
        before = max((rows for t, rows in self.samples if t <= since), default=0)
        return (self.rows_done - before) / (now - since)

    def eta_s(self) -> float | None:
        left = self.rows_total - self.rows_done
        if left <= 0:
            return 0.0
        rate = self.images_per_s()
        return left / rate if rate else None

    def figures(self) -> dict:
        rate = self.images_per_s()
        eta = self.eta_s()
        return {"shards_written": self.shards_done, "shards_to_write": self.shards_total,
                "already_complete": self.already_complete, "rows_generated": self.rows_done,
                "rows_to_generate": self.rows_total,
                "images_per_s_last_minute": None if rate is None else round(rate, 3),
                "eta_s": None if eta is None else round(eta, 1), "elapsed_s": round(self.clock() - self.started, 1)}

    def line(self) -> str:
        return progress_line(self.figures())


def progress_line(figures: dict) -> str:
    """One readable line of :meth:`Progress.figures` (also for a run record read back)."""
    rows, total = figures["rows_generated"], figures["rows_to_generate"]
    percent = f" ({100 * rows / total:.0f}%)" if total else ""
    rate = figures["images_per_s_last_minute"]
    eta = figures["eta_s"]
    return (f"{figures['shards_written']:,}/{figures['shards_to_write']:,} shards written"
            f" ({figures['already_complete']:,} already complete), {rows:,}/{total:,} rows{percent}, "
            f"{'n/a' if rate is None else f'{rate:.2f}'} images/s over the last minute, "
            f"ETA {'unknown' if eta is None else duration(eta)}, elapsed {duration(figures['elapsed_s'])}")


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 90 * 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@contextmanager
def logged_every(progress: Progress, every_s: float, log: logging.Logger) -> Iterator[Progress]:
    """Log ``progress`` every ``every_s`` seconds from a thread (so a stalled run still says so), and once at the end."""
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(every_s):
            log.info("progress: %s", progress.line())

    thread = threading.Thread(target=report, name="progress", daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join()
        log.info("progress: %s", progress.line())
