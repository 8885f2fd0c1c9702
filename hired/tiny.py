"""Tiny LLaVA-Next and LLaVA-1.5 checkpoints built locally, for tests and the demo.

They have the real geometry (CLIP ViT at 336 px with 14 px patches: 576 tokens a
partition, the llava-v1.6 grid pinpoints), the real processor and image
processor classes, and a tokenizer trained here with an ``<image>`` token, but
random weights and tiny widths, so they run on a CPU in milliseconds. They are
saved with ``save_pretrained`` and meant to be loaded with ``from_pretrained``,
exactly as a real checkpoint is. No hub access is needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
# A Vicuna-style template like llava-v1.6-vicuna's: "USER: <image>\n{text} ASSISTANT:".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'].upper() + ': ' }}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] + ' ' }}{% endif %}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
_ROLE_WORDS = ["USER", "ASSISTANT", "SYSTEM"]
_WORDS = (
    "a an the photo picture image of with on in at and is are this that what how many which color "
    "describe short caption question answer yes no one two three four five red green blue yellow white black "
    "sky sun cloud tree house car road street person dog cat bird boat water grass mountain city window door "
    "left right top bottom small large bright dark shows there"
).split()


def build_tokenizer():
    """A word-level tokenizer over a small vocabulary, with LLaVA's special tokens.

    Word-level so that a random model's output decodes to words, not byte soup.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = SPECIAL_TOKENS + list(".,:;?!'-()/\n") + [str(d) for d in range(10)] + _ROLE_WORDS + _WORDS
    vocab = list(dict.fromkeys(vocab))
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    bos = vocab.index("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )


def _text_config(vocab_size: int, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        # Wide weights give well-separated logits, so greedy decoding does not hinge on rounding.
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _vision_config(num_layers: int, tile: int = 336, width: int = 32):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        image_size=tile,
        patch_size=14,
        projection_dim=width,
    )


def _save(model, processor, path: Path, seed: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / "TINY_MODEL").write_text(f"random weights, seed {seed}; built by hired.tiny\n")
    return path


def _with_seed(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_tiny_llava_next(
    path: str | os.PathLike, seed: int = 0, vision_layers: int = 4, tile: int = 336, vision_width: int = 32
) -> Path:
    """Save a tiny random LLaVA-Next checkpoint (model + processor) at ``path``.

    ``tile=336`` is the real geometry (576 tokens a partition); a smaller multiple of 14 (e.g. 56:
    16 tokens a partition, pinpoints scaled alike) keeps the anyres logic for soaks of many rows.
    ``vision_width`` is the CLIP tower's hidden size (its MLP twice that); bitsandbytes' 4-bit
    kernels need every layer at least 64 wide (the text model already is).
    """
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    if tile % 14:
        raise ValueError(f"tile must be a multiple of the 14 px patch, got {tile}")
    pinpoints = [[h * tile // 336, w * tile // 336] for h, w in LLAVA_NEXT_PINPOINTS]
    tokenizer = build_tokenizer()
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, as in llava-hf's checkpoints
        chat_template=CHAT_TEMPLATE,
    )
    config = LlavaNextConfig(
        vision_config=_vision_config(vision_layers, tile, vision_width),
        text_config=_text_config(len(tokenizer), tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = _with_seed(seed, lambda: LlavaNextForConditionalGeneration(config))
    return _save(model, processor, Path(path), seed)


def build_tiny_llava(path: str | os.PathLike, seed: int = 0, vision_layers: int = 4, vision_width: int = 32) -> Path:
    """Save a tiny random LLaVA-1.5 checkpoint (model + processor) at ``path`` (``vision_width``: as for LLaVA-Next)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = build_tokenizer()
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=_vision_config(vision_layers, width=vision_width),
        text_config=_text_config(len(tokenizer), tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = _with_seed(seed, lambda: LlavaForConditionalGeneration(config))
    return _save(model, processor, Path(path), seed)
