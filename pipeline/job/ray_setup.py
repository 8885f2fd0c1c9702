"""Starting or joining Ray for a job, quietly: nothing written outside the output and the temp
dir, and no error-level line on a run that succeeds."""

from __future__ import annotations

import atexit
import os
import re
import secrets
import sys
import threading

import ray

# Ray's core worker logs this at error level whenever an actor's constructor arguments sit in the
# object store and the actor may restart (ray-project/ray#53727). Ray Data always puts a map
# stage's transformer there and restarts actors forever, so every run with an actor pool prints
# it. It is benign here: the driver owns that object for the whole run, and a lost driver ends the
# run anyway.
BENIGN_NATIVE_LINES = (re.compile(r"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store"),)


def init_ray(address: str | None = None) -> None:
    """Join the cluster at ``address`` (``ray job submit`` sets RAY_ADDRESS), else start a private
    local Ray with a few more logical CPUs than cores, so a small machine does not deadlock."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    # A private cluster keeps Ray's token authentication (on by default), with a fresh token held
    # in this process's environment, which Ray's processes inherit, instead of one Ray would write
    # to ~/.ray. Ray itself switches the mode on (it caches its config at import, so setting
    # RAY_AUTH_MODE here would come too late).
    if os.environ.get("RAY_AUTH_MODE", "token") == "token" and not (
        os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    ):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # Ray runs its workers at nice 15, below its own daemons and this driver, so that on a shared
    # node the control plane stays responsive. In a private cluster the workers are the job: at nice
    # 15 each wake-up of the driver's scheduling loop or of a daemon preempts a generation thread, and
    # on a CPU the actor's other OpenMP thread then waits for it. On 2 cores the job ran at a median
    # 0.89 of the bare predictor with workers at 0, 0.785 at 15 (8 paired repeats, bench/bench_pipeline.py,
    # README). A value the user set stays.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False)


_filtering = False


def filter_native_stderr(patterns) -> None:
    """Drop lines matching ``patterns`` from this process's standard error, including what native
    code (Ray's C++ core worker) writes to file descriptor 2; every other line passes unchanged.

    Descriptor 2 becomes a pipe read by a thread that forwards to the original stream; at exit the
    pipe is closed and drained, so no line is lost."""
    global _filtering
    if _filtering:
        return
    _filtering = True
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not any(p.search(line.decode(errors="replace")) for p in patterns):
                        os.write(original, line + b"\n")
            if pending:
                os.write(original, pending)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the thread drains it and stops
        thread.join(timeout=5)

    atexit.register(restore)
