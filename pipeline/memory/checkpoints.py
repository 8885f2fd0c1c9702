"""The released llava-hf checkpoints' configs, built locally: the memory model and the planner
reason about the real models without downloading a byte.

Each builder returns the transformers config the checkpoint's ``config.json`` describes, as far
as memory and token counts go: the CLIP ViT-L/14-336 tower, the text backbone's widths, depth,
heads, KV heads, MLP and vocabulary (resized by llava-hf to a multiple of 64 after adding
``<image>`` and ``<pad>``), the ``<image>`` token id, the anyres pinpoints and the feature layer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _clip_vit_l_336():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
    )


def _text(backbone: str, hidden: int, layers: int, heads: int, kv_heads: int, mlp: int, vocab: int, context: int):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    config_class = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[backbone]
    return config_class(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        intermediate_size=mlp, vocab_size=vocab, max_position_embeddings=context, tie_word_embeddings=False,
    )


def _llava_next(text, image_token_id: int):
    from transformers import LlavaNextConfig

    return LlavaNextConfig(
        vision_config=_clip_vit_l_336(), text_config=text, image_token_id=image_token_id,
        image_grid_pinpoints=LLAVA_NEXT_PINPOINTS, vision_feature_layer=-2,
        vision_feature_select_strategy="default", tie_word_embeddings=False,
    )


def _llava(text, image_token_id: int):
    from transformers import LlavaConfig

    return LlavaConfig(
        vision_config=_clip_vit_l_336(), text_config=text, image_token_id=image_token_id,
        vision_feature_layer=-2, vision_feature_select_strategy="default", tie_word_embeddings=False,
    )


# Hub id -> config builder. Text: backbone, hidden, layers, heads, KV heads, MLP, vocabulary, context.
CHECKPOINTS: dict[str, Callable[[], object]] = {
    "llava-hf/llava-v1.6-mistral-7b-hf": lambda: _llava_next(
        _text("mistral", 4096, 32, 32, 8, 14336, 32064, 32768), image_token_id=32000),
    "llava-hf/llava-v1.6-vicuna-7b-hf": lambda: _llava_next(
        _text("llama", 4096, 32, 32, 32, 11008, 32064, 4096), image_token_id=32000),
    "llava-hf/llava-v1.6-vicuna-13b-hf": lambda: _llava_next(
        _text("llama", 5120, 40, 40, 40, 13824, 32064, 4096), image_token_id=32000),
    "llava-hf/llava-v1.6-34b-hf": lambda: _llava_next(  # Yi-34B: a Llama with 8 KV heads
        _text("llama", 7168, 60, 56, 8, 20480, 64064, 4096), image_token_id=64000),
    "llava-hf/llama3-llava-next-8b-hf": lambda: _llava_next(
        _text("llama", 4096, 32, 32, 8, 14336, 128320, 8192), image_token_id=128256),
    "llava-hf/llava-next-72b-hf": lambda: _llava_next(  # Qwen1.5-72B: q/k/v biases
        _text("qwen2", 8192, 80, 64, 64, 24576, 152064, 32768), image_token_id=151646),
    "llava-hf/llava-1.5-7b-hf": lambda: _llava(
        _text("llama", 4096, 32, 32, 32, 11008, 32064, 4096), image_token_id=32000),
}
NAMES = tuple(CHECKPOINTS)


def checkpoint_config(name: str):
    """The config of the released checkpoint ``name`` (its hub id, or the part after ``llava-hf/``)."""
    key = name if "/" in name else f"llava-hf/{name}"
    try:
        return CHECKPOINTS[key]()
    except KeyError:
        raise ValueError(f"unknown checkpoint {name!r}; known: {', '.join(NAMES)}") from None


def planning_config(model: str) -> tuple[object, str]:
    """The config of ``model`` read without weights or network, and where it came from: a local
    folder's ``config.json``, the hub cache's copy of a hub id's, or a released checkpoint built here."""
    from transformers import AutoConfig

    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{model}: the folder holds no config.json")
        return AutoConfig.from_pretrained(str(path), local_files_only=True), f"{path}/config.json"
    if path.exists():
        raise ValueError(f"{model}: not a folder (give the checkpoint's folder, which holds config.json)")
    import huggingface_hub

    cached = huggingface_hub.try_to_load_from_cache(model, "config.json") if model.count("/") == 1 else None
    if isinstance(cached, str):
        return AutoConfig.from_pretrained(str(Path(cached).parent), local_files_only=True), f"the hub cache ({cached})"
    key = model if "/" in model else f"llava-hf/{model}"
    if key in CHECKPOINTS:
        return CHECKPOINTS[key](), f"{key}'s config as pipeline.memory.checkpoints builds it"
    raise ValueError(f"{model}: not a local folder, not in the hub cache, and not a released checkpoint known here "
                     f"({', '.join(n.removeprefix('llava-hf/') for n in NAMES)})")
