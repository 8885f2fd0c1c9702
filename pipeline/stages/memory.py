"""How many items fit on the GPU at once, and what to do when the answer was wrong.

HiRED fixes each image's visual-token count before the LLM sees it, so the
length of every sequence is known before it reaches the GPU, and so is the
memory it needs. This module turns a LLaVA-Next / LLaVA config and a dtype into
bytes, and bytes into micro-batches:

* weights: every parameter of the vision tower, projector and LLM (or what a
  loaded model actually holds);
* per item, three parts that grow with the batch (:class:`MemoryModel`):
  - the KV cache for the prompt plus ``max_new_tokens``;
  - prefill: the peak working set of one decoder layer over the whole prompt,
    plus what lives for the whole forward (input embeddings, rotary tables,
    the causal mask, the last position's logits);
  - vision: the peak of one CLIP layer over all the item's partitions (with the
    states HiRED's hooks keep), or of the projector with the kept features;
* a margin (:class:`Margin`): a fixed part (CUDA context, cuBLAS workspaces)
  and a fraction of the free memory (the caching allocator's fragmentation).

:class:`BatchSizer` is what a generation actor runs: it cuts each call's items,
longest prompt first, into micro-batches that fit the free memory, and raises
its estimates when a measured peak shows they fell short.

The working sets are counted from what transformers' modules allocate in a
forward pass (``LlamaDecoderLayer`` with ``LlamaRMSNorm``, ``apply_rotary_pos_emb``
and ``sdpa_attention_forward``; ``DynamicCache`` for the KV cache;
``CLIPEncoderLayer``; ``generate``'s ``logits_to_keep=1``). tests/test_memory.py
checks them against the allocations the torch profiler records on CPU with the
installed transformers, so a release that allocates differently fails there,
not on a GPU. CUDA kernels add little of their own: SDPA runs flash or
memory-efficient kernels, which never build the attention matrix.

The last part is :func:`run_with_oom_backoff`: should a batch still run out of
memory, it is split in halves until it fits, later batches are made smaller,
and an item that does not fit alone becomes an error result. No item is lost.

Everything here is plain Python and torch; nothing imports Ray.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from hired.config import NO_DROPPING, HiREDConfig

if TYPE_CHECKING:
    from hired.prepare import ItemLengths

GiB = 1 << 30
FLOAT32_BYTES = 4


def dtype_bytes(dtype: torch.dtype | str) -> int:
    """Bytes per element of ``dtype`` (``torch.float16`` or ``"float16"``)."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    return dtype.itemsize


# ---------------------------------------------------------------------------
# The model's shape, read from its config
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LlavaShape:
    """The sizes of a LLaVA-Next / LLaVA model that decide its memory, read from its config."""

    # Vision tower (CLIP ViT)
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    image_size: int
    patch_size: int
    channels: int
    feature_layers: int  # hidden states concatenated into the features (vision_feature_layer may be a list)
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
    attention_bias: bool
    mlp_bias: bool
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config) -> "LlavaShape":
        vision, text = config.vision_config, config.text_config
        heads = text.num_attention_heads
        feature_layer = config.vision_feature_layer
        return cls(
            vision_hidden=vision.hidden_size,
            vision_intermediate=vision.intermediate_size,
            vision_layers=vision.num_hidden_layers,
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            channels=getattr(vision, "num_channels", 3),
            feature_layers=1 if isinstance(feature_layer, int) else len(feature_layer),
            projector_bias=getattr(config, "multimodal_projector_bias", True),
            has_image_newline=hasattr(config, "image_grid_pinpoints"),
            grid_pinpoints=tuple(tuple(p) for p in getattr(config, "image_grid_pinpoints", None) or ()),
            text_hidden=text.hidden_size,
            text_intermediate=text.intermediate_size,
            text_layers=text.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            vocab=text.vocab_size,
            attention_bias=bool(getattr(text, "attention_bias", False)),
            mlp_bias=bool(getattr(text, "mlp_bias", False)),
            # transformers 5 ties lm_head to the embeddings by the top-level config's flag.
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )

    @property
    def patch_tokens(self) -> int:
        """Patch tokens a partition gives (576 for CLIP-L/14 at 336 px), CLS not counted."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def vision_feature_width(self) -> int:
        """Width of the features the projector takes: one CLIP width per feature layer."""
        return self.vision_hidden * self.feature_layers


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------


def _linear_parameters(inputs: int, outputs: int, bias: bool) -> int:
    return inputs * outputs + (outputs if bias else 0)


def vision_parameters(shape: LlavaShape) -> int:
    """Parameters of a CLIP vision tower (``CLIPVisionModel``)."""
    d, inner = shape.vision_hidden, shape.vision_intermediate
    embeddings = d + shape.channels * shape.patch_size**2 * d + (shape.patch_tokens + 1) * d  # CLS, conv, positions
    layer_norm = 2 * d
    attention = 4 * _linear_parameters(d, d, bias=True)
    mlp = _linear_parameters(d, inner, bias=True) + _linear_parameters(inner, d, bias=True)
    layer = attention + mlp + 2 * layer_norm
    # pre_layrnorm and post_layernorm both exist, though LLaVA reads a state before the latter.
    return embeddings + 2 * layer_norm + shape.vision_layers * layer


def projector_parameters(shape: LlavaShape) -> int:
    """Parameters of the two-layer MLP projector, plus LLaVA-Next's ``image_newline``."""
    linear_1 = _linear_parameters(shape.vision_feature_width, shape.text_hidden, shape.projector_bias)
    linear_2 = _linear_parameters(shape.text_hidden, shape.text_hidden, shape.projector_bias)
    return linear_1 + linear_2 + (shape.text_hidden if shape.has_image_newline else 0)


