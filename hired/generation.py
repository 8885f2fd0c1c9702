"""One call from images and prompts to HiRED-pruned generations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .config import HiREDConfig
from .prepare import prepare_inputs


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]  # generated tokens, up to and including the first EOS
    visual_tokens_kept: int  # grid tokens that reached the LLM (the budget B)
    visual_tokens_full: int  # N: grid tokens the stock model would use
    visual_tokens_llm: int  # visual tokens in the LLM's sequence, newlines included
    prompt_tokens: int  # the LLM's input length for this item
    partition_budgets: list[int]  # tokens kept per partition: full view first, then sub-images row-major
    kept_indices: list[torch.Tensor] = field(repr=False)  # per partition: kept token indices, raster order

    @property
    def generated_tokens(self) -> int:
        return len(self.token_ids)


def eos_token_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def trim_at_eos(token_ids: list[int], eos_ids: set[int]) -> list[int]:
    """Generated ids up to and including the first EOS (what follows is batch padding)."""
    for i, token in enumerate(token_ids):
        if token in eos_ids:
            return token_ids[: i + 1]
    return token_ids


@torch.no_grad()
def generate(
    model,
    processor,
    images: Sequence,
    prompts: Sequence[str],
    config: HiREDConfig | None = None,
    **generate_kwargs,
) -> list[GenerationResult]:
    """Generate for a batch of (image, prompt) pairs with HiRED token dropping.

    Each prompt holds the processor's image token once (``processor.apply_chat_template``
    writes it for you). Images may differ in size and aspect ratio. ``config=None``
    keeps every visual token (the stock model). ``generate_kwargs`` go to
    ``model.generate`` (e.g. ``max_new_tokens=64``; greedy unless you say otherwise).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(images, (list, tuple)):
        images = [images]
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    image_token = getattr(processor, "image_token", "<image>")
    for i, prompt in enumerate(prompts):
        if prompt.count(image_token) != 1:
            raise ValueError(
                f"prompt {i} must contain the image token {image_token!r} exactly once "
                f"(found {prompt.count(image_token)}); e.g. 'USER: {image_token}\\nDescribe the image. ASSISTANT:'"
            )
    inputs = processor(images=list(images), text=list(prompts), return_tensors="pt", padding=True)
    prepared = prepare_inputs(model, inputs, config)
    generate_kwargs.setdefault("do_sample", False)
    if model.generation_config.pad_token_id is None and processor.tokenizer.pad_token_id is not None:
        generate_kwargs.setdefault("pad_token_id", processor.tokenizer.pad_token_id)
    output = model.generate(**prepared.model_inputs(), **generate_kwargs)
    eos_ids = eos_token_ids(model)
    results = []
    for i, row in enumerate(output.tolist()):
        token_ids = trim_at_eos(row, eos_ids)
        results.append(
            GenerationResult(
                text=processor.decode(token_ids, skip_special_tokens=True).strip(),
                token_ids=token_ids,
                visual_tokens_kept=prepared.visual_tokens_kept[i],
                visual_tokens_full=prepared.visual_tokens_full[i],
                visual_tokens_llm=prepared.visual_tokens_llm[i],
                prompt_tokens=prepared.prompt_tokens[i],
                partition_budgets=prepared.partition_budgets[i],
                kept_indices=prepared.kept_indices[i],
            )
        )
    return results
