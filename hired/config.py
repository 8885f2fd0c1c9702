"""HiRED's settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import strategies
from .budget import parse_budget, token_budget

NEWLINE_MODES = ("none", "kept_rows", "all")
HEAD_REDUCTIONS = ("sum", "max")


@dataclass(frozen=True)
class HiREDConfig:
    """How many visual tokens to keep and how to choose them.

    Defaults follow the paper (arXiv 2408.10945) and its ablations:

    * ``budget=0.2``: the paper's headline setting, HiRED-20%: 4.7x generation
      throughput on LLaVA-Next-7B for 1-3 points of VQAv2/TextVQA accuracy. A
      float in (0, 1] is a fraction of the image's grid tokens (floored); an int
      is a token count (e.g. 640), capped at the image's tokens; a string is read
      by :func:`hired.parse_budget` (``"0.2"``, ``"20%"``, ``"640"``), as the
      command lines read it.
    * ``alpha=0.5``: the share of the budget for the full-image view; the paper's
      default. The rest goes to the sub-images by visual content.
    * ``initial_layer=0``: the ViT layer whose CLS attention scores each
      sub-image's content. Early layers attend to visual content broadly; the
      ablation (Table 5) finds layer 0 beats an even split and beats layer 22.
    * ``final_layer=None``: the ViT layer whose CLS attention selects tokens inside
      each partition; ``None`` means the layer that produces the model's vision
      features (layer 22 of 24 for LLaVA-Next's ``vision_feature_layer=-2``),
      which the paper finds beats layers 0 and 11: its attention reflects the
      very features the LLM receives.
    * ``head_reduction="sum"``: CLS attention of all heads summed; the paper finds
      it beats using heads separately. ``"max"`` is offered for experiments.
    * ``newlines="none"``: LLaVA-Next's ``image_newline`` tokens (one per row of
      the sub-image grid) are dropped, as in the paper's evaluated setting; they
      are not grid tokens and do not count towards the budget. ``"kept_rows"``
      keeps one after each row that kept any token; ``"all"`` keeps the stock
      newline tokens (with ``budget=1.0`` this reproduces the stock model).
    * ``strategy="hired"``: how tokens are chosen. Every strategy keeps exactly
      the same budget B per image, never a padding token, in the stock order, so
      they can be compared at equal cost. ``"hired"`` is the paper's method
      (split by ``alpha`` and initial-layer attention, select by final-layer
      attention). The others are baselines for comparison; they split B over the
      partitions in proportion to each one's valid token count (``alpha`` and
      ``initial_layer`` are not used) and choose inside each partition:

      - ``"uniform"``: an evenly spread 2-D pattern of tokens, no attention at
        all (the simplest content-blind baseline; deterministic).
      - ``"random"``: a random subset, drawn from a generator seeded by ``seed``,
        the partition and its pixels: the same image gets the same tokens in any
        batch, a different seed gives different ones.
      - ``"prumerge+"``: PruMerge+ (Shang et al. 2024, arXiv 2403.15388) at a
        fixed budget: the IQR outliers of ``final_layer``'s CLS attention first,
        the rest spread evenly; then every dropped token is merged into its most
        similar kept token (cosine similarity of ``final_layer``'s keys), kept
        features becoming CLS-attention-weighted averages.
    * ``seed=0``: the seed of ``strategy="random"``; ignored by the others.
    """

    budget: float | int = 0.2
    alpha: float = 0.5
    initial_layer: int = 0
    final_layer: int | None = None
    head_reduction: Literal["sum", "max"] = "sum"
    newlines: Literal["none", "kept_rows", "all"] = "none"
    strategy: str = "hired"  # a name in hired.strategies.REGISTRY
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.budget, str):
            object.__setattr__(self, "budget", parse_budget(self.budget))
        budget = self.budget
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise ValueError(f"budget must be a fraction in (0, 1] or a positive token count, got {budget!r}")
        if isinstance(budget, int) and budget < 1:
            raise ValueError(f"an integer budget is a token count and must be >= 1, got {budget}")
        if isinstance(budget, float) and not 0.0 < budget <= 1.0:
            raise ValueError(f"a fractional budget must be in (0, 1], got {budget}")
        if not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if self.head_reduction not in HEAD_REDUCTIONS:
            raise ValueError(f"head_reduction must be one of {HEAD_REDUCTIONS}, got {self.head_reduction!r}")
        if self.newlines not in NEWLINE_MODES:
            raise ValueError(f"newlines must be one of {NEWLINE_MODES}, got {self.newlines!r}")
        if self.strategy not in strategies.REGISTRY:
            raise ValueError(f"strategy must be one of {strategies.NAMES}, got {self.strategy!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        for name in ("initial_layer", "final_layer"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be an integer layer index, got {value!r}")

    def tokens_to_keep(self, num_tokens: int) -> int:
        """B: the grid tokens an image of ``num_tokens`` grid tokens keeps."""
        return token_budget(self.budget, num_tokens)


# Keep every token in the stock layout: what ``config=None`` means.
NO_DROPPING = HiREDConfig(budget=1.0, newlines="all")