def text_parameters(shape: LlavaShape) -> int:
    """Parameters of a Llama-style LLM with its embeddings and ``lm_head``."""
    d = shape.text_hidden
    q_width, kv_width = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    attention = (
        _linear_parameters(d, q_width, shape.attention_bias)
        + 2 * _linear_parameters(d, kv_width, shape.attention_bias)
        + _linear_parameters(q_width, d, shape.attention_bias)
    )
    mlp = 2 * _linear_parameters(d, shape.text_intermediate, shape.mlp_bias) + _linear_parameters(
        shape.text_intermediate, d, shape.mlp_bias
    )
    layer = attention + mlp + 2 * d  # two RMSNorm weights
    embeddings = shape.vocab * d
    lm_head = 0 if shape.tied_embeddings else shape.vocab * d
    return embeddings + shape.text_layers * layer + d + lm_head  # + d: the final norm


def parameter_count(config) -> int:
    """Parameters of a ``LlavaNextForConditionalGeneration`` / ``LlavaForConditionalGeneration``.

    Exact for CLIP vision towers and Llama-style LLMs (Vicuna, Mistral, Llama 3,
    Yi); for other LLMs measure a loaded model with :func:`weights_bytes`.
    """
    shape = LlavaShape.from_config(config)
    return vision_parameters(shape) + projector_parameters(shape) + text_parameters(shape)


def weights_bytes(config, dtype: torch.dtype | str, model: torch.nn.Module | None = None) -> int:
    """Bytes of the model's weights: measured from ``model`` if given, else computed from ``config``.

    A loaded model is measured as it is (parameters and buffers at their own
    dtypes), so quantised or partly-cast models are counted right.
    """
    if model is not None:
        tensors = [*model.parameters(), *model.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)
    return parameter_count(config) * dtype_bytes(dtype)


# ---------------------------------------------------------------------------
# Per-item memory
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemBytes:
    """Device memory one item adds to a batch, by what holds it.

    The vision phase ends before the LLM starts, so adding it to KV and prefill
    over-counts the strict peak; we keep it in because blocks the caching
    allocator cached during the vision phase are not always reusable for the
    growing KV cache, and it is a small share. The decode step's own working set
    (one token's activations, and ``torch.cat``'s copy of one layer's cache as
    the cache grows) is far smaller than prefill's, so the sum covers it too.
    """

    kv_cache_bytes: int
    prefill_bytes: int
    vision_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.kv_cache_bytes + self.prefill_bytes + self.vision_bytes

    def describe(self) -> str:
        return (
            f"{self.total_bytes / GiB:.2f} GiB per item (KV {self.kv_cache_bytes / GiB:.2f}, "
            f"prefill {self.prefill_bytes / GiB:.2f}, vision {self.vision_bytes / GiB:.2f})"
        )


