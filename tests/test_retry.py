"""The one retry policy: transient storage errors retried with backoff, everything else raised at
once, a stall timed from its own first failure, and streams resumed after the last item handed out."""

import time

import numpy as np
import pytest

from pipeline.errors import StorageUnavailable
from pipeline.io import retry
from pipeline.io.formats import webdataset as wd
from pipeline.io.retry import RetryPolicy, is_transient
from pipeline.settings import JobSettings
from pipeline.stages.read import read_rows, read_tasks

from .data import encoded, plan_input
from .test_webdataset import write_tar


class Flaky:
    """Fails with ``error`` the first ``failures`` calls, then returns ``value``."""

    def __init__(self, failures, error=ConnectionError("connection reset"), value="ok"):
        self.failures, self.error, self.value, self.calls = failures, error, value, 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.value


@pytest.fixture
def no_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(retry.time, "sleep", slept.append)
    return slept


def test_transient_errors_are_retried_with_growing_delays(no_sleep, caplog):
    operation = Flaky(4)
    assert RetryPolicy(window_s=60).call(operation, "reading x") == "ok"
    assert operation.calls == 5
    assert len(no_sleep) == 4 and all(b > a for a, b in zip(no_sleep, no_sleep[1:]))  # 0.5, 1, 2, 4 s give or take 20%
    assert 0.4 <= no_sleep[0] <= 0.6 and sum("retrying in" in m for m in caplog.messages) == 4  # a line before each sleep


@pytest.mark.parametrize("error", [FileNotFoundError("gone"), PermissionError("denied"), ValueError("not parquet")])
def test_data_and_settings_errors_are_raised_at_once(no_sleep, error):
    operation = Flaky(1, error)
    with pytest.raises(type(error)):
        RetryPolicy().call(operation, "reading x")
    assert operation.calls == 1 and not no_sleep


def test_missing_credentials_are_not_an_outage():
    import botocore.exceptions

    assert not is_transient(botocore.exceptions.NoCredentialsError())
    assert is_transient(botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())


def test_a_stall_longer_than_the_window_stops_the_run(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(retry.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(retry.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    operation = Flaky(10**6)
    with pytest.raises(StorageUnavailable, match=r"reading x: storage unavailable after \d+ attempts: ConnectionError"):
        RetryPolicy(window_s=30).call(operation, "reading x")
    assert 30 - 1.2 * RetryPolicy().max_delay_s <= clock[0] <= 30  # retried for the window, not past it


def test_each_stall_of_a_stream_gets_the_whole_window(monkeypatch):
    """A stream that fails once long after it began (its consumer slow), then again later: each
    failure starts its own stall, so neither stops the read, and no item is lost or repeated."""
    clock = [0.0]
    monkeypatch.setattr(retry.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(retry.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    failed_at = set()

    def open_from(done):
        for item in range(done, 10):
            if item in (3, 7) and item not in failed_at:
                failed_at.add(item)
                raise ConnectionError(f"dropped before item {item}")
            yield item

    seen = []
    for item in RetryPolicy(window_s=5).resumable(open_from, "reading y"):
        seen.append(item)
        clock[0] += 100  # the consumer holds the stream far longer than the window between items
    assert seen == list(range(10)) and failed_at == {3, 7}


def test_a_tar_read_held_past_the_window_recovers_from_a_blip(tmp_path, monkeypatch):
    """The read task is held at a slice (Ray's backpressure) for longer than the retry window, then
    the store drops the connection once: the read resumes after the samples handed on."""
    write_tar(tmp_path / "a.tar", [{"__key__": f"{i:03d}", "jpg": encoded(8, 8, "JPEG", seed=i)} for i in range(9)])
    (shard,), _ = plan_input(str(tmp_path))
    monkeypatch.setattr(wd, "SLICE_ROWS", 3)
    original, opened = wd._samples_after, []

    def flaky(where, done):
        opened.append(done)
        for sample in original(where, done):
            if sample.key == "004" and len(opened) == 1:
                raise ConnectionResetError("connection reset by peer")
            yield sample

    monkeypatch.setattr(wd, "_samples_after", flaky)
    settings = JobSettings(input=str(tmp_path), io_retry_s=1.0)
    rows = []
    for batch in read_rows({"item": np.array(read_tasks([shard]), dtype=object)}, settings.input, settings):
        rows += list(batch["id"])
        time.sleep(1.3)  # held past the window between slices
    assert opened == [0, 4] and rows == [f"{i:03d}" for i in range(9)]  # reopened after the 4 samples handed on
