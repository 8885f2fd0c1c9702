"""Bytes of a LLaVA-Next / LLaVA model's weights: counted from its config (full precision, or 8-bit
and 4-bit as bitsandbytes stores them), or measured on a loaded model.

A config is counted layer by layer (:func:`linear_layers` plus :func:`other_parameters`): exact for
CLIP towers with Llama, Mistral and Qwen2 text backbones, which covers the released llava-hf
family. Quantization follows transformers' bitsandbytes integration: every ``nn.Linear`` is
replaced except the modules it keeps (by default the output embeddings, ``lm_head``, and
anything tied to the input embeddings), so the vision tower and the projector are quantized
too. What each layer then holds:

* 8-bit (``Linear8bitLt``): int8 weights and a float32 scale per output row (``SCB``);
* 4-bit (``Linear4bit``): two weights a byte, a float32 ``absmax`` per block of 64 and the
  16-entry code; with double quantization the ``absmax`` values are themselves quantized to a
  byte each, with a float32 per 256 of them, an offset and a 256-entry code a layer;
* biases, norms, embeddings and ``lm_head`` stay in the load dtype.

``model.get_memory_footprint()`` counts parameters and buffers only; the quantization state
above lives beside them on the device and is counted here too (:attr:`WeightBytes.total_bytes`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from hired.loading import QUANTIZATIONS

from .shape import FLOAT32_BYTES, LlavaShape, dtype_bytes

NF4_CODE_ENTRIES = 16  # the 4-bit data type's lookup table, one per layer
DYNAMIC_CODE_ENTRIES = 256  # the 8-bit map that double quantization's absmax uses


@dataclass(frozen=True)
class Quantization:
    """How bitsandbytes stores the linear layers: ``"8bit"`` or ``"4bit"`` (nf4 or fp4: the same size).

    ``skip_modules`` are transformers' ``llm_int8_skip_modules`` (module names or patterns kept
    in full precision); ``None`` keeps its default, the output embeddings.
    """

    bits: int
    double_quant: bool = False  # bnb_4bit_use_double_quant
    blocksize: int = 64  # bitsandbytes' 4-bit block
    skip_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"quantization bits must be 8 or 4, got {self.bits}")

    @classmethod
    def parse(cls, value) -> "Quantization | None":
        """``None``, ``"8bit"``, ``"4bit"``, a :class:`Quantization` or a ``BitsAndBytesConfig`` (or its dict)."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, str):
            if value not in QUANTIZATIONS:
                raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {value!r}")
            return cls(bits=int(value.removesuffix("bit")))
        settings = value if isinstance(value, dict) else value.to_dict()
        if settings.get("quant_method", "bitsandbytes") != "bitsandbytes":
            raise ValueError(f"only bitsandbytes quantization is counted, got {settings.get('quant_method')!r}")
        skip = settings.get("llm_int8_skip_modules")
        skip = None if skip is None else tuple(skip)
        if settings.get("load_in_8bit"):
            return cls(bits=8, skip_modules=skip)
        if settings.get("load_in_4bit"):
            return cls(bits=4, double_quant=bool(settings.get("bnb_4bit_use_double_quant")), skip_modules=skip)
        return None

    def converts(self, module_name: str) -> bool:
        """Whether transformers replaces the linear layer ``module_name``.

        The rule of transformers' ``should_convert_module`` (quantizers_utils), restated so that
        counting imports no transformers: a pattern skips a module it matches from the start up to
        a module boundary, or as a suffix.
        """
        patterns = ("lm_head",) if self.skip_modules is None else self.skip_modules
        boundary = r"(?:(?<=\.)|(?=\.|$))"
        return not any(re.match(rf"(?:{p}){boundary}", module_name) or module_name.endswith(p) for p in patterns)

    def weight_bytes(self, inputs: int, outputs: int) -> int:
        """One quantized weight matrix as its parameter holds it: int8, or two 4-bit values a byte."""
        weights = inputs * outputs
        return weights if self.bits == 8 else math.ceil(weights / 2)

    def state_bytes(self, inputs: int, outputs: int) -> int:
        """The state bitsandbytes keeps beside one quantized weight matrix."""
        if self.bits == 8:
            return outputs * FLOAT32_BYTES  # a float32 scale per output row (SCB)
        blocks = math.ceil(inputs * outputs / self.blocksize)
        code = NF4_CODE_ENTRIES * FLOAT32_BYTES
        if not self.double_quant:
            return blocks * FLOAT32_BYTES + code  # a float32 absmax per block
        # absmax as a byte a block, a float32 per 256 of them, the offset, and the layer's copy of
        # the 8-bit map they are coded with.
        nested = math.ceil(blocks / 256) * FLOAT32_BYTES + FLOAT32_BYTES + DYNAMIC_CODE_ENTRIES * FLOAT32_BYTES
        return blocks + nested + code

    def __str__(self) -> str:
        return f"{self.bits}bit" + (" (double quantization)" if self.double_quant else "")


