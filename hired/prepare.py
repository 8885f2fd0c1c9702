"""Turn a processor's output into HiRED-pruned inputs for ``model.generate``.

The stock processor expands each ``<image>`` into as many placeholder tokens as
the stock model has visual tokens for that image. HiRED keeps fewer, a different
number per image, so we rebuild each sequence with the pruned count of
placeholders, left-pad the batch again, and hand the LLM ``inputs_embeds`` with
the kept visual features (and newline embeddings) scattered into the
placeholders. Any transformers ``generate`` then runs unchanged.

Which tokens are kept is the strategy's business (``hired.strategies``, one registry entry each): it
returns kept indices per partition and, if it merges tokens (PruMerge+), their
new vision features, which replace the originals before the projector. The
rest of the path is the same for every strategy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch

from .config import NO_DROPPING, HiREDConfig
from .models import NEWLINE, Partitions, adapter_for
from . import strategies
from .strategies.base import BatchSignals
from .transfer import to_device
from .vision import encode

PADDING = -2  # pads a picture's candidate positions to the batch's widest


@dataclass
class PreparedInputs:
    """Pruned LLM inputs for a batch of rows, plus what was kept for each row's picture.

    A row is one (picture, prompt); rows that share a picture (``image_index``) share its
    encoding, selection and kept tokens."""

    inputs_embeds: torch.Tensor  # (R, L, D_text), left-padded
    attention_mask: torch.Tensor  # (R, L)
    input_ids: torch.Tensor  # (R, L): the text with one placeholder per kept visual token
    visual_tokens_full: list[int]  # N per row: the stock model's grid tokens
    visual_tokens_kept: list[int]  # grid tokens kept per row (the budget B)
    visual_tokens_llm: list[int]  # visual tokens the LLM sees per row: kept + newlines
    prompt_tokens: list[int]  # sequence length per row, padding excluded
    partitions: list[Partitions] = field(default_factory=list, repr=False)  # per row
    image_index: list[int] = field(default_factory=list)  # per row: its picture
    keep: torch.Tensor | None = field(default=None, repr=False)  # (P, T) bool on the device: every picture's kept tokens
    spans: list[slice] = field(default_factory=list, repr=False)  # per picture: its rows of ``keep``

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for ``model.generate`` (or ``model(...)``)."""
        return {"inputs_embeds": self.inputs_embeds, "attention_mask": self.attention_mask}

    @cached_property
    def _kept_per_picture(self) -> list[list[torch.Tensor]]:
        keep = self.keep.cpu()  # one copy for the batch, when first asked for
        return [[row.nonzero().flatten() for row in keep[span]] for span in self.spans]

    @property
    def kept_indices(self) -> list[list[torch.Tensor]]:
        """Per row, per partition: the kept token indices (ascending), on the CPU."""
        return [self._kept_per_picture[i] for i in self.image_index]

    @property
    def partition_budgets(self) -> list[list[int]]:
        """Per row, per partition: tokens kept (full view first, then sub-images row-major)."""
        return [[len(k) for k in self._kept_per_picture[i]] for i in self.image_index]


def _unpadded_sequences(inputs: Mapping) -> list[torch.Tensor]:
    input_ids = inputs["input_ids"]
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2:
        mask = inputs.get("attention_mask")
        if mask is None:
            return list(input_ids)
        return [ids[m.bool()] for ids, m in zip(input_ids, mask)]
    return [torch.as_tensor(ids).flatten() for ids in input_ids]


def _pixel_values_per_image(inputs: Mapping, num_partitions: Sequence[int]) -> list[torch.Tensor]:
    pixel_values = inputs["pixel_values"]
    if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 5:  # (B, P_max, 3, H, W), zero-padded on P
        return [pv[:n] for pv, n in zip(pixel_values, num_partitions)]
    if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 4:
        if len(num_partitions) == pixel_values.shape[0] and all(n == 1 for n in num_partitions):
            return list(pixel_values.unsqueeze(1))  # LLaVA-1.5: (B, 3, H, W)
        return list(torch.split(pixel_values, list(num_partitions)))  # partitions of all images concatenated
    return [torch.as_tensor(pv).reshape(n, *torch.as_tensor(pv).shape[-3:]) for pv, n in zip(pixel_values, num_partitions)]


