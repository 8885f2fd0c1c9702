"""What the generation benchmarks share: the random-weight models they build (no download), the
pictures, and the device's measured ceilings with the FLOP count they are divided into."""

from __future__ import annotations

import time

import torch

from hired.tiny import CHAT_TEMPLATE, LLAVA_NEXT_PINPOINTS, build_tokenizer

# The full LLaVA-Next-7B (llava-v1.6-vicuna-7b) architecture, and a scaled-down one with the same geometry.
ARCHITECTURES = {
    "gpu": dict(vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
                text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=32, vocab_size=32064)),
    "cpu": dict(vision=dict(hidden_size=192, intermediate_size=768, num_hidden_layers=6, num_attention_heads=6),
                text=dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                          num_key_value_heads=6, vocab_size=32064)),
    # For smoke runs: the real geometry (336 px tiles, 576 tokens a partition) at toy widths.
    "tiny": dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4),
                 text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=512)),
}


def build_model(mode: str, device: torch.device, dtype: torch.dtype):
    """A random-weight LLaVA-Next of the mode's architecture (a key of ``ARCHITECTURES``), built on the
    device (no download)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tokenizer = build_tokenizer()
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                                   image_grid_pinpoints=LLAVA_NEXT_PINPOINTS),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )
    arch = ARCHITECTURES[mode]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(image_size=336, patch_size=14, projection_dim=768, **arch["vision"]),
        text_config=LlamaConfig(max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=3, **arch["text"]),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=LLAVA_NEXT_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = LlavaNextForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), processor


def pictures(count: int, size: int) -> list:
    from pipeline.demo.data import draw_scene

    return [draw_scene(size, size, seed=i) for i in range(count)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device, dtype) -> float:
    """Measured FLOP/s of a large square matmul in ``dtype`` (random data)."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    reps = 10 if device.type == "cuda" else 3
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def copy_bandwidth(device) -> float:
    """Measured bytes/s of a large device-to-device copy (read + write)."""
    n = (1 << 30) if device.type == "cuda" else (1 << 26)
    src = torch.empty(n, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    reps = 10 if device.type == "cuda" else 3
    start = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    sync(device)
    return 2 * n * reps / (time.perf_counter() - start)


def flops_per_image(model, visual_tokens_llm: int, partitions: int, text_tokens: int, new_tokens: int) -> dict:
    """Forward FLOPs for one image: vision tower, prefill and decode (2 FLOPs per multiply-add)."""
    v, t = model.config.vision_config, model.config.text_config
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    per_layer = 2 * tokens * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size) + 4 * tokens**2 * v.hidden_size
    vision = partitions * (v.num_hidden_layers * per_layer + 2 * tokens * 3 * v.patch_size**2 * v.hidden_size)
    projector = 2 * visual_tokens_llm * (v.hidden_size * t.hidden_size + t.hidden_size**2)
    head_dim = t.hidden_size // t.num_attention_heads
    kv = t.num_key_value_heads * head_dim
    linear = 2 * t.hidden_size**2 + 2 * t.hidden_size * kv + 3 * t.hidden_size * t.intermediate_size
    prompt = text_tokens + visual_tokens_llm
    prefill = t.num_hidden_layers * (2 * prompt * linear + 2 * prompt**2 * t.hidden_size) + 2 * t.hidden_size * t.vocab_size
    decode = sum(
        t.num_hidden_layers * (2 * linear + 4 * (prompt + k) * t.hidden_size) + 2 * t.hidden_size * t.vocab_size
        for k in range(new_tokens)
    )
    return {"vision": vision + projector, "prefill": prefill, "decode": decode, "total": vision + projector + prefill + decode}