@dataclass(frozen=True)
class ImageTokens:
    """What one image costs the model: partitions through the tower, visual tokens into the LLM."""

    partitions: int  # views the vision tower encodes (LLaVA-Next: full view + sub-images)
    grid_tokens: int  # N: the stock model's grid tokens
    visual_tokens_llm: int  # tokens the LLM sees for the image: kept grid tokens + newlines


# HiRED's hooks keep the query and key projections of two CLIP layers (its initial and
# final layers) until the tower has run; see hired/vision.py.
HIRED_CAPTURED_PROJECTIONS = 2 * 2


class MemoryModel:
    """Memory of LLaVA-Next / LLaVA generation with HiRED, from a transformers config and a dtype.

    ``dtype`` is what the model computes in (``torch.float16``, ``torch.bfloat16``).
    ``model``, if given, is measured for the weights instead of counting them
    from the config. ``last_logits_only=True`` matches transformers 5's
    ``generate``, which asks the model for the last position's logits only;
    set it to ``False`` for a model that computes logits for every position.

    In the comments below, B is the batch, L the prompt length in tokens, P an
    item's partitions (views through the vision tower); the bytes in brackets
    are LLaVA-Next-7B's in float16 (Vicuna-7B: hidden 4096, 32 heads of 128,
    32 KV heads, MLP 11008, vocabulary 32064; CLIP ViT-L/14-336: hidden 1024,
    MLP 4096, 577 positions a partition).
    """

    def __init__(
        self,
        config,
        dtype: torch.dtype | str,
        model: torch.nn.Module | None = None,
        last_logits_only: bool = True,
    ):
        self.config = config
        self.shape = LlavaShape.from_config(config)
        self.element_bytes = dtype_bytes(dtype)
        self.weights_bytes = weights_bytes(config, dtype, model)
        # generate() passes logits_to_keep=1 to models that accept it (LLaVA and LLaVA-Next
        # do), and their forward slices the hidden states to that last position before
        # lm_head: prefill materialises logits of (B, 1, vocab), not (B, L, vocab).
        self.last_logits_only = last_logits_only

    # --- KV cache -----------------------------------------------------------------

    @property
    def kv_cache_bytes_per_token(self) -> int:
        """Keys and values of every decoder layer for one token [512 KiB].

        ``DynamicCache`` holds, per layer, keys and values of (B, kv_heads, tokens, head_dim).
        """
        s = self.shape
        return 2 * s.text_layers * s.kv_heads * s.head_dim * self.element_bytes

    def kv_cache_bytes(self, sequence_tokens: int) -> int:
        return sequence_tokens * self.kv_cache_bytes_per_token

    # --- Prefill -------------------------------------------------------------------

    def decoder_layer_bytes_per_token(self) -> int:
        """Peak working set of one Llama decoder layer per prompt token, KV cache not included [80.5 KiB].

        The layer's input (the residual) lives throughout; on top of it, the
        largest of the layer's phases (norm, rotary, attention, MLP), counted
        from what ``LlamaDecoderLayer`` and the functions it calls allocate.
        Each figure is one token's row of a (B, L, ...) or (B, heads, L, head_dim)
        tensor.
        """
        s, e = self.shape, self.element_bytes
        hidden = s.text_hidden * e  # a (B, L, hidden) state [8 KiB]
        q = s.heads * s.head_dim * e  # queries, (B, heads, L, head_dim) [8 KiB]
        kv = s.kv_heads * s.head_dim * e  # keys or values, (B, kv_heads, L, head_dim) [8 KiB]
        intermediate = s.text_intermediate * e  # an MLP state, (B, L, intermediate) [21.5 KiB]
        # LlamaRMSNorm computes in float32: the upcast input and its normalised product live at
        # once beside the residual [40 KiB].
        norm = hidden + 2 * s.text_hidden * FLOAT32_BYTES
        # Residual, normed input, q/k/v, and apply_rotary_pos_emb's temporaries: while it rotates q,
        # q*cos, rotate_half(q) and its product with sin; while it rotates k, the rotated q and three
        # for k [72 KiB].
        rotary = 2 * hidden + q + 2 * kv + max(3 * q, q + 3 * kv)
        # With a padding mask, sdpa_attention_forward repeats k/v to all heads (repeat_kv, for GQA);
        # SDPA's (B, heads, L, head_dim) output is then transposed and made contiguous. The kernel
        # itself never builds the (L, L) attention matrix [56 KiB].
        repeated_kv = 2 * q if s.kv_heads < s.heads else 0
        attention = 2 * hidden + q + 2 * kv + repeated_kv + 2 * q
        # Gated MLP: act(gate_proj(x)), up_proj(x) and their product coexist [80.5 KiB].
        mlp = 2 * hidden + 3 * intermediate
        return max(norm, rotary, attention, mlp)

    def prefill_bytes_per_token(self) -> int:
        """Per prompt token: the peak layer, the input embeddings and the rotary cos/sin tables [89 KiB]."""
        s, e = self.shape, self.element_bytes
        inputs_embeds = s.text_hidden * e  # (B, L, hidden), held by the model's forward throughout
        rotary_tables = 2 * s.head_dim * e  # cos and sin, (B, L, head_dim) each
        return inputs_embeds + rotary_tables + self.decoder_layer_bytes_per_token()

    def logits_bytes(self, prompt_tokens: int) -> int:
        """Prefill's logits, and the float32 copy and scores ``generate`` makes of the last row."""
        s, e = self.shape, self.element_bytes
        positions = 1 if self.last_logits_only else prompt_tokens
        return positions * s.vocab * e + 2 * s.vocab * FLOAT32_BYTES

    def prefill_bytes(self, prompt_tokens: int) -> int:
        """Activations of the prompt's forward pass (the KV cache is counted apart)."""
        # A left-padded batch gets a (B, 1, L, L) boolean causal mask, which SDPA turns into an additive
        # mask in the model's dtype: quadratic in L, but a few MB at LLaVA-Next's lengths.
        mask = prompt_tokens**2 * (1 + self.element_bytes)
        return prompt_tokens * self.prefill_bytes_per_token() + mask + self.logits_bytes(prompt_tokens)

    # --- Vision --------------------------------------------------------------------

    def vision_layer_bytes_per_token(self) -> int:
        """Peak of one CLIP encoder layer per token, with the states kept across layers [40 KiB].

        The tower runs all an item's partitions as one (P, 577, hidden) batch; each
        figure is one position's row.
        """
        s, e = self.shape, self.element_bytes
        hidden = s.vision_hidden * e  # a (P, 577, hidden) state [2 KiB]
        # Kept until the tower has run: the feature layer's state(s), HiRED's captured q/k
        # projections, and the encoder's input, which CLIPVisionTransformer.forward still
        # references [12 KiB].
        kept_states = (s.feature_layers + HIRED_CAPTURED_PROJECTIONS + 1) * hidden
        # Residual, normed input, q/k/v, SDPA's output and the out-projection [14 KiB].
        attention = 2 * hidden + 3 * hidden + 2 * hidden
        # Residual, normed input, fc1's (P, 577, intermediate) output, and quick_gelu's
        # x * sigmoid(1.702 * x): two more of that size at once [28 KiB].
        mlp = 2 * hidden + 3 * s.vision_intermediate * e
        return kept_states + max(attention, mlp)

    def pixel_bytes_per_partition(self) -> int:
        """One partition's pixel values, (3, 336, 336) in the model's dtype [661.5 KiB]."""
        s = self.shape
        return s.channels * s.image_size**2 * self.element_bytes

    def vision_tower_bytes(self, partitions: int) -> int:
        """Peak of the tower over an item's partitions (they all run in one forward) [115.9 MiB for 5]."""
        tokens = self.shape.patch_tokens + 1  # + CLS
        return partitions * (self.pixel_bytes_per_partition() + tokens * self.vision_layer_bytes_per_token())

    def projector_bytes(self, partitions: int, visual_tokens_llm: int) -> int:
        """Peak while the kept features are projected into the LLM's embedding space."""
        s, e = self.shape, self.element_bytes
        tokens = s.patch_tokens + 1
        pixels = partitions * self.pixel_bytes_per_partition()  # prepare_inputs still holds them
        feature_states = partitions * tokens * s.vision_feature_width * e  # (P, 577, hidden x feature layers)
        gathered = visual_tokens_llm * s.vision_feature_width * e  # the kept tokens' features
        projector_hidden = 2 * visual_tokens_llm * s.text_hidden * e  # linear_1's output and its activation
        kept_features = 2 * visual_tokens_llm * s.text_hidden * e  # per-item results and their concatenation
        return pixels + feature_states + gathered + projector_hidden + kept_features

    def vision_bytes(self, partitions: int, visual_tokens_llm: int) -> int:
        """The vision phase's peak for one item: the tower's or the projector's, whichever is larger."""
        return max(self.vision_tower_bytes(partitions), self.projector_bytes(partitions, visual_tokens_llm))

    # --- One item ------------------------------------------------------------------

    def item_bytes(
        self, prompt_tokens: int, max_new_tokens: int, partitions: int, visual_tokens_llm: int
    ) -> ItemBytes:
        """Memory one item adds to a batch.

        ``prompt_tokens`` is the LLM's input length (text + visual tokens + newlines,
        ``PreparedInputs.prompt_tokens``); a left-padded batch pads every item to
        its longest, so pass that. ``partitions`` are the views the tower encodes
        for the image, ``visual_tokens_llm`` the visual tokens the LLM gets.
        """
        return ItemBytes(
            kv_cache_bytes=self.kv_cache_bytes(prompt_tokens + max_new_tokens),
            prefill_bytes=self.prefill_bytes(prompt_tokens),
            vision_bytes=self.vision_bytes(partitions, visual_tokens_llm),
        )

    def largest_image(self, hired_config: HiREDConfig | None) -> ImageTokens:
        """The costliest image the model can be given, under ``hired_config`` (None: keep every token).

        For LLaVA-Next it is an image with the aspect ratio of a grid pinpoint,
        which loses no sub-image token to unpadding; partitions and LLM tokens
        are maximised separately, which can only over-count.
        """
        config = hired_config or NO_DROPPING
        side = self.shape.image_size // self.shape.patch_size
        if not self.shape.grid_pinpoints:  # LLaVA-1.5: one view, no newlines
            grid = side * side
            return ImageTokens(partitions=1, grid_tokens=grid, visual_tokens_llm=config.tokens_to_keep(grid))
        candidates = []
        for height, width in self.shape.grid_pinpoints:
            rows, cols = height // self.shape.image_size, width // self.shape.image_size
            grid = side * side * (1 + rows * cols)
            newlines = 0 if config.newlines == "none" else rows * side
            candidates.append(ImageTokens(1 + rows * cols, grid, config.tokens_to_keep(grid) + newlines))
        return ImageTokens(
            partitions=max(c.partitions for c in candidates),
            grid_tokens=max(c.grid_tokens for c in candidates),
            visual_tokens_llm=max(c.visual_tokens_llm for c in candidates),
        )

    def worst_case_item_bytes(
        self, hired_config: HiREDConfig | None, text_tokens: int, max_new_tokens: int
    ) -> ItemBytes:
        """Per-item memory for the costliest image with a prompt of ``text_tokens`` text tokens."""
        image = self.largest_image(hired_config)
        return self.item_bytes(
            prompt_tokens=text_tokens + image.visual_tokens_llm,
            max_new_tokens=max_new_tokens,
            partitions=image.partitions,
            visual_tokens_llm=image.visual_tokens_llm,
        )


