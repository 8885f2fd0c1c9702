"""One call from images and prompts to HiRED-pruned generations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from . import choices as choice_rows
from .config import HiREDConfig
from .decode import DecodeOptions, Decoder, eos_token_ids, trim_at_eos  # noqa: F401 (eos_token_ids, trim_at_eos: public here too)
from .prepare import prepare_inputs
from .sampling import Sampling


@dataclass
class GenerationResult:
    text: str  # stripped, special tokens skipped, cut before a stop string
    token_ids: list[int]  # generated tokens, up to and including the first EOS (or the stop string's last)
    visual_tokens_kept: int  # grid tokens that reached the LLM (the budget B)
    visual_tokens_full: int  # N: grid tokens the stock model would use
    visual_tokens_llm: int  # visual tokens in the LLM's sequence, newlines included
    prompt_tokens: int  # the LLM's input length for this item
    partition_budgets: list[int]  # tokens kept per partition: full view first, then sub-images row-major
    kept_indices: list[torch.Tensor] = field(repr=False)  # per partition: kept token indices, raster order
    finish_reason: str = "length"  # "eos", "stop" or "length"

    @property
    def generated_tokens(self) -> int:
        return len(self.token_ids)


@torch.no_grad()
def generate(
    model,
    processor,
    images: Sequence,
    prompts: Sequence[str],
    config: HiREDConfig | None = None,
    *,
    max_new_tokens: int = 64,
    min_new_tokens: int = 0,
    sampling: Sampling | Sequence[Sampling | None] | None = None,
    choices=None,
    image_index: Sequence[int] | None = None,
    options: DecodeOptions | None = None,
) -> list[GenerationResult]:
    """Generate for a batch of (image, prompt) pairs with HiRED token dropping.

    Each prompt holds the processor's image token once (``processor.apply_chat_template``
    writes it for you). Images may differ in size and aspect ratio. ``config=None``
    keeps every visual token (the stock model). Decoding is greedy unless ``sampling`` says
    otherwise (a :class:`hired.Sampling` for all rows or a list with one per row);
    ``choices`` restricts each text to one of the given strings (a list for all rows, or one
    list per row); ``options`` picks the decode loop's pieces (:class:`hired.DecodeOptions`).

    Several prompts per picture: ``image_index`` gives each prompt's picture in ``images``
    (``images=[a, b], prompts=[p, q, r], image_index=[0, 0, 1]``); each picture is preprocessed,
    encoded and selected once, and there is one result per prompt.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(images, (list, tuple)):
        images = [images]
    if image_index is None and len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts (several prompts a picture: pass image_index)")
    image_token = getattr(processor, "image_token", "<image>")
    for i, prompt in enumerate(prompts):
        if prompt.count(image_token) != 1:
            raise ValueError(
                f"prompt {i} must contain the image token {image_token!r} exactly once "
                f"(found {prompt.count(image_token)}); e.g. 'USER: {image_token}\\nDescribe the image. ASSISTANT:'"
            )
    choices = choice_rows.per_row(choices, len(prompts), processor.tokenizer, max_new_tokens)  # refused before any work
    if image_index is None:
        inputs = processor(images=list(images), text=list(prompts), return_tensors="pt", padding=True)
    else:
        inputs = _shared_pictures(processor, list(images), list(prompts), image_index, image_token)
    prepared = prepare_inputs(model, inputs, config, image_index)
    decoded = Decoder(model, processor, options)(
        prepared, max_new_tokens, min_new_tokens=min_new_tokens, sampling=sampling, choices=choices
    )
    return [
        GenerationResult(
            text=row.text,
            token_ids=row.token_ids,
            visual_tokens_kept=prepared.visual_tokens_kept[i],
            visual_tokens_full=prepared.visual_tokens_full[i],
            visual_tokens_llm=prepared.visual_tokens_llm[i],
            prompt_tokens=prepared.prompt_tokens[i],
            partition_budgets=prepared.partition_budgets[i],
            kept_indices=prepared.kept_indices[i],
            finish_reason=row.finish_reason,
        )
        for i, row in enumerate(decoded.rows)
    ]


def _shared_pictures(processor, images: list, prompts: list[str], image_index: Sequence[int], image_token: str) -> dict:
    """The processor's output for prompts that share pictures: each picture processed once, each
    prompt's image token expanded to its picture's placeholder count as the processor counts it."""
    if any(not 0 <= int(i) < len(images) for i in image_index) or len(image_index) != len(prompts):
        raise ValueError(f"image_index needs one entry in [0, {len(images)}) per prompt, got {list(image_index)!r}")
    pictures = processor(images=images, text=[image_token] * len(images), return_tensors="pt", padding=True)
    image_token_id = processor.tokenizer.convert_tokens_to_ids(image_token)
    counts = (pictures["input_ids"] == image_token_id).sum(dim=1).tolist()
    expanded = [p.replace(image_token, image_token * counts[int(i)]) for p, i in zip(prompts, image_index)]
    text = processor.tokenizer(expanded, return_tensors="pt", padding=True)  # as the processor tokenizes expanded text
    inputs = {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"], "pixel_values": pictures["pixel_values"]}
    if "image_sizes" in pictures:
        inputs["image_sizes"] = pictures["image_sizes"]
    return inputs
