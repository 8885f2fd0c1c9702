"""Storage that fails for a while: retry with backoff, then fail clearly.

The pipeline draws one line: a *data* problem (a missing file, a corrupt
Parquet footer, access denied) is permanent, so it becomes an error row or a
failed shard at once; an *infrastructure* problem (the object store unreachable,
an S3 InternalError or SlowDown, a dropped connection) is transient, so the
operation is retried with exponential backoff. If storage is still down when
the retries run out, the job stops with a clear message: no healthy row is
turned into an error, and rerunning the same command finishes the job.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import StorageUnavailable

log = logging.getLogger("hired.pipeline")
T = TypeVar("T")

# How long to keep trying one operation; tests shorten it.
RETRY_SECONDS = float(os.environ.get("HIRED_IO_RETRY_SECONDS", "120"))
_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EPIPE, errno.EAGAIN, errno.EBUSY,
                     errno.EREMOTEIO}  # s3fs maps S3's InternalError / SlowDown to EREMOTEIO and EBUSY


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is storage failing for now rather than the data being bad."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError)):
        return False
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    module = type(error).__module__
    if module.startswith("botocore") and type(error).__name__ != "ClientError":
        return True  # BotoCoreError: endpoint, connection, read-timeout errors (ClientError is an S3 answer)
    if module.startswith("aiohttp"):
        return True
    return isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS


def with_retries(operation: Callable[[], T], what: str, seconds: float | None = None) -> T:
    """Run ``operation``; on a transient storage error retry with jittered exponential backoff
    (0.5 s, 1 s, 2 s, ... at most 15 s apart) for up to ``seconds``, then raise StorageUnavailable."""
    deadline = time.monotonic() + (RETRY_SECONDS if seconds is None else seconds)
    delay = 0.5
    attempt = 0
    while True:
        attempt += 1
        try:
            return operation()
        except Exception as error:
            if not is_transient(error):
                raise
            if time.monotonic() + delay > deadline:
                raise StorageUnavailable(
                    f"{what}: storage unavailable after {attempt} attempts: {type(error).__name__}: {error}"
                ) from None
            log.warning("%s: %s: %s; retrying in %.1f s", what, type(error).__name__, error, delay)
            time.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 15.0)