# ---------------------------------------------------------------------------
# The margin
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Margin:
    """Memory held back from batch sizing.

    ``fixed_bytes`` covers what the allocator does not see or cannot size by
    item: the CUDA context (a few hundred MiB, outside PyTorch's allocator, so
    it counts against a ``gpu_memory_gb`` cap only through this margin), cuBLAS
    workspaces, lazily loaded kernels. ``fraction`` of the free memory covers
    the caching allocator's fragmentation: the KV cache grows by ``torch.cat``
    into a new, slightly larger block every step.
    """

    fraction: float = 0.10
    fixed_bytes: int = 1 * GiB

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"margin fraction must be in [0, 1), got {self.fraction}")
        if self.fixed_bytes < 0:
            raise ValueError(f"margin fixed_bytes must be >= 0, got {self.fixed_bytes}")

    def reserve_bytes(self, free_bytes: int) -> int:
        return self.fixed_bytes + math.ceil(self.fraction * free_bytes)


# ---------------------------------------------------------------------------
# Device memory
# ---------------------------------------------------------------------------


def _cuda_device(device) -> torch.device:
    device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"expected a CUDA device, got {device}")
    return device


def free_device_bytes(
    device: torch.device | int | str | None = None, gpu_memory_gb: float | None = None
) -> int | None:
    """Bytes this process can still allocate on the CUDA ``device``; ``None`` without CUDA.

    The device's free memory (other processes' use already taken out) plus the
    blocks PyTorch's caching allocator holds but is not using, capped by the
    per-process memory fraction if one is set (:func:`apply_memory_cap`) and by
    ``gpu_memory_gb`` GiB for this process in all if given.

    We ask CUDA through torch rather than NVML: NVML numbers GPUs physically and
    ignores ``CUDA_VISIBLE_DEVICES``, which Ray sets per actor, so NVML's
    device 0 is not necessarily this actor's GPU.
    """
    if not torch.cuda.is_available():
        return None
    device = _cuda_device(device)
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    cached_unused = torch.cuda.memory_reserved(device) - allocated
    available = free + cached_unused
    get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # torch >= 2.6
    fraction = get_fraction(device) if get_fraction else 1.0
    limits = [int(fraction * total)] if fraction < 1.0 else []
    if gpu_memory_gb is not None:
        limits.append(_cap_bytes(gpu_memory_gb))
    for limit in limits:
        available = min(available, limit - allocated)
    return max(0, available)


