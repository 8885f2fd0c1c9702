"""How the next token is chosen: greedy by default, or sampled with the controls users of vLLM's
``SamplingParams`` and transformers' ``generate`` expect.

:class:`Sampling` is plain Python (validated at construction, no torch), so a job's driver can check a
command line in a second. :class:`hired.chooser.TokenChooser` applies it per row on the device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Sampling:
    """The controls of one row's decoding. ``Sampling()`` is greedy decoding.

    * ``temperature=0.0``: greedy (the most likely token, as ``do_sample=False``); above 0 the
      next token is drawn from the softmax of the logits divided by it.
    * ``top_p=None``: nucleus sampling, the smallest set of tokens whose probability reaches it, in (0, 1].
    * ``top_k=None``: sample among the ``top_k`` most likely tokens (an integer >= 1).
    * ``repetition_penalty=1.0``: CTRL's penalty (transformers' ``RepetitionPenaltyLogitsProcessor``)
      on every token already in the row, prompt text included; > 1 discourages repeats. Greedy too.
    * ``seed=None``: a seed makes a sampled row reproducible: its own generator, so the same text in
      any batch and on any rerun. Without one a sampled row draws a fresh seed from the OS.
    * ``stop=()``: strings that end the row's generation; the first one to appear is cut from the
      text, with everything after it (the tokens keep the one that completed it).

    ``top_p`` and ``top_k`` shape a sampled distribution, so they need ``temperature > 0``; set with
    greedy decoding they are refused rather than silently ignored.
    """

    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        if not _real(self.temperature) or not 0.0 <= self.temperature < math.inf:
            raise ValueError(f"temperature must be a number >= 0 (0 is greedy), got {self.temperature!r}")
        if self.top_p is not None and (not _real(self.top_p) or not 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k is not None and (not _integer(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if not _real(self.repetition_penalty) or not 0.0 < self.repetition_penalty < math.inf:
            raise ValueError(f"repetition_penalty must be a number > 0 (1.0: none), got {self.repetition_penalty!r}")
        if self.seed is not None and (not _integer(self.seed) or not 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
        if self.greedy and (self.top_p is not None or self.top_k is not None):
            raise ValueError("top_p and top_k shape sampling: set temperature > 0 as well (temperature 0 is greedy)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def with_overrides(self, overrides: Mapping[str, object] | None) -> "Sampling":
        """A copy with the given fields replaced (``None`` values keep this one's): a row's overrides
        of a job's settings. An unknown name is refused, naming the fields there are."""
        if not overrides:
            return self
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown sampling field(s) {', '.join(unknown)}; fields: {', '.join(sorted(names))}")
        changes = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **changes) if changes else self

    def describe(self) -> str:
        """A short text for logs and result settings: only what differs from greedy."""
        default = Sampling()
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)]
        return ", ".join(parts) or "greedy"



def per_row(sampling: "Sampling | Sequence[Sampling | None] | None", rows: int) -> list[Sampling]:
    """One :class:`Sampling` per row from a per-call setting (or ``None``: greedy) or a per-row list."""
    if sampling is None:
        return [GREEDY] * rows
    if isinstance(sampling, Sampling):
        return [sampling] * rows
    sampling = list(sampling)
    if len(sampling) != rows:
        raise ValueError(f"got {len(sampling)} per-row sampling settings for {rows} rows")
    for i, s in enumerate(sampling):
        if s is not None and not isinstance(s, Sampling):
            raise TypeError(f"row {i}: sampling must be a hired.Sampling or None, got {type(s).__name__}")
    return [s or GREEDY for s in sampling]


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


GREEDY = Sampling()
