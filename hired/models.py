"""Thin adapters for the model families HiRED supports.

An adapter knows three things about its family: how an image is split into
partitions of visual tokens (and which of them the stock model feeds the LLM),
how many image placeholder tokens its processor expands ``<image>`` into, and in
what order the kept tokens (and newline tokens) reach the LLM. Everything else
(encoding, budget split, selection, building the LLM input) is shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .geometry import AnyresLayout, anyres_layout
from .vision import VisionTower

NEWLINE = -1  # marks an image_newline token in a token order


@dataclass(frozen=True)
class Partitions:
    """The visual-token partitions of one image: the full view first, then sub-images row-major."""

    valid: torch.Tensor  # bool (P, T): tokens the stock model feeds the LLM
    layout: AnyresLayout | None  # LLaVA-Next's geometry; None for a single-view model

    @property
    def num_partitions(self) -> int:
        return self.valid.shape[0]

    @property
    def capacities(self) -> list[int]:
        return self.valid.sum(dim=1).tolist()

    @property
    def grid_tokens(self) -> int:
        """N: grid tokens the stock model feeds the LLM, newlines not counted."""
        return int(self.valid.sum())


class _Adapter:
    """What every family shares: the vision tower to hook, the projector into the LLM."""

    def __init__(self, model: nn.Module):
        base = model.model
        self.config = model.config
        self.tower = VisionTower.of(base.vision_tower)
        self.projector = base.multi_modal_projector
        self.image_newline = getattr(base, "image_newline", None)  # LLaVA-Next's row separator


class LlavaNextAdapter(_Adapter):
    """LLaVA-Next (llava-v1.6): a full view plus an anyres grid of sub-images."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        vision = self.config.vision_config
        self.tile_size, self.patch_size = vision.image_size, vision.patch_size

    def partitions(self, image_size: tuple[int, int]) -> Partitions:
        layout = anyres_layout(image_size, self.config.image_grid_pinpoints, self.tile_size, self.patch_size)
        full = torch.ones(1, layout.full_tokens, dtype=torch.bool)
        return Partitions(valid=torch.cat([full, layout.valid_mask()]), layout=layout)

    def stock_image_tokens(self, parts: Partitions) -> int:
        """Placeholder tokens the processor expands ``<image>`` into: grid tokens plus newlines."""
        return parts.grid_tokens + parts.layout.newline_tokens

    def token_order(self, parts: Partitions, kept: list[torch.Tensor], newlines: str) -> torch.Tensor:
        """The LLM's visual-token sequence for one image, as the stock model orders it.

        Entries are flat indices ``partition * T + token`` into the image's
        ``(P, T)`` features, or ``NEWLINE``. The full view comes first in raster
        order, then the unpadded sub-image grid in global raster order (row by
        row across sub-images), with ``image_newline`` after rows per ``newlines``.
        """
        layout = parts.layout
        side, (rows, cols), tokens = layout.side, layout.grid, layout.full_tokens
        # Flat feature index of every position of the global (rows*side, cols*side) token grid.
        gy = torch.arange(rows * side)[:, None]
        gx = torch.arange(cols * side)[None, :]
        tile = 1 + (gy // side) * cols + gx // side
        flat = tile * tokens + (gy % side) * side + gx % side
        keep = torch.zeros(parts.num_partitions * tokens, dtype=torch.bool)
        for p, idx in enumerate(kept):
            keep[p * tokens + idx] = True
        top, height, left, width = layout.window
        flat = flat[top : top + height, left : left + width]
        kept_grid = keep[flat]
        if newlines != "none":
            newline_col = torch.full((height, 1), NEWLINE)
            row_has_newline = torch.ones(height, 1, dtype=torch.bool)
            if newlines == "kept_rows":
                row_has_newline = kept_grid.any(dim=1, keepdim=True)
            flat = torch.cat([flat, newline_col], dim=1)
            kept_grid = torch.cat([kept_grid, row_has_newline], dim=1)
        return torch.cat([kept[0], flat[kept_grid]])


    def candidates(self, parts: Partitions, newlines: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Every position the LLM's visual sequence can hold for this image, in the stock order:
        ``(entries, grid_row)``. ``entries`` as in :meth:`token_order` (newline entries per
        ``newlines``); ``grid_row``: the row of the unpadded grid an entry lies in (``-1``: full view).
        The kept tokens of :meth:`token_order` are these entries filtered by what is kept."""
        layout = parts.layout
        side, (rows, cols), tokens = layout.side, layout.grid, layout.full_tokens
        gy = torch.arange(rows * side)[:, None]
        gx = torch.arange(cols * side)[None, :]
        flat = (1 + (gy // side) * cols + gx // side) * tokens + (gy % side) * side + gx % side
        top, height, left, width = layout.window
        flat = flat[top : top + height, left : left + width]
        row = torch.arange(height)[:, None].expand(height, width)
        if newlines != "none":
            flat = torch.cat([flat, torch.full((height, 1), NEWLINE)], dim=1)
            row = torch.cat([row, torch.arange(height)[:, None]], dim=1)
        return torch.cat([torch.arange(tokens), flat.flatten()]), torch.cat([torch.full((tokens,), -1), row.flatten()])


class LlavaAdapter(_Adapter):
    """LLaVA-1.5: one view of the image, no sub-images, no newline tokens."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        self.tokens = side * side

    def partitions(self, image_size: tuple[int, int]) -> Partitions:
        return Partitions(valid=torch.ones(1, self.tokens, dtype=torch.bool), layout=None)

    def stock_image_tokens(self, parts: Partitions) -> int:
        return parts.grid_tokens

    def token_order(self, parts: Partitions, kept: list[torch.Tensor], newlines: str) -> torch.Tensor:
        return kept[0]

    def candidates(self, parts: Partitions, newlines: str) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.arange(self.tokens), torch.full((self.tokens,), -1)


def adapter_for(model: nn.Module) -> LlavaNextAdapter | LlavaAdapter:
    """The adapter for a transformers LLaVA-Next or LLaVA(-1.5) model."""
    name = type(model).__name__
    if name == "LlavaNextForConditionalGeneration":
        adapter = LlavaNextAdapter(model)
    elif name == "LlavaForConditionalGeneration":
        adapter = LlavaAdapter(model)
    else:
        raise TypeError(
            f"HiRED supports LlavaNextForConditionalGeneration and LlavaForConditionalGeneration, not {name}"
        )
    strategy = getattr(model.config, "vision_feature_select_strategy", "default")
    if strategy != "default":
        raise ValueError(
            f"vision_feature_select_strategy={strategy!r} feeds the CLS token to the LLM; HiRED supports "
            "'default' (CLS dropped), which every released LLaVA/LLaVA-Next checkpoint uses"
        )
    return adapter