def _cap_bytes(gpu_memory_gb: float) -> int:
    if gpu_memory_gb <= 0:
        raise ValueError(f"gpu_memory_gb must be positive, got {gpu_memory_gb}")
    return int(gpu_memory_gb * GiB)


def apply_memory_cap(gpu_memory_gb: float | None, device: torch.device | int | str | None = None) -> int | None:
    """Make a large GPU behave like a ``gpu_memory_gb`` GiB card for this process; returns the free bytes.

    Sets ``torch.cuda.set_per_process_memory_fraction`` so PyTorch's allocator
    refuses to hold more than ``gpu_memory_gb`` GiB, and returns
    :func:`free_device_bytes` under that cap (call it before loading the model
    and subtract :func:`weights_bytes`, or after and use it as is). Give the
    memory a real card exposes (a T4 about 15 GiB, an A10G about 22 GiB); the
    CUDA context lies outside the allocator and is left to :class:`Margin`.
    ``None`` sets no cap. Returns ``None`` without CUDA.
    """
    if not torch.cuda.is_available():
        return None
    device = _cuda_device(device)
    if gpu_memory_gb is not None:
        _, total = torch.cuda.mem_get_info(device)
        torch.cuda.set_per_process_memory_fraction(min(1.0, _cap_bytes(gpu_memory_gb) / total), device)
    return free_device_bytes(device)