def _image_sizes(inputs: Mapping, batch_size: int) -> list[tuple[int, int]]:
    sizes = inputs.get("image_sizes")
    if sizes is None:
        return [(0, 0)] * batch_size  # single-view models do not need the size
    return [tuple(int(v) for v in torch.as_tensor(s).flatten()[:2]) for s in sizes]


def _image_run(ids: torch.Tensor, image_token_id: int, expected: int, row: int) -> tuple[int, int]:
    """``(start, end)`` of the row's run of image placeholders, checked against the model's count."""
    positions = (ids == image_token_id).nonzero().flatten()
    if len(positions) == 0:
        raise ValueError(f"item {row}: the prompt has no image token; put the processor's image token in the text")
    start, end = int(positions[0]), int(positions[-1]) + 1
    if end - start != len(positions):
        raise ValueError(f"item {row}: the image placeholder tokens are not one contiguous run (one image per item)")
    if len(positions) != expected:
        raise ValueError(
            f"item {row}: the prompt has {len(positions)} image placeholder tokens but the model has {expected} "
            "visual tokens for this image; the processor does not match the model (check the processor's "
            "patch_size, num_additional_image_tokens and vision_feature_select_strategy)"
        )
    return start, end


def _num_pictures(inputs: Mapping) -> int:
    if inputs.get("image_sizes") is not None:
        return len(inputs["image_sizes"])
    return len(inputs["pixel_values"])  # single-view models: one (3, H, W) view a picture


def _picture_of_each_row(image_index: Sequence[int] | None, rows: int, pictures: int) -> list[int]:
    if image_index is None:
        if pictures != rows:
            raise ValueError(f"got {pictures} pictures for {rows} prompts: pass image_index, each row's picture")
        return list(range(rows))
    index = [int(i) for i in image_index]
    if len(index) != rows:
        raise ValueError(f"image_index has {len(index)} entries for {rows} prompts")
    if any(not 0 <= i < pictures for i in index):
        raise ValueError(f"image_index must lie in [0, {pictures}) for {pictures} pictures, got {image_index!r}")
    unused = sorted(set(range(pictures)) - set(index))
    if unused:
        raise ValueError(f"picture(s) {unused} have no prompt in image_index: each picture needs at least one")
    return index


@dataclass(frozen=True)
class ItemLengths:
    """An item's token counts under a config, known before its picture reaches the GPU."""

    partitions: int  # views the vision tower encodes
    visual_tokens_full: int  # N
    visual_tokens_kept: int  # B
    visual_tokens_llm: int  # B plus newline tokens (for newlines="kept_rows", at most one a row)
    prompt_tokens: int  # the LLM's input length


def expected_lengths(model, image_size: tuple[int, int], num_input_ids: int, config: HiREDConfig | None) -> ItemLengths:
    """What :func:`prepare_inputs` will make of one item whose processor output has
    ``num_input_ids`` tokens (placeholders included): HiRED fixes every count in advance,
    which is what lets the pipeline size batches by calculation."""
    adapter = adapter_for(model)
    config = config or NO_DROPPING
    parts = adapter.partitions(image_size)
    kept = config.tokens_to_keep(parts.grid_tokens)
    stock_newlines = adapter.stock_image_tokens(parts) - parts.grid_tokens
    visual = kept + (0 if config.newlines == "none" else stock_newlines)
    text = num_input_ids - adapter.stock_image_tokens(parts)
    return ItemLengths(parts.num_partitions, parts.grid_tokens, kept, visual, text + visual)


