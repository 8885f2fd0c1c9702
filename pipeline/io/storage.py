"""A place on any fsspec filesystem (local path, ``file://``, ``s3://``), resolved once.

Credentials and endpoints come from the standard AWS settings (environment, profiles),
never from arguments that could end up in logs. Every operation on storage goes through
:func:`with_retries` where a caller wants transient failures retried.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import fsspec

from .retry import with_retries

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Storage:
    fs: fsspec.AbstractFileSystem
    path: str  # without the protocol, as the filesystem wants it

    @classmethod
    def at(cls, uri: str) -> Storage:
        fs, path = fsspec.core.url_to_fs(uri)
        return cls(fs, path)

    @property
    def uri(self) -> str:
        """The full URI (``s3://bucket/key``, or a local path with ``file://``)."""
        return self.fs.unstrip_protocol(self.path)

    @property
    def is_s3(self) -> bool:
        return "s3" in self.fs.protocol

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def join(self, *parts: str) -> Storage:
        return Storage(self.fs, posixpath.join(self.path.rstrip("/"), *parts))

    def open(self, mode: str = "rb"):
        return self.fs.open(self.path, mode)

    def exists(self) -> bool:
        """Asks the store itself: s3fs caches listings, which a concurrent writer makes stale."""
        self.fs.invalidate_cache(self.path)
        return with_retries(lambda: self.fs.exists(self.path), f"checking {self.uri}")

    def read_bytes(self) -> bytes:
        def read() -> bytes:
            with self.open("rb") as f:
                return f.read()

        return with_retries(read, f"reading {self.uri}")


def in_threads(work: Callable[[T], R], items: Sequence[T], threads: int) -> list[R]:
    """``[work(x) for x in items]`` with up to ``threads`` calls at once: requests to a store wait
    mostly on it. If calls raise, the one for the earliest item is raised, as the loop would, and
    calls not yet started are dropped."""
    if threads <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=min(threads, len(items)), thread_name_prefix="storage")
    try:
        futures = [pool.submit(work, item) for item in items]
        return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
