"""Failpoints: named places in the pipeline that a fault-injection test can make fail.

A nightly job over millions of images meets dying workers and exhausted GPUs; the
tests prove nothing is lost by causing exactly those failures at exactly these
places, in the real pipeline, through an environment variable (Ray workers inherit
the environment of the Ray they belong to):

    HIRED_FAULTS="generate=kill@3;generate=oom@1%2"

A spec is ``NAME=ACTION[@WHEN][#ONCE_FILE]``, several joined by ``;``:

* ``ACTION``: ``kill`` ends the process at once (as a dying worker or node does),
  ``oom`` raises a CUDA out-of-memory error, ``raise`` a RuntimeError, ``sleepS`` pauses
  S seconds, ``until:PATH`` holds the process until the file PATH exists (at most ten
  minutes): a test breaks something while the process stands at a known point, then lets
  it go on;
* ``WHEN``: ``N`` fires at this process's N-th pass (default 1); ``N%M`` at the N-th
  and then every M-th pass;
* ``ONCE_FILE``: fire in only one process of the whole job: the first to create
  this file (atomically) fires, the others pass. A restarted worker thus does not
  die again.

Unset, a failpoint is a dictionary lookup: nothing in production depends on it.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass

ENV = "HIRED_FAULTS"
HOLD_LIMIT_S = 600.0  # an ``until:`` hold whose test died goes on by itself
_passes: Counter = Counter()


@dataclass(frozen=True)
class Fault:
    name: str
    action: str
    first: int = 1
    every: int | None = None
    once_file: str | None = None

    def due(self, count: int) -> bool:
        if count == self.first:
            return True
        return self.every is not None and count > self.first and (count - self.first) % self.every == 0


def parse(spec: str) -> list[Fault]:
    faults = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, _, rest = part.partition("=")
        rest, _, once_file = rest.partition("#")
        action, _, when = rest.partition("@")
        first, _, every = (when or "1").partition("%")
        known = action in ("kill", "oom", "raise") or _sleep_seconds(action) is not None or _until_path(action)
        if not name or not known:
            raise ValueError(f"bad {ENV} entry {part!r}")
        faults.append(Fault(name.strip(), action, int(first), int(every) if every else None, once_file or None))
    return faults


def _sleep_seconds(action: str) -> float | None:
    try:
        return float(action.removeprefix("sleep")) if action.startswith("sleep") else None
    except ValueError:
        return None


def _until_path(action: str) -> str | None:
    """The file an ``until:PATH`` action waits for; None for any other action."""
    path = action.removeprefix("until:")
    return path if path and path != action else None


def _claim(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def failpoint(name: str) -> None:
    """Fail here if ``HIRED_FAULTS`` says so; otherwise do nothing."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    _passes[name] += 1
    for fault in parse(spec):
        if fault.name != name or not fault.due(_passes[name]):
            continue
        if fault.once_file and not _claim(fault.once_file):
            continue
        if fault.action == "kill":
            os._exit(137)
        if fault.action.startswith("sleep"):
            time.sleep(_sleep_seconds(fault.action))
            continue
        if release := _until_path(fault.action):
            deadline = time.monotonic() + HOLD_LIMIT_S
            while not os.path.exists(release) and time.monotonic() < deadline:
                time.sleep(0.05)
            continue
        if fault.action == "oom":
            import torch

            raise torch.OutOfMemoryError(f"CUDA out of memory (injected at failpoint {name})")
        raise RuntimeError(f"injected failure at failpoint {name}")
