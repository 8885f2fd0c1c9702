"""Which card holds which model, at which budget and batch: the plan before a run, from the config alone.

A card's memory is what CUDA reports as its total (what PyTorch's out-of-memory messages call its
"total capacity": less than the nominal GB). Of it, the generation actor finds the CUDA context
already taken when it measures the free memory after loading the weights, then holds back the
sizer's :class:`Margin`; the plan holds back the same, so that its batch is the one the actor
would choose on that card for the same picture. A model spread over several GPUs is split as the
actor splits it (:func:`split_model`), and the tightest GPU decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

import hired
from hired.config import HiREDConfig

from .estimate import ImageTokens, ItemBytes, MemoryModel
from .placement import LAYERS_PREFIX, DeviceShare, Split, split_model
from .shape import GiB
from .sizer import MAX_BATCH_SIZE, BatchSizer, Margin
from .weights import QUANTIZATIONS

MiB = 1 << 20
# A CUDA context with PyTorch's kernels loaded lazily (CUDA 12): outside the allocator, per GPU.
CUDA_CONTEXT_BYTES = 512 * MiB
# The picture the plan sizes for: a 2x2 grid for LLaVA-Next (its costliest square), a caption-length prompt.
TYPICAL_PICTURE = (672, 672)
TYPICAL_TEXT_TOKENS = 60
TYPICAL_NEW_TOKENS = 128
MOST_GPUS = 8  # the most GPUs a suggestion spreads a model over (one node's worth)


@dataclass(frozen=True)
class Card:
    name: str  # what --gpu takes
    label: str
    total_bytes: int  # what CUDA reports as the card's memory
    ray_accelerator: str | None  # Ray's accelerator_type for it (the resource a node with this card offers)
    # Held outside the allocator; nothing under a --gpu-memory-gb cap, which limits the allocator alone.
    context_bytes: int = CUDA_CONTEXT_BYTES


def capped_card(gpu_memory_gb: float) -> Card:
    """Any GPU with the generation actor's allocator capped at ``gpu_memory_gb`` GiB (``--gpu-memory-gb``)."""
    return Card("capped", f"GPU capped at {gpu_memory_gb:g} GiB", int(gpu_memory_gb * GiB), None, context_bytes=0)


def _gib(value: float) -> int:
    return int(value * GiB)


# CUDA's totals, as PyTorch reports them on these cards (lowest seen where drivers differ).
CARDS = {
    card.name: card
    for card in (
        Card("t4", "T4 16 GB", _gib(14.56), "T4"),
        Card("a10g", "A10G 24 GB", _gib(21.99), "A10G"),
        Card("l4", "L4 24 GB", _gib(21.96), "L4"),
        Card("a100-40", "A100 40 GB", _gib(39.39), "A100-40G"),
        Card("a100-80", "A100 80 GB", _gib(79.14), "A100-80G"),
        Card("h100", "H100 80 GB", _gib(79.11), "H100"),
    )
}


def card_for_accelerator(accelerator_type: str | None) -> Card | None:
    """The card behind Ray's ``accelerator_type`` (``"T4"``, ``"A10G"``, ...), if known."""
    return next((c for c in CARDS.values() if c.ray_accelerator == accelerator_type), None)


def budget_label(config: HiREDConfig | None) -> str:
    return "every token" if config is None else hired.describe_budget(config.budget)


@dataclass(frozen=True)
class BudgetRow:
    """One budget on one card: the typical picture's tokens, its bytes per item, and the batch."""

    config: HiREDConfig | None  # None: every token
    image: ImageTokens
    prompt_tokens: int
    item: ItemBytes
    batch: int  # items that fit on every GPU (0: not one); at most MAX_BATCH_SIZE

    @property
    def label(self) -> str:
        return budget_label(self.config)


