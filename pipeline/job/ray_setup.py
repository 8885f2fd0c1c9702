"""Starting or joining Ray for a job: nothing written outside the output and Ray's temp dir."""

from __future__ import annotations

import os
import secrets

import ray


def init_ray(address: str | None = None) -> None:
    """Join the cluster at ``address`` (``ray job submit`` sets RAY_ADDRESS, read into the settings),
    else start a private local Ray with a few more logical CPUs than cores, so a small machine does
    not deadlock."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    # A private cluster keeps Ray's token authentication (on by default). Ray would write a token to
    # ~/.ray; instead a fresh one lives in this process's environment, where Ray's own processes
    # find it (Ray reads the token only from there or from a file).
    if os.environ.get("RAY_AUTH_MODE", "token") == "token" and not (
        os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    ):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # Ray runs workers at nice 15, below its daemons and the driver, so a shared node's control
    # plane stays responsive. In a private cluster the workers are the job: at nice 15 each wake-up
    # of the driver or a daemon preempts a generation thread, and on a CPU the actor's other threads
    # then wait for it (bench/README.md), so they run at normal priority here, unless Ray's own
    # RAY_worker_niceness says otherwise.
    niceness = {} if "RAY_worker_niceness" in os.environ else {"worker_niceness": 0}
    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, _system_config=niceness)
