"""A Ray cluster of two nodes on loopback, for tests: a head and a second node, each a `ray start --block`
in its own process group, and a way to lose the second node as a machine would (every process at once).

Why it is built this way (Ray 2.60, checked on one machine):
* ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps every Ray process on 127.0.0.1; set to 1, the CLI rewrites
  the head's address to the machine's interface address, where a loopback head does not listen. But at 0 the
  CLI refuses to start a worker node at all, so the worker's ``ray start`` alone runs through a launcher that
  lifts that one check (the CLI module gets its own copy of the constant); the rest of Ray, the node's raylet
  and workers included, still see 0.
* Every node gets its own ports (two raylets on one machine would otherwise collide on the fixed defaults,
  such as the dashboard agent's 52365) and its own ``--temp-dir``.
* Ray puts each worker process in its own process group, so killing a node's process group leaves its workers
  running. Losing a node means freezing the group, collecting every descendant and SIGKILLing them all.
* Never ``ray stop``: it stops every Ray on the machine, other people's included.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .servers import free_port

# The worker's `ray start`, with the CLI's refusal of multi-node clusters lifted for that check alone: the
# CLI module gets a copy of Ray's constants saying clusters are enabled, while the rest of Ray (which turns
# 127.0.0.1 into the interface address when they are) keeps the real ones.
WORKER_LAUNCHER = (
    "import sys, types\n"
    "import ray._private.ray_constants as constants\n"
    "import ray.scripts.scripts as cli\n"
    "for_cli = types.ModuleType(constants.__name__)\n"
    "for_cli.__dict__.update(vars(constants))\n"
    "for_cli.ENABLE_RAY_CLUSTER = True\n"
    "cli.ray_constants = for_cli\n"
    "sys.argv = ['ray'] + sys.argv[1:]\n"
    "cli.main()\n"
)


def cluster_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """What every process of a test cluster, and every client of it, runs with."""
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def node_ports() -> list[str]:
    """Fresh ports for everything a node listens on."""
    ports = {
        "node-manager-port": free_port(), "object-manager-port": free_port(), "metrics-export-port": free_port(),
        "dashboard-agent-listen-port": free_port(), "dashboard-agent-grpc-port": free_port(),
        "runtime-env-agent-port": free_port(),
    }
    return [f"--{flag}={port}" for flag, port in ports.items()]


def parent_pids() -> dict[int, int]:
    """pid -> parent pid for every process on the machine (Linux /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # The command name in parentheses may hold spaces; the fields after its closing one are fixed.
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def process_tree(root_pid: int) -> set[int]:
    """The root and all its living descendants."""
    children: dict[int, list[int]] = {}
    for pid, parent in parent_pids().items():
        children.setdefault(parent, []).append(pid)
    tree, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        if pid not in tree and Path(f"/proc/{pid}").exists():
            tree.add(pid)
            todo.extend(children.get(pid, []))
    return tree


def mentioning(text: str) -> set[int]:
    """Processes whose command line holds ``text``: a node's daemons name its temp dir, and one whose
    `ray start` died early has been handed to init, out of its tree."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and text in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                found.add(int(entry))
        except OSError:
            continue
    return found


def signal_all(pids, signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def is_gone(pid: int) -> bool:
    """Exited, or a zombie waiting for a parent that will reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@dataclass
class RayNode:
    name: str
    process: subprocess.Popen
    temp_dir: Path
    killed_pids: list[int] = field(default_factory=list)

    def kill(self) -> list[int]:
        """Lose this node at once, as a machine that dies: freeze its process group so nothing new starts
        and nobody is reparented, collect every descendant (workers live in their own groups), SIGKILL all."""
        try:
            os.killpg(self.process.pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
        tree = process_tree(self.process.pid) | mentioning(f"{self.temp_dir}/")
        signal_all(tree, signal.SIGSTOP)  # workers too: none may notice and clean up as if shut down
        for pid in list(tree):  # any started while freezing
            tree |= process_tree(pid)
        signal_all(tree, signal.SIGKILL)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=60)
        wait_until(lambda: all(is_gone(pid) for pid in tree), 60, f"node {self.name}'s processes ending", every=0.2)
        self.killed_pids = sorted(tree)
        return self.killed_pids

    def stop(self) -> None:
        if self.process.poll() is None or len(process_tree(self.process.pid)) > 1 or mentioning(f"{self.temp_dir}/"):
            self.kill()
        subprocess.run(["rm", "-rf", str(self.temp_dir)], check=False)


@dataclass
class TwoNodeCluster:
    head: RayNode
    second: RayNode | None
    gcs_address: str
    dashboard: str  # http://127.0.0.1:PORT, for `ray job submit` and the state API

    def stop(self) -> None:
        try:
            if self.second is not None:  # first: it would otherwise keep trying to reach the head
                self.second.stop()
        finally:
            self.head.stop()


def short_temp_dir(tag: str) -> Path:
    # Ray's socket paths must stay under ~107 bytes: pytest's tmp_path is too long.
    return Path("/tmp") / f"r{tag}{os.getpid()}-{free_port()}"


def start_head(log_dir: Path, num_cpus: int, resources: dict, env: dict) -> tuple[RayNode, str, str]:
    temp = short_temp_dir("2nh")
    gcs, dashboard = free_port(), free_port()
    args = ["ray", "start", "--head", "--block", f"--temp-dir={temp}", "--node-ip-address=127.0.0.1",
            f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={free_port()}", *node_ports(), f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(resources)}", "--disable-usage-stats"]
    log = open(log_dir / "ray-head.log", "ab")  # every try's, one after the other
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return RayNode("head", process, temp), f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}"