@torch.no_grad()
def prepare_inputs(
    model, inputs: Mapping, config: HiREDConfig | None = None, image_index: Sequence[int] | None = None
) -> PreparedInputs:
    """HiRED-pruned inputs for decoding from a processor's output.

    ``inputs`` holds ``input_ids`` (a padded ``(R, L)`` tensor with its ``attention_mask``, or a
    list of 1-D sequences), ``pixel_values`` (as the processor returns them, or a list of
    ``(P_i, 3, H, W)``) and, for LLaVA-Next, ``image_sizes``. By default row ``r`` shows picture
    ``r``; ``image_index`` (one picture index per row) lets several prompts share a picture, which
    is then encoded and selected once. Each row's prompt holds the placeholder run its picture
    expands to. ``config=None`` keeps every token in the stock layout. Returns
    :class:`PreparedInputs` for :class:`hired.Decoder` (or ``model.generate(**prepared.model_inputs())``).

    Apart from the checks on the prompts' token ids (host data) nothing here waits for the device,
    except once a batch with ``newlines="kept_rows"``, whose visual-token counts depend on what is kept.
    """
    adapter = adapter_for(model)
    config = config or NO_DROPPING
    sequences = [ids.cpu() for ids in _unpadded_sequences(inputs)]
    rows = len(sequences)
    num_pictures = _num_pictures(inputs)
    picture_of = _picture_of_each_row(image_index, rows, num_pictures)
    parts = [adapter.partitions(size) for size in _image_sizes(inputs, num_pictures)]
    budgets = [config.tokens_to_keep(p.grid_tokens) for p in parts]
    pixels = _pixel_values_per_image(inputs, [p.num_partitions for p in parts])
    spans, offset = [], 0
    for p in parts:
        spans.append(slice(offset, offset + p.num_partitions))
        offset += p.num_partitions

    tower = adapter.tower
    feature_layer = model.config.vision_feature_layer
    feature_layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    # The layer producing the features: hidden_states[h] is the output of layer h - 1.
    deepest_state = max(layer % (tower.num_layers + 1) for layer in feature_layers)
    default_final = max(deepest_state - 1, 0)
    initial = tower.layer_index(config.initial_layer, "initial_layer")
    final = tower.layer_index(default_final if config.final_layer is None else config.final_layer, "final_layer")
    dropping = any(b < p.grid_tokens for b, p in zip(budgets, parts))
    strategy = strategies.get(config.strategy)
    needs = strategy.needs(initial, final) if dropping else strategies.VisionNeeds()

    device, vision_dtype = model.device, next(tower.module.parameters()).dtype
    pixel_batch = to_device(torch.cat(pixels), device).to(vision_dtype)
    vision = encode(tower, pixel_batch, feature_layers, needs.attention_layers, config.head_reduction, needs.key_layers)
    if dropping:
        signals = BatchSignals(parts, spans, pixels, vision.features, vision.cls_attention.get(initial),
                               vision.cls_attention.get(final), vision.keys.get(final))
        selection = strategy.select_batch(signals, config)
        keep, features = selection.keep, selection.features if selection.features is not None else vision.features
    else:
        keep, features = to_device(torch.cat([p.valid for p in parts]), device), vision.features

    tokens, counts = _visual_tokens(adapter, parts, spans, keep, features, config.newlines, budgets)
    input_ids, attention_mask, inputs_embeds, lengths = _splice(
        model, sequences, picture_of, [adapter.stock_image_tokens(p) for p in parts], counts, tokens
    )
    return PreparedInputs(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        input_ids=input_ids,
        visual_tokens_full=[parts[i].grid_tokens for i in picture_of],
        visual_tokens_kept=[budgets[i] for i in picture_of],
        visual_tokens_llm=[counts[i] for i in picture_of],
        prompt_tokens=lengths,
        partitions=[parts[i] for i in picture_of],
        image_index=picture_of,
        keep=keep,
        spans=spans,
    )


