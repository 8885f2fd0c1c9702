"""Token-dropping strategies: one registry entry each, saying what the strategy reads from the
vision tower and which module chooses its tokens.

Every strategy keeps exactly B = ``config.tokens_to_keep(N)`` grid tokens of an image, its shares
per partition summing to B, never a padding token, in spatial order, so strategies compare at
equal cost. The registry is plain Python: the config, the command lines and the memory model
consult it without importing torch; a strategy's selection (one module each, a ``select(parts,
signals, config)`` returning a :class:`hired.strategies.base.Selection`, and optionally a
``select_batch(signals, config)`` for a whole batch on the device) loads on first use.

A new strategy is a module here and an entry in :data:`REGISTRY`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class VisionNeeds:
    """What a strategy reads from the vision tower, by encoder layer (resolved, non-negative)."""

    attention_layers: tuple[int, ...] = ()  # layers whose CLS attention over the patches it reads
    key_layers: tuple[int, ...] = ()  # layers whose patch keys it reads

    @property
    def captured_projections(self) -> int:
        """``(P, T, D)`` projection outputs the tower's hooks hold until it has run: the query and
        the keys of each attention layer, the keys of each other key layer."""
        return 2 * len(set(self.attention_layers)) + len(set(self.key_layers) - set(self.attention_layers))


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str  # one line, for --help
    needs: Callable[[int, int], VisionNeeds]  # (initial layer, final layer) -> what it reads
    module: str  # the submodule holding ``select``

    def select(self, parts, signals, config):
        """The tokens this strategy keeps of one image (``hired.strategies.base.Selection``)."""
        return importlib.import_module(f"{__name__}.{self.module}").select(parts, signals, config)

    def select_batch(self, signals, config):
        """The tokens kept of a batch of pictures (``hired.strategies.base.BatchSelection``): the module's
        own ``select_batch`` where it has one (on the device, no per-picture host sync), else ``select``
        picture by picture."""
        module = importlib.import_module(f"{__name__}.{self.module}")
        if hasattr(module, "select_batch"):
            return module.select_batch(signals, config)
        from .base import select_each

        return select_each(self, signals, config)


REGISTRY: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("hired", "the paper's method: the budget split by alpha and initial-layer CLS attention, "
                 "tokens chosen by final-layer CLS attention",
                 lambda initial, final: VisionNeeds(attention_layers=tuple(sorted({initial, final}))), "hired"),
        Strategy("uniform", "an evenly spread 2-D lattice of each partition; no attention",
                 lambda initial, final: VisionNeeds(), "uniform"),
        Strategy("random", "a seeded random subset of each partition",
                 lambda initial, final: VisionNeeds(), "random_subset"),
        Strategy("prumerge+", "PruMerge+ at the fixed budget: final-layer CLS-attention outliers plus a lattice, "
                 "dropped tokens merged into the kept ones",
                 lambda initial, final: VisionNeeds(attention_layers=(final,), key_layers=(final,)), "prumerge"),
    )
}
NAMES = tuple(REGISTRY)
# Not a strategy: every visual token, as the stock model uses them (the command lines' --strategy none).
STOCK = "none"


def get(name: str) -> Strategy:
    """The registered strategy called ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(NAMES)}") from None
