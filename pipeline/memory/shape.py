"""The sizes of a LLaVA-Next / LLaVA model that decide its memory, read from its transformers config."""

from __future__ import annotations

from dataclasses import dataclass

import torch

GiB = 1 << 30
FLOAT32_BYTES = 4

# Text backbones whose layers are counted exactly: which projections carry a bias, as each
# model's modeling file builds them. (q/k/v, o, MLP); None: read the config's attention_bias/mlp_bias.
TEXT_BIASES: dict[str, tuple[bool, bool, bool] | None] = {
    "llama": None,  # Vicuna, Yi, Llama 3: attention_bias and mlp_bias, both off in the released family
    "mistral": (False, False, False),
    "qwen2": (True, False, False),  # q/k/v biases, none on o_proj or the MLP
}
VISION_TOWERS = ("clip_vision_model",)


def dtype_bytes(dtype: torch.dtype | str) -> int:
    """Bytes per element of ``dtype`` (``torch.float16`` or ``"float16"``)."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    return dtype.itemsize


@dataclass(frozen=True)
class LlavaShape:
    """The sizes of a LLaVA-Next / LLaVA model that decide its memory."""

    # Vision tower (CLIP ViT)
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    image_size: int
    patch_size: int
    channels: int
    feature_layers: tuple[int, ...]  # vision_feature_layer, as a tuple (it may be a list)
    # Projector
    projector_bias: bool
    has_image_newline: bool  # LLaVA-Next learns one embedding; LLaVA-1.5 has none
    grid_pinpoints: tuple[tuple[int, int], ...]  # LLaVA-Next's anyres resolutions; () for LLaVA-1.5
    # Language model (Llama-style: gated MLP, RMSNorm, rotary positions)
    text_hidden: int
    text_intermediate: int
    text_layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    tied_embeddings: bool
    # Whether the parameter count from this shape is exact: a CLIP tower and a text backbone in TEXT_BIASES.
    architecture: str  # "llava_next/clip_vision_model/llama"
    counted_exactly: bool

    @classmethod
    def from_config(cls, config) -> "LlavaShape":
        vision, text = config.vision_config, config.text_config
        heads = text.num_attention_heads
        feature_layer = config.vision_feature_layer
        is_next = config.model_type == "llava_next"
        text_type, vision_type = getattr(text, "model_type", "?"), getattr(vision, "model_type", "?")
        pinpoints = getattr(config, "image_grid_pinpoints", None) if is_next else None
        biases = TEXT_BIASES.get(text_type)
        if biases is None:  # Llama, and Llama-style backbones we do not know, by the config's own flags
            attention_bias = bool(getattr(text, "attention_bias", False))
            biases = (attention_bias, attention_bias, bool(getattr(text, "mlp_bias", False)))
        return cls(
            vision_hidden=vision.hidden_size,
            vision_intermediate=vision.intermediate_size,
            vision_layers=vision.num_hidden_layers,
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            channels=getattr(vision, "num_channels", 3),
            feature_layers=(feature_layer,) if isinstance(feature_layer, int) else tuple(feature_layer),
            projector_bias=getattr(config, "multimodal_projector_bias", True),
            has_image_newline=is_next,
            grid_pinpoints=tuple(tuple(p) for p in pinpoints or ()),
            text_hidden=text.hidden_size,
            text_intermediate=text.intermediate_size,
            text_layers=text.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            vocab=text.vocab_size,
            qkv_bias=biases[0],
            o_bias=biases[1],
            mlp_bias=biases[2],
            # transformers 5 ties lm_head to the embeddings by the top-level config's flag.
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            architecture=f"{config.model_type}/{vision_type}/{text_type}",
            counted_exactly=config.model_type in ("llava_next", "llava")
            and vision_type in VISION_TOWERS
            and text_type in TEXT_BIASES,
        )

    @property
    def patch_tokens(self) -> int:
        """Patch tokens a partition gives (576 for CLIP-L/14 at 336 px), CLS not counted."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def vision_feature_width(self) -> int:
        """Width of the features the projector takes: one CLIP width per feature layer."""
        return self.vision_hidden * len(self.feature_layers)

    def vision_layer_index(self, layer: int, name: str) -> int:
        """An encoder layer index, negatives allowed, as ``hired.vision.VisionTower.layer_index`` checks it."""
        if not -self.vision_layers <= layer < self.vision_layers:
            raise ValueError(
                f"{name}={layer} is out of range for a vision tower with {self.vision_layers} layers "
                f"(valid: {-self.vision_layers}..{self.vision_layers - 1})"
            )
        return layer % self.vision_layers

    @property
    def default_final_layer(self) -> int:
        """The encoder layer producing the deepest feature state: HiRED's ``final_layer=None``."""
        deepest_state = max(layer % (self.vision_layers + 1) for layer in self.feature_layers)
        return max(deepest_state - 1, 0)