# ---------------------------------------------------------------------------
# Counting a config
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Linear:
    """One ``nn.Linear`` of the model, named by its path in transformers' module tree."""

    name: str
    inputs: int
    outputs: int
    bias: bool

    @property
    def parameters(self) -> int:
        return self.inputs * self.outputs + (self.outputs if self.bias else 0)


def linear_layers(shape: LlavaShape) -> list[Linear]:
    """Every linear layer of a ``Llava(Next)ForConditionalGeneration``: the quantizable weights."""
    d, inner = shape.vision_hidden, shape.vision_intermediate
    layers = []
    for i in range(shape.vision_layers):
        prefix = f"model.vision_tower.encoder.layers.{i}"
        layers += [Linear(f"{prefix}.self_attn.{p}_proj", d, d, True) for p in ("q", "k", "v", "out")]
        layers += [Linear(f"{prefix}.mlp.fc1", d, inner, True), Linear(f"{prefix}.mlp.fc2", inner, d, True)]
    h, bias = shape.text_hidden, shape.projector_bias
    layers += [
        Linear("model.multi_modal_projector.linear_1", shape.vision_feature_width, h, bias),
        Linear("model.multi_modal_projector.linear_2", h, h, bias),
    ]
    q_width, kv_width, mlp = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.text_intermediate
    for i in range(shape.text_layers):
        prefix = f"model.language_model.layers.{i}"
        layers += [
            Linear(f"{prefix}.self_attn.q_proj", h, q_width, shape.qkv_bias),
            Linear(f"{prefix}.self_attn.k_proj", h, kv_width, shape.qkv_bias),
            Linear(f"{prefix}.self_attn.v_proj", h, kv_width, shape.qkv_bias),
            Linear(f"{prefix}.self_attn.o_proj", q_width, h, shape.o_bias),
            Linear(f"{prefix}.mlp.gate_proj", h, mlp, shape.mlp_bias),
            Linear(f"{prefix}.mlp.up_proj", h, mlp, shape.mlp_bias),
            Linear(f"{prefix}.mlp.down_proj", mlp, h, shape.mlp_bias),
        ]
    if not shape.tied_embeddings:  # tied, lm_head is the embedding matrix, counted once
        layers.append(Linear("lm_head", h, shape.vocab, False))
    return layers


# The model's top-level parts, as accelerate's device maps name them (a decoder layer: ``LAYER.format(i)``).
VISION, PROJECTOR, NEWLINE = "model.vision_tower", "model.multi_modal_projector", "model.image_newline"
EMBEDDINGS, LAYER = "model.language_model.embed_tokens", "model.language_model.layers.{}"
ROTARY, FINAL_NORM, LM_HEAD = "model.language_model.rotary_emb", "model.language_model.norm", "lm_head"


def module_of(name: str) -> str:
    """The top-level part that holds the parameter or layer ``name``."""
    if name.startswith("model.language_model.layers."):
        return ".".join(name.split(".")[:4])
    for part in (VISION, PROJECTOR, NEWLINE, EMBEDDINGS, ROTARY, FINAL_NORM, LM_HEAD):
        if name == part or name.startswith(part + "."):
            return part
    raise ValueError(f"{name!r} is in no part of a LLaVA(-Next) model")


def other_parameters_by_module(shape: LlavaShape) -> dict[str, int]:
    """Parameters outside the linear layers, by part: embeddings, norms, the patch convolution, ``image_newline``."""
    d, h = shape.vision_hidden, shape.text_hidden
    vision = d + shape.channels * shape.patch_size**2 * d + (shape.patch_tokens + 1) * d  # CLS, conv, positions
    # Two LayerNorms a layer, and pre_layrnorm and post_layernorm (LLaVA reads a state before the latter).
    vision += (2 * shape.vision_layers + 2) * 2 * d
    parts = {VISION: vision, EMBEDDINGS: shape.vocab * h, FINAL_NORM: h}
    parts.update({LAYER.format(i): 2 * h for i in range(shape.text_layers)})  # two RMSNorms a layer
    if shape.has_image_newline:
        parts[NEWLINE] = h
    return parts


def other_parameters(shape: LlavaShape) -> int:
    """Parameters outside the linear layers: embeddings, norms, the patch convolution, ``image_newline``."""
    return sum(other_parameters_by_module(shape).values())