@dataclass(frozen=True)
class CardPlan:
    """A model on ``gpus`` cards of one kind: weights per GPU, what is left, and the batch per budget."""

    card: Card
    gpus: int
    quantization: str | None
    dtype: torch.dtype
    split: Split
    free_bytes: tuple[int, ...]  # per GPU after the CUDA context and its weights; negative: they do not fit
    usable_bytes: tuple[int, ...]  # per GPU after the sizer's margin too
    rows: tuple[BudgetRow, ...]  # every token first, then the budgets asked for
    margin: Margin
    picture: tuple[int, int]
    text_tokens: int
    max_new_tokens: int

    @property
    def weights_fit(self) -> bool:
        return all(free > 0 for free in self.free_bytes)

    @property
    def asked(self) -> tuple[BudgetRow, ...]:
        """The rows the verdict is about: the budgets asked for (every token if none was)."""
        return self.rows[1:] or self.rows[:1]

    @property
    def fits(self) -> bool:
        return self.weights_fit and all(row.batch >= 1 for row in self.asked)

    def setting(self) -> str:
        precision = self.quantization or str(self.dtype).removeprefix("torch.")
        return f"{precision}, {self.gpus} GPU{'s' if self.gpus > 1 else ''}"

    def problem(self) -> str:
        """Why it does not fit, in a clause."""
        if not self.weights_fit:
            tightest = min(range(self.gpus), key=lambda d: self.free_bytes[d])
            room = self.card.total_bytes - self.card.context_bytes
            where = "" if self.gpus == 1 else f" on GPU {tightest} of {self.gpus}"
            return (f"{self.split.weights_bytes[tightest] / GiB:.2f} GiB of weights{where}; the {self.card.label} "
                    f"holds {room / GiB:.2f} GiB" + (" after the CUDA context" if self.card.context_bytes else ""))
        row = next(r for r in self.asked if r.batch < 1)
        return (f"the weights leave {min(self.usable_bytes) / GiB:.2f} GiB usable{' on the tightest GPU' if self.gpus > 1 else ''}, "
                f"one item at {row.label} needs {row.item.total_bytes / GiB:.2f} GiB")


def _usable(free: int, margin: Margin) -> int:
    return max(0, free - margin.reserve_bytes(free)) if free > 0 else 0


def plan_on_card(
    config,
    card: Card,
    budgets: Sequence[HiREDConfig | None] = (HiREDConfig(),),
    quantization: str | None = None,
    gpus: int = 1,
    dtype: torch.dtype | str = torch.float16,
    max_new_tokens: int = TYPICAL_NEW_TOKENS,
    picture: tuple[int, int] = TYPICAL_PICTURE,
    text_tokens: int = TYPICAL_TEXT_TOKENS,
    margin: Margin = Margin(),
) -> CardPlan:
    """How ``config`` (a LLaVA-Next / LLaVA transformers config) runs on ``gpus`` cards of ``card``:
    with every token and at each of ``budgets`` (HiRED configs; ``None`` keeps every token)."""
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    dtype = getattr(torch, dtype.removeprefix("torch.")) if isinstance(dtype, str) else dtype
    memory = MemoryModel(config, dtype, quantization=quantization)
    split = split_model(config, dtype, gpus, quantization)
    free = tuple(card.total_bytes - card.context_bytes - weights for weights in split.weights_bytes)
    shares = [
        DeviceShare(f"cuda:{d}", max(0, free[d]), split.layers_on(d), memory.shape.text_layers,
                    vision=split.device_map["model.vision_tower"] == d)
        for d in range(gpus)
    ]
    sizer = BatchSizer(memory, max_new_tokens, shares, margin)
    rows = []
    for budget in (None, *[b for b in budgets if b is not None]):
        image = memory.image_tokens(picture, budget)
        item = memory.picture_item_bytes(picture, budget, text_tokens, max_new_tokens)
        batch = min(sizer.items_that_fit(item), MAX_BATCH_SIZE) if all(f > 0 for f in free) else 0
        rows.append(BudgetRow(budget, image, text_tokens + image.visual_tokens_llm, item, batch))
    return CardPlan(card, gpus, quantization, dtype, split, free, tuple(_usable(f, margin) for f in free),
                    tuple(rows), margin, tuple(picture), text_tokens, max_new_tokens)