def release_device_memory() -> None:
    """Free what an aborted batch left behind: unreachable tensors, then the allocator's cached blocks."""
    gc.collect()  # tensors held in reference cycles (e.g. by a traceback's frames)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------
# OOM back-off
# ---------------------------------------------------------------------------


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device out-of-memory error."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    # Older paths raise a bare RuntimeError ("CUDA error: out of memory", cuDNN/cuBLAS allocation failures).
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


@dataclass
class AdaptiveBatchSize:
    """The batch size for the next batch: lowered by OOM back-off, never raised."""

    batch_size: int
    out_of_memory_errors: int = 0
    failed_items: int = 0  # items that ran out of memory alone and became errors
    history: list[str] = field(default_factory=list)  # one line per lowering, for the log

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def lower_to(self, size: int, reason: str) -> None:
        size = max(1, size)
        if size < self.batch_size:
            self.history.append(f"batch size {self.batch_size} -> {size}: {reason}")
            self.batch_size = size


def _out_of_memory_reason(run_batch, chunk: list, is_oom) -> tuple[list | None, str | None]:
    """Run ``chunk``; its results, or the reason it ran out of memory. Other errors propagate.

    Only the message leaves this function: the exception's traceback holds the
    frames of the failed forward, and with them the tensors we want freed.
    """
    try:
        results = list(run_batch(chunk))
    except Exception as error:
        if not is_oom(error):
            raise
        return None, f"{type(error).__name__}: {error}"
    if len(results) != len(chunk):
        raise ValueError(f"run_batch returned {len(results)} results for {len(chunk)} items")
    return results, None


