"""A place on any fsspec filesystem (local path, ``file://``, ``s3://``), resolved once at the edge
and handed on: the job's input and output are :class:`Location` objects from the command line to
the last write, and every operation on them goes through their retry policy.

Credentials and endpoints come from the standard AWS settings (environment, profiles, instance
roles), never from arguments that could end up in logs.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import fsspec

from ..errors import InputError
from .retry import RetryPolicy, settings_problem

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Location:
    fs: fsspec.AbstractFileSystem
    path: str  # without the protocol, as the filesystem wants it
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def resolve(cls, uri: str, retry: RetryPolicy | None = None) -> Location:
        fs, path = fsspec.core.url_to_fs(str(uri))
        return cls(fs, path, retry or RetryPolicy())

    @property
    def uri(self) -> str:
        """The full URI (``s3://bucket/key``, or a local path with ``file://``)."""
        return self.fs.unstrip_protocol(self.path)

    def __str__(self) -> str:
        """As people write it: a local path as a path, anything else as its URI."""
        return self.path if self.is_local else self.uri

    @property
    def is_s3(self) -> bool:
        return "s3" in self.fs.protocol

    @property
    def is_local(self) -> bool:
        return "file" in self.fs.protocol or "local" in self.fs.protocol

    @property
    def bucket(self) -> str | None:
        return self.path.split("/", 1)[0] if self.is_s3 else None

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def join(self, *parts: str) -> Location:
        return self.at(posixpath.join(self.path.rstrip("/"), *parts))

    def at(self, path: str) -> Location:
        """Another path on the same filesystem, with the same policy."""
        return Location(self.fs, path, self.retry)

    def relative(self, path: str) -> str:
        """``path`` (on this filesystem) relative to this location."""
        return posixpath.relpath(path, self.path) if path != self.path else posixpath.basename(path)

    def open(self, mode: str = "rb", **options):
        return self.fs.open(self.path, mode, **options)

    def exists(self) -> bool:
        """Asks the store itself: s3fs caches listings, which a concurrent writer makes stale."""
        self.fs.invalidate_cache(self.path)
        return self.retry.call(lambda: self.fs.exists(self.path), f"checking {self.uri}")

    def read_bytes(self) -> bytes:
        return self.retry.call(lambda: self.fs.cat_file(self.path), f"reading {self.uri}")

    def ask(self, operation: Callable[[], T], what: str) -> T:
        """``operation()`` at the edge, where the settings are checked: retried while storage fails
        transiently, and a refusal of the settings (credentials, a permission, a missing bucket)
        raised at once as :class:`InputError` naming what to set."""
        try:
            return self.retry.call(operation, what)
        except Exception as error:
            problem = settings_problem(error, self.bucket)
            if problem is None:
                raise
            raise InputError(f"{what}: {problem}") from None

    def check_bucket(self, side: str) -> None:
        """On an object store, that the bucket exists and these credentials may see it (one HEAD)."""
        if not self.is_s3:
            return
        try:
            self.ask(lambda: self.fs.info(self.bucket), f"looking for the {side} bucket {self.bucket}")
        except FileNotFoundError:
            raise InputError(f"the {side} bucket {self.bucket} does not exist (or is not visible with these "
                             "credentials): check the URI, AWS_ENDPOINT_URL and AWS_PROFILE") from None


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