def _visual_tokens(adapter, parts, spans, keep, features, newlines: str, budgets) -> tuple[torch.Tensor, list[int]]:
    """Every picture's visual tokens for the LLM, projected, pictures one after another: ``(sum(counts), D_text)``.

    Each picture's candidate positions (:meth:`candidates`, in the stock order) are filtered by
    ``keep`` on the device: a stable sort brings the kept ones to the front in order, and the
    picture's count, known on the host from its budget, says how many to take."""
    device, side_tokens = keep.device, keep.shape[1]
    candidates = [adapter.candidates(p, newlines) for p in parts]
    width = max(len(c[0]) for c in candidates)
    entries = torch.full((len(parts), width), PADDING, dtype=torch.long)
    grid_rows = torch.full((len(parts), width), -1, dtype=torch.long)
    row_offset = 0
    for i, ((entry, grid_row), span) in enumerate(zip(candidates, spans)):
        entries[i, : len(entry)] = torch.where(entry >= 0, entry + span.start * side_tokens, entry)
        grid_rows[i, : len(entry)] = torch.where(grid_row >= 0, grid_row + row_offset, -1)
        row_offset += int(grid_row.max()) + 1
    entries, grid_rows = to_device(entries, device), to_device(grid_rows, device)
    is_token, is_newline = entries >= 0, entries == NEWLINE
    kept = keep.flatten()[entries.clamp(min=0)] & is_token
    if newlines == "all":
        chosen = kept | is_newline
    elif newlines == "kept_rows":
        in_grid = kept & (grid_rows >= 0)
        per_row = torch.zeros(max(row_offset, 1), dtype=torch.long, device=device)
        per_row.index_add_(0, grid_rows.clamp(min=0).flatten(), in_grid.flatten().long())
        chosen = kept | (is_newline & (per_row[grid_rows.clamp(min=0)] > 0))
    else:
        chosen = kept
    if newlines == "kept_rows":
        counts = chosen.sum(dim=1).tolist()  # the one wait: the newline count depends on what is kept
    else:
        newline_tokens = [int((c[0] == NEWLINE).sum()) for c in candidates]
        counts = [b + n for b, n in zip(budgets, newline_tokens)]
    order = torch.sort((~chosen).int(), dim=1, stable=True).indices  # chosen first, in the stock order
    take = torch.cat([i * width + torch.arange(n) for i, n in enumerate(counts)])
    flat_order = (order + torch.arange(len(parts), device=device)[:, None] * width).flatten()
    picked = entries.flatten()[flat_order[to_device(take, device)]]  # (sum(counts),): feature index or NEWLINE
    projected = adapter.projector(features.flatten(0, 1)[picked.clamp(min=0)])
    if adapter.image_newline is not None and newlines != "none":
        projected = torch.where((picked == NEWLINE)[:, None], adapter.image_newline.to(projected.dtype), projected)
    return projected, counts


def _splice(model, sequences, picture_of, stock_counts, counts, tokens):
    """Each row's text with its picture's run of placeholders replaced by that picture's tokens,
    left-padded: ``(input_ids, attention_mask, inputs_embeds, lengths)``."""
    image_token_id = model.config.image_token_id
    starts = [sum(counts[:i]) for i in range(len(counts))]
    new_sequences, sources, places = [], [], []
    for r, ids in enumerate(sequences):
        i = picture_of[r]
        start, end = _image_run(ids, image_token_id, stock_counts[i], r)
        placeholders = torch.full((counts[i],), image_token_id, dtype=ids.dtype)
        new_sequences.append(torch.cat([ids[:start], placeholders, ids[end:]]))
        sources.append(starts[i] + torch.arange(counts[i]))
        places.append(start)
    rows, length = len(new_sequences), max(len(s) for s in new_sequences)
    pad_id = getattr(model.config.text_config, "pad_token_id", None) or 0
    input_ids = torch.full((rows, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((rows, length), dtype=torch.long)
    destinations = []
    for r, s in enumerate(new_sequences):
        input_ids[r, length - len(s) :] = s
        attention_mask[r, length - len(s) :] = 1
        destinations.append(r * length + length - len(s) + places[r] + torch.arange(counts[picture_of[r]]))
    device = tokens.device
    input_ids, attention_mask = to_device(input_ids, device), to_device(attention_mask, device)
    inputs_embeds = model.get_input_embeddings()(input_ids)
    flat = inputs_embeds.view(rows * length, -1)
    source, destination = to_device(torch.cat(sources), device), to_device(torch.cat(destinations), device)
    flat.index_copy_(0, destination, tokens[source].to(flat.dtype))
    return input_ids, attention_mask, inputs_embeds, [len(s) for s in new_sequences]
