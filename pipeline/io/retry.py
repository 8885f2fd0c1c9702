"""Storage that fails for a while: the one retry policy for every storage operation.

The pipeline draws one line: a *data* problem (a missing file, a corrupt Parquet footer) is
permanent, so it becomes an error row or a failed shard at once; a *settings* problem (no
credentials, access denied, no such bucket) is permanent too and stops the run before anything
heavy starts; an *infrastructure* problem (the store unreachable, an S3 InternalError or
SlowDown, a dropped connection) is transient, so the operation is retried with jittered
exponential backoff. A stall retried past the policy's window stops the run with
:class:`StorageUnavailable`: no healthy row is turned into an error, and rerunning the same
command finishes the job.

Two entry points share the policy: :meth:`RetryPolicy.call` for one operation, and
:meth:`RetryPolicy.resumable` for a stream of items (Parquet slices, tar samples) that is reopened
after the last item handed out. Each stall is timed from its own first failure, so a long read
that meets a blip hours in gets the whole window for it.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from ..errors import StorageUnavailable

log = logging.getLogger("hired.pipeline")
T = TypeVar("T")

_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EPIPE, errno.EAGAIN, errno.EBUSY,
                     errno.EREMOTEIO}  # s3fs maps S3's InternalError / SlowDown to EREMOTEIO and EBUSY
# botocore errors that are the settings' fault, not the store's: retrying cannot help.
_SETTINGS_ERRORS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                    "NoRegionError", "ProfileNotFound", "InvalidConfigError"}


# How the store words a refusal of the credentials themselves (not of one permission).
_REFUSED_CREDENTIALS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "access key id you provided does not exist",
                        "signature we calculated does not match", "InvalidToken", "ExpiredToken", "token has expired")


def settings_problem(error: BaseException, bucket: str | None = None) -> str | None:
    """What to set when ``error`` is storage refusing these settings (no or wrong credentials, a
    permission missing, a bucket that does not exist), in words naming the setting; None for any
    other error. ``bucket``: the bucket the operation was about, on an object store."""
    name = type(error).__name__
    if type(error).__module__.startswith("botocore") and name in _SETTINGS_ERRORS:
        return {
            "NoCredentialsError": "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                                  "AWS_PROFILE (a profile in ~/.aws/credentials), or run where an instance role "
                                  "provides them",
            "PartialCredentialsError": f"incomplete AWS credentials ({error}): set both AWS_ACCESS_KEY_ID and "
                                       "AWS_SECRET_ACCESS_KEY",
            "NoRegionError": "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION)",
            "ProfileNotFound": f"{error}: AWS_PROFILE names a profile that ~/.aws/config and ~/.aws/credentials "
                               "do not hold",
        }.get(name, f"{error}: check AWS_PROFILE and ~/.aws/config")
    cause = error.__cause__
    code = (getattr(cause, "response", None) or {}).get("Error", {}).get("Code", "")
    text = f"{code} {error}".lower()
    if isinstance(error, PermissionError) and bucket:
        if any(marker.lower() in text for marker in _REFUSED_CREDENTIALS):
            return (f"the store refused these credentials ({error}): check AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and AWS_ENDPOINT_URL for a store other than AWS")
        return (f"access denied ({error}): the credentials in use (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or AWS_PROFILE) are not valid for this store or lack the permission")
    if isinstance(error, FileNotFoundError) and bucket and (code == "NoSuchBucket" or "bucket does not exist" in text):
        return f"the bucket {bucket} does not exist: check the URI (and AWS_ENDPOINT_URL for a store other than AWS)"
    return None


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is storage failing for now rather than the data or the settings being wrong."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError)):
        return False
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    module, name = type(error).__module__, type(error).__name__
    if module.startswith("botocore"):
        # BotoCoreError: endpoint, connection and read-timeout errors; a ClientError is the store's answer.
        return name != "ClientError" and name not in _SETTINGS_ERRORS
    if module.startswith("aiohttp"):
        return True
    return isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS


@dataclass(frozen=True)
class RetryPolicy:
    """How long a stall of storage is retried, and how far apart the attempts are."""

    window_s: float = 120.0  # one stall, from its first failure, before the run stops
    first_delay_s: float = 0.5
    max_delay_s: float = 15.0

    def __post_init__(self) -> None:
        if not self.window_s >= 0:
            raise ValueError(f"the retry window must be >= 0 seconds, got {self.window_s!r}")

    def call(self, operation: Callable[[], T], what: str) -> T:
        """``operation()``, retried while it fails transiently; StorageUnavailable once the window is spent."""
        stall = _Stall(self, what)
        while True:
            try:
                return operation()
            except Exception as error:
                stall.wait_or_give_up(error)

    def resumable(self, open_from: Callable[[int], Iterable[T]], what: str) -> Iterator[T]:
        """The items of ``open_from(0)``; when the stream fails transiently, ``open_from(n)`` again with
        ``n`` the items handed out so far. Progress ends a stall: the next failure starts a new one."""
        done = 0
        stall = _Stall(self, what)
        while True:
            try:
                for item in open_from(done):
                    if stall.failures:
                        stall = _Stall(self, what)
                    yield item
                    done += 1
                return
            except Exception as error:
                stall.wait_or_give_up(error, f" after {done} items")


class _Stall:
    """One run of failures: when it began, how many, the next delay."""

    def __init__(self, policy: RetryPolicy, what: str):
        self.policy, self.what = policy, what
        self.failures = 0
        self.began = 0.0
        self.delay = policy.first_delay_s

    def wait_or_give_up(self, error: Exception, where: str = "") -> None:
        """Sleep before the next attempt, or re-raise ``error`` (not transient) or StorageUnavailable (window spent)."""
        if isinstance(error, StorageUnavailable) or not is_transient(error):
            raise error
        now = time.monotonic()
        if not self.failures:
            self.began = now
        self.failures += 1
        pause = self.delay * random.uniform(0.8, 1.2)  # jitter: many workers hitting one store spread out
        if now + pause - self.began > self.policy.window_s:
            raise StorageUnavailable(f"{self.what}: storage unavailable after {self.failures} attempts"
                                     f"{where}: {type(error).__name__}: {error}") from None
        log.warning("%s%s: %s: %s; retrying in %.1f s", self.what, where, type(error).__name__, error, pause)
        time.sleep(pause)
        self.delay = min(self.delay * 2, self.policy.max_delay_s)