def _stronger(quantization: str | None) -> list[str]:
    """The quantizations that store weights in fewer bytes than ``quantization``."""
    order = [None, *QUANTIZATIONS]
    return list(order[order.index(quantization) + 1 :])


def suggestion(config, plan: CardPlan) -> str:
    """What would make ``plan`` fit: fewer bits, more GPUs, or both."""
    budgets = [row.config for row in plan.rows[1:]]

    def fits(quantization, gpus) -> bool:
        return plan_on_card(config, plan.card, budgets, quantization, gpus, plan.dtype, plan.max_new_tokens,
                            plan.picture, plan.text_tokens, plan.margin).fits

    layers = sum(1 for part in plan.split.device_map if part.startswith(LAYERS_PREFIX))
    more_gpus = range(plan.gpus + 1, min(MOST_GPUS, layers) + 1)
    fewer_bits = next((q for q in _stronger(plan.quantization) if fits(q, plan.gpus)), None)
    spread = next((n for n in more_gpus if fits(plan.quantization, n)), None)
    ways = []
    if fewer_bits:
        ways.append(f"--quantization {fewer_bits}" + (f" --gpus-per-model {plan.gpus}" if plan.gpus > 1 else ""))
    if spread:
        ways.append((f"--quantization {plan.quantization} " if plan.quantization else "") + f"--gpus-per-model {spread}")
    if not ways:
        both = next(((q, n) for n in more_gpus for q in _stronger(plan.quantization) if fits(q, n)), None)
        if both is None:
            return f"no setting fits up to {MOST_GPUS} GPUs of this card: a card with more memory"
        ways.append(f"--quantization {both[0]} --gpus-per-model {both[1]}")
    return "use " + " or ".join(ways)


def verdict(config, plan: CardPlan) -> str:
    """``fits: ...`` with the batch, or ``does not fit: ...`` with what would make it fit."""
    if plan.fits:
        asked = ", ".join(f"batch {row.batch} at {row.label}" for row in plan.asked)
        every = plan.rows[0]
        extra = "" if plan.asked[0] is every else f" ({every.batch} with every token)"
        return f"fits: {asked}{extra}"
    return f"does not fit: {plan.problem()}; {suggestion(config, plan)}"


def describe_plan(name: str, plan: CardPlan) -> str:
    """The plan as ``hired plan`` prints it, before its verdict line."""
    context = f"{plan.card.context_bytes / GiB:.1f} GiB CUDA context, then " if plan.card.context_bytes else ""
    held = f"{context}the sizer's {plan.margin.fixed_bytes / GiB:.0f} GiB + {plan.margin.fraction:.0%} held back per GPU"
    lines = [f"{name} on {plan.gpus} x {plan.card.label} ({plan.card.total_bytes / GiB:.2f} GiB each; {held}), "
             f"{plan.setting()}"]
    if plan.gpus == 1:
        lines.append(f"weights: {plan.split.weights_bytes[0] / GiB:.2f} GiB")
    else:
        lines.append(f"weights per GPU: {plan.split.describe()}")
    if plan.weights_fit:
        lines.append("free after weights: " + ", ".join(f"{f / GiB:.2f} GiB" for f in plan.free_bytes)
                     + "; usable: " + ", ".join(f"{u / GiB:.2f} GiB" for u in plan.usable_bytes))
    image = plan.rows[0].image
    shape = f"{image.partitions} partition{'s' if image.partitions > 1 else ''}, {image.grid_tokens} grid tokens"
    newlines = image.visual_tokens_llm - image.grid_tokens
    shape += f" + {newlines} newlines" if newlines else ""
    height, width = plan.picture
    lines.append(f"a typical picture: {height}x{width} ({shape}), {plan.text_tokens} text tokens, "
                 f"{plan.max_new_tokens} new tokens")
    for row in plan.rows:
        batch = f"batch {row.batch}" + ("+" if row.batch >= MAX_BATCH_SIZE else "") if plan.weights_fit else "-"
        lines.append(f"  {row.label:<12} {row.prompt_tokens:>5} prompt tokens  {row.item.describe():<58} {batch}")
    return "\n".join(lines)