def _run_halving(chunk: list, run_batch, make_error, is_oom, free_memory, state: AdaptiveBatchSize):
    """Results for ``chunk`` in order, splitting on OOM; and the largest part size that ran (0: none)."""
    results, reason = _out_of_memory_reason(run_batch, chunk, is_oom)
    if reason is None:
        return results, len(chunk)
    state.out_of_memory_errors += 1
    free_memory()
    if len(chunk) == 1:
        state.failed_items += 1
        return [make_error(chunk[0], f"out of memory: the item alone in its batch ({reason})")], 0
    middle = (len(chunk) + 1) // 2
    first, first_ran = _run_halving(chunk[:middle], run_batch, make_error, is_oom, free_memory, state)
    second, second_ran = _run_halving(chunk[middle:], run_batch, make_error, is_oom, free_memory, state)
    return first + second, max(first_ran, second_ran)


def run_with_oom_backoff(
    items: Sequence,
    run_batch: Callable[[list], Sequence],
    batch_size: int | AdaptiveBatchSize,
    make_error: Callable[[object, str], object],
    is_oom: Callable[[BaseException], bool] = is_out_of_memory,
    free_memory: Callable[[], None] = release_device_memory,
) -> list:
    """``run_batch`` over ``items`` in batches, backing off on out-of-memory errors; one result per item, in order.

    ``run_batch(list_of_items)`` returns one result per item, in order. When it
    runs out of memory, memory is freed and the batch is run again as two
    halves, recursively; an item that runs out of memory alone becomes
    ``make_error(item, reason)``. Later batches use the largest size that ran
    within the failed batch (half its size if none did), kept in
    ``batch_size`` when it is an :class:`AdaptiveBatchSize`: pass one object for
    the life of a GPU actor so that what was learnt carries over. Any other
    exception propagates (the caller handles its rows).
    """
    state = batch_size if isinstance(batch_size, AdaptiveBatchSize) else AdaptiveBatchSize(int(batch_size))
    items = list(items)
    results: list = []
    start = 0
    while start < len(items):
        chunk = items[start : start + state.batch_size]
        start += len(chunk)
        chunk_results, largest_ran = _run_halving(chunk, run_batch, make_error, is_oom, free_memory, state)
        results.extend(chunk_results)
        if largest_ran < len(chunk):
            fallback = largest_ran or len(chunk) // 2
            state.lower_to(fallback, f"out of memory on a batch of {len(chunk)}")
    return results


# ---------------------------------------------------------------------------
# Micro-batches: what a generation actor runs
# ---------------------------------------------------------------------------

CPU_BATCH_SIZE = 4  # no device memory to size by: small batches keep latency per item sane
# Sizing by memory, a ceiling only (the memory decides): in the job each call holds one Ray Data
# batch, fewer rows than this; it bounds what direct callers (benchmarks, notebooks) get at once.
MAX_BATCH_SIZE = 256


