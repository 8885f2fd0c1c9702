"""A generation actor's micro-batches: its items, longest prompt first, cut into batches that fit
the free memory after a margin (on every device, for a model spread over several), with estimates
raised when a measured peak shows they fell short."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hired import strategies
from hired.config import HiREDConfig

from .backoff import AdaptiveBatchSize
from .estimate import ItemBytes, MemoryModel
from .placement import DeviceShare, whole_model
from .shape import GiB

if TYPE_CHECKING:
    from hired.prepare import ItemLengths


@dataclass(frozen=True)
class Margin:
    """Memory held back from batch sizing.

    ``fixed_bytes`` covers what the allocator does not see or cannot size by
    item: the CUDA context (a few hundred MiB, outside PyTorch's allocator, so
    it counts against a ``gpu_memory_gb`` cap only through this margin), cuBLAS
    workspaces, lazily loaded kernels. ``fraction`` of the free memory covers
    the caching allocator's fragmentation: the KV cache grows by ``torch.cat``
    into a new, slightly larger block every step.
    """

    fraction: float = 0.10
    fixed_bytes: int = 1 * GiB

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"margin fraction must be in [0, 1), got {self.fraction}")
        if self.fixed_bytes < 0:
            raise ValueError(f"margin fixed_bytes must be >= 0, got {self.fixed_bytes}")

    def reserve_bytes(self, free_bytes: int) -> int:
        return self.fixed_bytes + math.ceil(self.fraction * free_bytes)


# A strategy not named: as many projections as any registered one keeps with two distinct layers.
MOST_CAPTURED_PROJECTIONS = max(s.needs(0, 1).captured_projections for s in strategies.REGISTRY.values())

CPU_BATCH_SIZE = 4  # no device memory to size by: small batches keep latency per item sane
# Sizing by memory, a ceiling only (the memory decides): in the job each call holds one Ray Data
# batch, fewer rows than this; it bounds what direct callers (benchmarks, notebooks) get at once.
MAX_BATCH_SIZE = 256


class BatchSizer:
    """A generation actor's micro-batches: as many items as fit, corrected by measured peaks.

    Build one per actor once the model is loaded. ``free_bytes`` is what the
    process can still allocate (:func:`free_device_bytes`); the :class:`Margin`
    is held back from it. A model spread over several devices gives one
    :class:`DeviceShare` per device instead (what each can still allocate, and
    its part of every item): a batch fits when it fits on each, so the tightest
    device decides. With ``free_bytes=None`` (no GPU) or a ``fixed_batch_size``
    there is no sizing: items are cut into batches of that size
    (:data:`CPU_BATCH_SIZE` on CPU).

    ``hired_config`` says which strategy runs, and so what its hooks keep from the vision
    tower in a batch that drops tokens; ``None`` assumes the costliest registered strategy.

    ``sizes`` is the OOM back-off's state: pass it to :func:`run_with_oom_backoff`
    so that what an out-of-memory error teaches lowers later micro-batches too.
    ``correction`` (measured / predicted, never below 1) is what measured peaks
    taught; it scales every estimate.
    """

    def __init__(
        self,
        memory: MemoryModel,
        max_new_tokens: int,
        free_bytes: int | Sequence[DeviceShare] | None,
        margin: Margin = Margin(),
        fixed_batch_size: int | None = None,
        hired_config: HiREDConfig | None = None,
        row_buckets: Sequence[int] | None = None,
        cache_multiple: int = 1,
    ):
        self.memory = memory
        self.hired_config = hired_config
        # A compiled decode step pads a batch to the next of ``row_buckets`` rows and the cache to a
        # multiple of ``cache_multiple`` positions (hired.DecodeOptions): batches are costed padded.
        self.row_buckets = tuple(row_buckets or ())
        self.max_new_tokens = max_new_tokens
        self.cache_padding = cache_multiple - 1  # at most this many cache positions past prompt + new tokens
        if free_bytes is None:
            self.shares: tuple[DeviceShare, ...] = ()
        elif isinstance(free_bytes, int):
            self.shares = (whole_model("device", free_bytes, memory.shape),)
        else:
            self.shares = tuple(free_bytes)
        self.margin = margin
        self.sizing = bool(self.shares) and fixed_batch_size is None
        self.fixed_by_caller = fixed_batch_size is not None
        self.correction = 1.0
        self.sizes = AdaptiveBatchSize(MAX_BATCH_SIZE if self.sizing else fixed_batch_size or CPU_BATCH_SIZE)

    @property
    def free_bytes(self) -> int | None:
        """What the devices can still allocate, all together (None: no figure)."""
        return sum(share.free_bytes for share in self.shares) if self.shares else None

    @free_bytes.setter
    def free_bytes(self, value: int) -> None:
        """A new figure for a model on one device."""
        if len(self.shares) > 1:
            raise ValueError("a model over several devices has a figure per device: set shares")
        self.shares = (whole_model("device", value, self.memory.shape),)

    def usable_on(self, share: DeviceShare) -> int:
        """A device's free memory less the margin: what micro-batches may fill there."""
        return max(0, share.free_bytes - self.margin.reserve_bytes(share.free_bytes))

    @property
    def usable_bytes(self) -> int:
        """The free memory less the margin, over every device."""
        return sum(self.usable_on(share) for share in self.shares)

    def padded_item_bytes(self, lengths: Sequence[ItemLengths]) -> ItemBytes:
        """One item's memory in a batch of these items, before correction: each is padded to the
        longest prompt and costed with the most partitions and visual tokens among them (an upper bound)."""
        return self.memory.item_bytes(
            prompt_tokens=max(x.prompt_tokens for x in lengths),
            max_new_tokens=self.max_new_tokens + self.cache_padding,
            partitions=max(x.partitions for x in lengths),
            visual_tokens_llm=max(x.visual_tokens_llm for x in lengths),
            captured_projections=self.captured_projections(lengths),
        )

    def captured_projections(self, lengths: Sequence[ItemLengths]) -> int:
        """What the strategy's hooks keep while these items go through the tower: nothing unless one drops tokens."""
        if all(x.visual_tokens_kept >= x.visual_tokens_full for x in lengths):
            return 0
        if self.hired_config is None:
            return MOST_CAPTURED_PROJECTIONS
        return self.memory.vision_needs(self.hired_config).captured_projections

    def corrected_bytes(self, item: ItemBytes | int) -> int:
        """``item``'s bytes scaled by what measured peaks taught."""
        return math.ceil((item if isinstance(item, int) else item.total_bytes) * self.correction)

    def batch_bytes(self, lengths: Sequence[ItemLengths]) -> int:
        """Predicted memory of these items as one batch, over every device."""
        item, rows = self.padded_item_bytes(lengths), self.rows_computed(len(lengths))
        if not self.shares:  # no device figure: the whole model's
            return rows * self.corrected_bytes(item)
        return rows * sum(self.corrected_bytes(share.item_bytes(item)) for share in self.shares)

    def items_that_fit(self, item: ItemBytes) -> int:
        """How many items of this size fit together on every device (0: not even one)."""
        return min(
            (self.usable_on(share) // max(1, self.corrected_bytes(share.item_bytes(item))) for share in self.shares),
            default=0,
        )

    def rows_computed(self, items: int) -> int:
        """Rows a batch of ``items`` computes: padded to the next bucket when the step is compiled."""
        return next((b for b in self.row_buckets if b >= items), items)

    def fits(self, lengths: Sequence[ItemLengths]) -> bool:
        """Whether these items fit as one batch on every device."""
        return self.rows_computed(len(lengths)) <= self.items_that_fit(self.padded_item_bytes(lengths))

    def micro_batches(self, lengths: Sequence[ItemLengths],
                      groups: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
        """Indices of the items, longest prompt first, cut into batches that fit.

        A left-padded batch costs its size times its longest member, which comes
        first, so each batch takes as many items as fit at that length (at most
        ``sizes.batch_size``, which OOM back-off may have lowered). ``groups``
        keeps items together (the prompts of one picture, whose vision pass they
        share) unless a group alone does not fit. An item too large even alone
        still gets a batch of its own: OOM back-off makes it an error row rather
        than losing it here.
        """
        groups = [[i] for i in range(len(lengths))] if groups is None else [list(g) for g in groups if g]
        order = sorted(groups, key=lambda g: -max(lengths[i].prompt_tokens for i in g))
        batches: list[list[int]] = []
        current: list[int] = []
        for group in order:
            if current and not self._takes(lengths, current + group):
                batches.append(current)
                current = []
            if self._takes(lengths, current + group) or len(group) == 1:
                current += group
                continue
            batches += self.micro_batches(lengths, [[i] for i in group])  # too large together: item by item
        return batches + ([current] if current else [])

    def _takes(self, lengths: Sequence[ItemLengths], members: list[int]) -> bool:
        if len(members) > self.sizes.batch_size:
            return False
        return not self.sizing or self.fits([lengths[i] for i in members])

    def learn_from_peak(self, lengths: Sequence[ItemLengths], peak_bytes: int, baseline_bytes: int) -> str | None:
        """Raise the estimates when a batch used more than predicted; returns the log line if it did.

        ``baseline_bytes`` is ``torch.cuda.memory_allocated()`` before the batch
        (the weights and whatever else stays), ``peak_bytes``
        ``torch.cuda.max_memory_allocated()`` after it, its peak statistics reset
        before it; for a model over several devices, each summed over them. Never lowered: a batch that stopped early at EOS did not grow
        its KV cache to full length, so a smaller measurement proves nothing.
        """
        if not self.sizing:
            return None
        predicted = self.batch_bytes(lengths)
        measured = peak_bytes - baseline_bytes
        if measured <= predicted:
            return None
        self.correction *= measured / predicted
        return (
            f"a batch of {len(lengths)} used {measured / GiB:.2f} GiB, {100 * (measured / predicted - 1):.0f}% over "
            f"the {predicted / GiB:.2f} GiB predicted: estimates raised by that much"
        )

    def describe(self, item: ItemBytes | None) -> str:
        """A log line: how batches are sized and, when sizing, how many of ``item`` (say, the costliest) fit."""
        if not self.sizing:
            reason = "fixed by the caller" if self.fixed_by_caller else "CPU default: no device memory figure"
            return f"batch size {self.sizes.batch_size} ({reason})"
        count = self.items_that_fit(item)
        held = f"{self.margin.fixed_bytes / GiB:.2f} GiB + {self.margin.fraction:.0%} held back"
        if len(self.shares) == 1:
            room = (f"{self.free_bytes / GiB:.2f} GiB free after weights, {self.usable_bytes / GiB:.2f} GiB "
                    f"usable ({held})")
        else:
            room = f"over {len(self.shares)} devices ({held} on each): " + ", ".join(
                f"{s.device} {s.free_bytes / GiB:.2f} GiB free after its weights, {self.usable_on(s) / GiB:.2f} usable "
                f"({s.layers} of {s.total_layers} layers{', vision' if s.vision else ''})" for s in self.shares)
        return (f"batch sizing: {room}; {count} to a batch at {item.describe()}"
                + ("" if count else ": such items would be out-of-memory error rows"))
