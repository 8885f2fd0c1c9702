"""OOM back-off: should a batch run out of memory, it is split in halves until it fits, later
batches are made smaller, and an item that does not fit alone becomes an error result. No item
is lost."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .device import release_device_memory


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device out-of-memory error."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    # Older paths raise a bare RuntimeError ("CUDA error: out of memory", cuDNN/cuBLAS allocation failures).
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


@dataclass
class AdaptiveBatchSize:
    """The batch size for the next batch: lowered by OOM back-off, never raised."""

    batch_size: int
    out_of_memory_errors: int = 0
    failed_items: int = 0  # items that ran out of memory alone and became errors
    history: list[str] = field(default_factory=list)  # one line per lowering, for the log

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def lower_to(self, size: int, reason: str) -> None:
        size = max(1, size)
        if size < self.batch_size:
            self.history.append(f"batch size {self.batch_size} -> {size}: {reason}")
            self.batch_size = size


def _out_of_memory_reason(run_batch, chunk: list, is_oom) -> tuple[list | None, str | None]:
    """Run ``chunk``; its results, or the reason it ran out of memory. Other errors propagate.

    Only the message leaves this function: the exception's traceback holds the
    frames of the failed forward, and with them the tensors we want freed.
    """
    try:
        results = list(run_batch(chunk))
    except Exception as error:
        if not is_oom(error):
            raise
        return None, f"{type(error).__name__}: {error}"
    if len(results) != len(chunk):
        raise ValueError(f"run_batch returned {len(results)} results for {len(chunk)} items")
    return results, None


def _run_halving(chunk: list, run_batch, make_error, is_oom, free_memory, state: AdaptiveBatchSize):
    """Results for ``chunk`` in order, splitting on OOM; and the largest part size that ran (0: none)."""
    results, reason = _out_of_memory_reason(run_batch, chunk, is_oom)
    if reason is None:
        return results, len(chunk)
    state.out_of_memory_errors += 1
    free_memory()
    if len(chunk) == 1:
        state.failed_items += 1
        return [make_error(chunk[0], f"out of memory: the item alone in its batch ({reason})")], 0
    middle = (len(chunk) + 1) // 2
    first, first_ran = _run_halving(chunk[:middle], run_batch, make_error, is_oom, free_memory, state)
    second, second_ran = _run_halving(chunk[middle:], run_batch, make_error, is_oom, free_memory, state)
    return first + second, max(first_ran, second_ran)


def run_with_oom_backoff(
    items: Sequence,
    run_batch: Callable[[list], Sequence],
    batch_size: int | AdaptiveBatchSize,
    make_error: Callable[[object, str], object],
    is_oom: Callable[[BaseException], bool] = is_out_of_memory,
    free_memory: Callable[[], None] = release_device_memory,
) -> list:
    """``run_batch`` over ``items`` in batches, backing off on out-of-memory errors; one result per item, in order.

    ``run_batch(list_of_items)`` returns one result per item, in order. When it
    runs out of memory, memory is freed and the batch is run again as two
    halves, recursively; an item that runs out of memory alone becomes
    ``make_error(item, reason)``. Later batches use the largest size that ran
    within the failed batch (half its size if none did), kept in
    ``batch_size`` when it is an :class:`AdaptiveBatchSize`: pass one object for
    the life of a GPU actor so that what was learnt carries over. Any other
    exception propagates (the caller handles its rows).
    """
    state = batch_size if isinstance(batch_size, AdaptiveBatchSize) else AdaptiveBatchSize(int(batch_size))
    items = list(items)
    results: list = []
    start = 0
    while start < len(items):
        chunk = items[start : start + state.batch_size]
        start += len(chunk)
        chunk_results, largest_ran = _run_halving(chunk, run_batch, make_error, is_oom, free_memory, state)
        results.extend(chunk_results)
        if largest_ran < len(chunk):
            fallback = largest_ran or len(chunk) // 2
            state.lower_to(fallback, f"out of memory on a batch of {len(chunk)}")
    return results