def start_worker(name: str, gcs_address: str, log_dir: Path, num_cpus: int, resources: dict, env: dict) -> RayNode:
    temp = short_temp_dir("2nw")
    args = [sys.executable, "-c", WORKER_LAUNCHER, "start", "--block", f"--address={gcs_address}",
            f"--temp-dir={temp}", "--node-ip-address=127.0.0.1", *node_ports(), f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(resources)}", "--disable-usage-stats"]
    log = open(log_dir / f"ray-{name}.log", "ab")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return RayNode(name, process, temp)


def alive_nodes(dashboard: str) -> list:
    from ray.util.state import list_nodes

    try:
        nodes = list_nodes(address=dashboard, detail=True, raise_on_missing_output=False)
        return [n for n in nodes if n.state == "ALIVE"]
    except Exception:  # the dashboard answers before its state API can: not up yet
        return []


def listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return True
    except OSError:
        return False


def wait_until(condition, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


class NodeStartFailed(RuntimeError):
    """A node's `ray start` gave up: on an overloaded machine Ray's own 30 s start-up limit can pass."""


def running(node: RayNode) -> bool:
    if node.process.poll() is not None:
        raise NodeStartFailed(f"`ray start` of {node.name} exited with status {node.process.returncode}")
    return True


def dashboard_answers(dashboard: str) -> bool:
    try:
        with urllib.request.urlopen(f"{dashboard}/api/version", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def start_cluster_once(log_dir: Path, num_cpus: int, head_env: dict | None, worker_env: dict | None,
                       deadline: float) -> TwoNodeCluster:
    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    head, gcs, dashboard = start_head(log_dir, num_cpus, {"node_a": 1}, cluster_env(head_env))
    cluster = TwoNodeCluster(head, None, gcs, dashboard)
    try:
        # The second node needs only the head's GCS: start it while the head's dashboard is still coming up.
        wait_until(lambda: running(head) and listening(gcs), left(), "the head's GCS listening", every=0.5)
        second = cluster.second = start_worker("node_b", gcs, log_dir, num_cpus, {"node_b": 1}, cluster_env(worker_env))
        wait_until(lambda: running(head) and dashboard_answers(dashboard), left(), "the head's dashboard", every=0.5)
        wait_until(lambda: running(head) and running(second) and len(alive_nodes(dashboard)) == 2, left(),
                   "the second node joining the head", every=1)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def start_two_node_cluster(log_dir: Path, num_cpus: int = 4, head_env: dict | None = None,
                           worker_env: dict | None = None, timeout: float = 300) -> TwoNodeCluster:
    """A head (resource ``node_a``) and a second node (``node_b``) joined to it, both alive when this returns.
    ``head_env`` and ``worker_env`` are added to one node's environment only: its processes alone see them.
    A node whose start-up Ray gives up on is started again, on fresh ports, while ``timeout`` lasts (one
    limit for the whole start: callers budget for it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return start_cluster_once(log_dir, num_cpus, head_env, worker_env, deadline)
        except NodeStartFailed as failure:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no two-node cluster within {timeout:.0f} s; last try: {failure}") from failure
            print(f"{failure}: starting the cluster again (logs in {log_dir})")


def node_names(dashboard: str, with_state: bool = False) -> dict:
    """node id -> the custom resource that names it (node_a, node_b), or (name, ALIVE or DEAD)."""
    from ray.util.state import list_nodes

    names = {}
    for node in list_nodes(address=dashboard, detail=True, raise_on_missing_output=False):
        total = node.resources_total or {}
        name = next((k for k in ("node_a", "node_b") if k in total), "?")
        names[node.node_id] = (name, node.state) if with_state else name
    return names
