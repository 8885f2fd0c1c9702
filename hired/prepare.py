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

import torch

from .config import NO_DROPPING, HiREDConfig
from .models import NEWLINE, Partitions, adapter_for
from . import strategies
from .strategies.base import ImageSignals, keep_all
from .vision import encode


@dataclass
class PreparedInputs:
    """Pruned LLM inputs for a batch, plus what was kept for each item."""

    inputs_embeds: torch.Tensor  # (B, L, D_text), left-padded
    attention_mask: torch.Tensor  # (B, L)
    input_ids: torch.Tensor  # (B, L): the text with one placeholder per kept visual token
    visual_tokens_full: list[int]  # N per item: the stock model's grid tokens
    visual_tokens_kept: list[int]  # grid tokens kept per item (the budget B)
    visual_tokens_llm: list[int]  # visual tokens the LLM sees per item: kept + newlines
    prompt_tokens: list[int]  # sequence length per item, padding excluded
    kept_indices: list[list[torch.Tensor]] = field(repr=False)  # per item, per partition: kept token indices
    partition_budgets: list[list[int]] = field(default_factory=list)  # per item, per partition
    partitions: list[Partitions] = field(default_factory=list, repr=False)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for ``model.generate`` (or ``model(...)``)."""
        return {"inputs_embeds": self.inputs_embeds, "attention_mask": self.attention_mask}


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


def _replace_image_run(ids: torch.Tensor, image_token_id: int, expected: int, count: int, item: int) -> torch.Tensor:
    positions = (ids == image_token_id).nonzero().flatten()
    if len(positions) == 0:
        raise ValueError(f"item {item}: the prompt has no image token; put the processor's image token in the text")
    start, end = int(positions[0]), int(positions[-1]) + 1
    if end - start != len(positions):
        raise ValueError(f"item {item}: the image placeholder tokens are not one contiguous run (one image per item)")
    if len(positions) != expected:
        raise ValueError(
            f"item {item}: the prompt has {len(positions)} image placeholder tokens but the model has {expected} "
            "visual tokens for this image; the processor does not match the model (check the processor's "
            "patch_size, num_additional_image_tokens and vision_feature_select_strategy)"
        )
    placeholders = torch.full((count,), image_token_id, dtype=ids.dtype, device=ids.device)
    return torch.cat([ids[:start], placeholders, ids[end:]])


def _rows(attention: dict[int, torch.Tensor], layer: int, span: slice) -> torch.Tensor | None:
    """One image's CLS attention rows at ``layer`` (on the CPU, where selection runs), if computed."""
    return attention[layer][span].cpu() if layer in attention else None


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
def prepare_inputs(model, inputs: Mapping, config: HiREDConfig | None = None) -> PreparedInputs:
    """HiRED-pruned inputs for ``model.generate`` from a processor's output.

    ``inputs`` holds ``input_ids`` (a padded ``(B, L)`` tensor with its
    ``attention_mask``, or a list of 1-D sequences), ``pixel_values`` (as the
    processor returns them, or a list of ``(P_i, 3, H, W)``) and, for
    LLaVA-Next, ``image_sizes``. ``config=None`` keeps every token in the stock
    layout. Returns :class:`PreparedInputs`; ``model.generate(**prepared.model_inputs(), ...)``
    then generates as usual (the output holds only the new tokens).
    """
    adapter = adapter_for(model)
    config = config or NO_DROPPING
    sequences = _unpadded_sequences(inputs)
    batch = len(sequences)
    parts = [adapter.partitions(size) for size in _image_sizes(inputs, batch)]
    budgets = [config.tokens_to_keep(p.grid_tokens) for p in parts]
    pixels = _pixel_values_per_image(inputs, [p.num_partitions for p in parts])

    tower = adapter.tower
    feature_layer = model.config.vision_feature_layer
    feature_layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    # The layer producing the features: hidden_states[h] is the output of layer h - 1.
    deepest_state = max(layer % (tower.num_layers + 1) for layer in feature_layers)
    default_final = max(deepest_state - 1, 0)
    initial = tower.layer_index(config.initial_layer, "initial_layer")
    final = tower.layer_index(default_final if config.final_layer is None else config.final_layer, "final_layer")
    dropping = any(b < p.grid_tokens for b, p in zip(budgets, parts))
    needs = strategies.get(config.strategy).needs(initial, final) if dropping else strategies.VisionNeeds()

    device, vision_dtype = model.device, next(tower.module.parameters()).dtype
    pixel_batch = torch.cat(pixels).to(device=device, dtype=vision_dtype)
    vision = encode(tower, pixel_batch, feature_layers, needs.attention_layers, config.head_reduction, needs.key_layers)

    image_token_id = model.config.image_token_id
    embed = model.get_input_embeddings()
    new_sequences, image_features, kept_all = [], [], []
    offset = 0
    for i, (p, ids) in enumerate(zip(parts, sequences)):
        span = slice(offset, offset + p.num_partitions)
        offset += p.num_partitions
        if budgets[i] == p.grid_tokens:
            selection = keep_all(p)
        else:
            signals = ImageSignals(
                pixel_values=pixels[i],
                features=vision.features[span],
                initial_attention=_rows(vision.cls_attention, initial, span),
                final_attention=_rows(vision.cls_attention, final, span),
                final_keys=vision.keys[final][span] if final in vision.keys else None,
            )
            selection = strategies.get(config.strategy).select(p, signals, config)
        kept = selection.kept
        order = adapter.token_order(p, kept, config.newlines).to(device)
        # Merged features (PruMerge+) replace the kept tokens' own before the projector, as in PruMerge.
        features = selection.apply(vision.features[span]).flatten(0, 1)  # (P*T, D_vision)
        is_newline = order == NEWLINE
        tokens = adapter.projector(features[order.clamp(min=0)])
        if is_newline.any():
            tokens[is_newline] = adapter.image_newline.to(tokens.dtype)
        image_features.append(tokens)
        kept_all.append(kept)
        expected = adapter.stock_image_tokens(p)
        new_sequences.append(_replace_image_run(ids.to(device), image_token_id, expected, len(order), i))

    # Left-pad: generation appends on the right.
    length = max(len(s) for s in new_sequences)
    pad_id = getattr(model.config.text_config, "pad_token_id", None) or 0
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros((batch, length), dtype=torch.long, device=device)
    for i, s in enumerate(new_sequences):
        input_ids[i, length - len(s) :] = s
        attention_mask[i, length - len(s) :] = 1
    inputs_embeds = embed(input_ids)
    image_positions = input_ids == image_token_id
    inputs_embeds[image_positions] = torch.cat(image_features).to(inputs_embeds.dtype)

    return PreparedInputs(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        input_ids=input_ids,
        visual_tokens_full=[p.grid_tokens for p in parts],
        visual_tokens_kept=budgets,
        visual_tokens_llm=[len(f) for f in image_features],
        prompt_tokens=[len(s) for s in new_sequences],
        kept_indices=[[k.cpu() for k in kept] for kept in kept_all],
        partition_budgets=[[len(k) for k in kept] for kept in kept_all],
        partitions=parts,
    )