class BatchSizer:
    """A generation actor's micro-batches: as many items as fit, corrected by measured peaks.

    Build one per actor once the model is loaded. ``free_bytes`` is what the
    process can still allocate (:func:`free_device_bytes`); the :class:`Margin`
    is held back from it. With ``free_bytes=None`` (no GPU) or a
    ``fixed_batch_size`` there is no sizing: items are cut into batches of that
    size (:data:`CPU_BATCH_SIZE` on CPU).

    ``sizes`` is the OOM back-off's state: pass it to :func:`run_with_oom_backoff`
    so that what an out-of-memory error teaches lowers later micro-batches too.
    ``correction`` (measured / predicted, never below 1) is what measured peaks
    taught; it scales every estimate.
    """

    def __init__(
        self,
        memory: MemoryModel,
        max_new_tokens: int,
        free_bytes: int | None,
        margin: Margin = Margin(),
        fixed_batch_size: int | None = None,
    ):
        self.memory = memory
        self.max_new_tokens = max_new_tokens
        self.free_bytes = free_bytes
        self.margin = margin
        self.sizing = free_bytes is not None and fixed_batch_size is None
        self.fixed_by_caller = fixed_batch_size is not None
        self.correction = 1.0
        self.sizes = AdaptiveBatchSize(MAX_BATCH_SIZE if self.sizing else fixed_batch_size or CPU_BATCH_SIZE)

    @property
    def usable_bytes(self) -> int:
        """The free memory less the margin: what micro-batches may fill."""
        return max(0, self.free_bytes - self.margin.reserve_bytes(self.free_bytes))

    def padded_item_bytes(self, lengths: Sequence[ItemLengths]) -> ItemBytes:
        """One item's memory in a batch of these items, before correction: each is padded to the
        longest prompt and costed with the most partitions and visual tokens among them (an upper bound)."""
        return self.memory.item_bytes(
            prompt_tokens=max(x.prompt_tokens for x in lengths),
            max_new_tokens=self.max_new_tokens,
            partitions=max(x.partitions for x in lengths),
            visual_tokens_llm=max(x.visual_tokens_llm for x in lengths),
        )

    def corrected_bytes(self, item: ItemBytes) -> int:
        """``item``'s bytes scaled by what measured peaks taught."""
        return math.ceil(item.total_bytes * self.correction)

    def batch_bytes(self, lengths: Sequence[ItemLengths]) -> int:
        """Predicted memory of these items as one batch."""
        return len(lengths) * self.corrected_bytes(self.padded_item_bytes(lengths))

    def fits(self, item: ItemBytes) -> int:
        """How many items of this size fit together (0: not even one)."""
        return self.usable_bytes // self.corrected_bytes(item)

    def micro_batches(self, lengths: Sequence[ItemLengths]) -> list[list[int]]:
        """Indices of the items, longest prompt first, cut into batches that fit.

        A left-padded batch costs its size times its longest member, which comes
        first, so each batch takes as many items as fit at that length (at most
        ``sizes.batch_size``, which OOM back-off may have lowered). An item too
        large even alone still gets a batch of its own: OOM back-off makes it an
        error row rather than losing it here.
        """
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i].prompt_tokens)
        batches, start = [], 0
        while start < len(order):
            size = min(self.sizes.batch_size, len(order) - start)
            if self.sizing:
                usable = self.usable_bytes
                while size > 1 and self.batch_bytes([lengths[i] for i in order[start : start + size]]) > usable:
                    size -= 1
            batches.append(order[start : start + size])
            start += size
        return batches

    def learn_from_peak(self, lengths: Sequence[ItemLengths], peak_bytes: int, baseline_bytes: int) -> str | None:
        """Raise the estimates when a batch used more than predicted; returns the log line if it did.

        ``baseline_bytes`` is ``torch.cuda.memory_allocated()`` before the batch
        (the weights and whatever else stays), ``peak_bytes``
        ``torch.cuda.max_memory_allocated()`` after it, its peak statistics reset
        before it. Never lowered: a batch that stopped early at EOS did not grow
        its KV cache to full length, so a smaller measurement proves nothing.
        """
        if not self.sizing:
            return None
        predicted = self.batch_bytes(lengths)
        measured = peak_bytes - baseline_bytes
        if measured <= predicted:
            return None
        self.correction *= measured / predicted
        return (
            f"a batch of {len(lengths)} used {measured / GiB:.2f} GiB, {100 * (measured / predicted - 1):.0f}% over "
            f"the {predicted / GiB:.2f} GiB predicted: estimates raised by that much"
        )

    def describe(self, item: ItemBytes | None) -> str:
        """A log line: how batches are sized and, when sizing, how many of ``item`` (say, the costliest) fit."""
        if not self.sizing:
            reason = "fixed by the caller" if self.fixed_by_caller else "CPU default: no device memory figure"
            return f"batch size {self.sizes.batch_size} ({reason})"
        fits = self.fits(item)
        return (
            f"batch sizing: {self.free_bytes / GiB:.2f} GiB free after weights, {self.usable_bytes / GiB:.2f} GiB "
            f"usable ({self.margin.fixed_bytes / GiB:.2f} GiB + {self.margin.fraction:.0%} held back); "
            f"{fits} to a batch at {item.describe()}" + ("" if fits else ": such items would be out-of-memory error rows")
        )