def buffer_bytes_by_module(shape: LlavaShape) -> dict[str, int]:
    """The model's buffers: CLIP's position ids (int64) and the rotary frequencies (float32, kept twice)."""
    return {VISION: (shape.patch_tokens + 1) * 8, ROTARY: 2 * (shape.head_dim // 2) * FLOAT32_BYTES}


def buffer_bytes(shape: LlavaShape) -> int:
    return sum(buffer_bytes_by_module(shape).values())


def _check_counted_exactly(shape: LlavaShape) -> None:
    if not shape.counted_exactly:
        raise ValueError(
            f"weights are counted from the config for LLaVA(-Next) with a CLIP tower and a llama, mistral or "
            f"qwen2 text model, not {shape.architecture}: load the model and measure it (weights_bytes(model=...))"
        )


def parameter_count(config) -> int:
    """Parameters of a ``LlavaNextForConditionalGeneration`` / ``LlavaForConditionalGeneration``."""
    shape = LlavaShape.from_config(config)
    _check_counted_exactly(shape)
    return sum(layer.parameters for layer in linear_layers(shape)) + other_parameters(shape)


@dataclass(frozen=True)
class WeightBytes:
    """A model's weights on the device: what ``get_memory_footprint()`` counts (parameters and
    buffers), and the quantization state bitsandbytes keeps beside them."""

    stored_bytes: int
    quantization_state_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.stored_bytes + self.quantization_state_bytes


    def __add__(self, other: "WeightBytes") -> "WeightBytes":
        return WeightBytes(self.stored_bytes + other.stored_bytes,
                           self.quantization_state_bytes + other.quantization_state_bytes)


def count_weight_bytes_by_module(config, dtype: torch.dtype | str, quantization=None) -> dict[str, WeightBytes]:
    """:func:`count_weight_bytes` for each top-level part of the model (the vision tower, the
    projector, ``image_newline``, the embeddings, each decoder layer, the final norm, the rotary
    tables, ``lm_head``), in the model's order: what a device map places."""
    shape = LlavaShape.from_config(config)
    _check_counted_exactly(shape)
    quant, e = Quantization.parse(quantization), dtype_bytes(dtype)
    other, buffers = other_parameters_by_module(shape), buffer_bytes_by_module(shape)
    layers = [LAYER.format(i) for i in range(shape.text_layers)]
    order = [VISION, PROJECTOR, *([NEWLINE] if shape.has_image_newline else []), EMBEDDINGS, ROTARY, *layers,
             FINAL_NORM, *([] if shape.tied_embeddings else [LM_HEAD])]
    parts = {part: WeightBytes(other.get(part, 0) * e + buffers.get(part, 0)) for part in order}
    for layer in linear_layers(shape):
        part = module_of(layer.name)
        if quant is None or not quant.converts(layer.name):
            parts[part] += WeightBytes(layer.parameters * e)
        else:
            bias = layer.outputs * e if layer.bias else 0
            stored = quant.weight_bytes(layer.inputs, layer.outputs) + bias
            parts[part] += WeightBytes(stored, quant.state_bytes(layer.inputs, layer.outputs))
    return parts


def count_weight_bytes(config, dtype: torch.dtype | str, quantization=None) -> WeightBytes:
    """The weights of ``config`` loaded in ``dtype`` (the dtype passed to ``from_pretrained``), quantized
    as ``quantization`` says (``None``, ``"8bit"``, ``"4bit"``, a :class:`Quantization` or a
    ``BitsAndBytesConfig``)."""
    return sum(count_weight_bytes_by_module(config, dtype, quantization).values(), WeightBytes(0))


# ---------------------------------------------------------------------------
# Measuring a loaded model
# ---------------------------------------------------------------------------


def _quantization_state_tensors(model: torch.nn.Module):
    """bitsandbytes' state beside each quantized weight: 8-bit row scales, 4-bit absmax and codes."""
    for parameter in model.parameters():
        scales = getattr(parameter, "SCB", None)
        if isinstance(scales, torch.Tensor):
            yield scales
        state = getattr(parameter, "quant_state", None)
        while state is not None:  # the 4-bit state, then double quantization's nested one
            for name in ("absmax", "code", "offset"):
                tensor = getattr(state, name, None)
                if isinstance(tensor, torch.Tensor):
                    yield tensor
            state = getattr(state, "state2", None)


def measure_weight_bytes(model: torch.nn.Module) -> WeightBytes:
    """What a loaded model holds: parameters and buffers at their own dtypes, and bitsandbytes' state
    (each tensor once: several layers may share one code table)."""
    stored = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    seen, state = set(), 0
    for tensor in _quantization_state_tensors(model):
        key = (tensor.device, tensor.data_ptr())
        if key not in seen:
            seen.add(key)
            state += tensor.numel() * tensor.element_size()
    return WeightBytes(stored, state)


def weights_bytes(config, dtype: torch.dtype | str, model: torch.nn.Module | None = None, quantization=None) -> int:
    """Bytes of the model's weights on the device: measured from ``model`` if given, else counted from ``config``."""
    if model is not None:
        return measure_weight_bytes(model).total_bytes
    return count_weight_bytes(config, dtype, quantization).total_bytes
