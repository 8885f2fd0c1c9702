"""Device memory one item needs in a batch: the KV cache, prefill's working set, the vision phase.

HiRED fixes each image's visual-token count before the LLM sees it, so the length of every
sequence is known before it reaches the GPU, and so is the memory it needs:

* the KV cache for the prompt plus ``max_new_tokens``;
* prefill: the peak working set of one decoder layer over the whole prompt, plus what lives
  for the whole forward (input embeddings, rotary tables, the causal mask, the last position's
  logits);
* vision: the peak of one CLIP layer over all the item's partitions (with the projections the
  strategy's hooks keep), or of the projector with the kept features.

The working sets are counted from what transformers' modules allocate in a forward pass
(``LlamaDecoderLayer`` with ``LlamaRMSNorm``, ``apply_rotary_pos_emb`` and
``sdpa_attention_forward``; ``DynamicCache`` for the KV cache; ``CLIPEncoderLayer``;
``generate``'s ``logits_to_keep=1``). tests/test_memory.py checks them against the allocations
the torch profiler records on CPU with the installed transformers, so a release that allocates
differently fails there, not on a GPU. CUDA kernels add little of their own: SDPA runs flash or
memory-efficient kernels, which never build the attention matrix.

Plain Python and torch (for dtype sizes); no CUDA, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hired import strategies
from hired.config import NO_DROPPING, HiREDConfig

from .shape import FLOAT32_BYTES, GiB, LlavaShape, dtype_bytes
from .weights import Quantization, weights_bytes


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


class MemoryModel:
    """Memory of LLaVA-Next / LLaVA generation with HiRED, from a transformers config and a dtype.

    ``dtype`` is what the model computes in (``torch.float16``, ``torch.bfloat16``).
    ``quantization`` (``None``, ``"8bit"``, ``"4bit"``, a :class:`Quantization` or a
    ``BitsAndBytesConfig``) is how its linear layers are stored, for weights counted from the
    config; ``model``, if given, is measured instead (bitsandbytes' state included).
    ``last_logits_only=True`` matches transformers 5's ``generate``, which asks the model for the
    last position's logits only; set it to ``False`` for a model that computes logits for every
    position.

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
        quantization=None,
    ):
        self.config = config
        self.shape = LlavaShape.from_config(config)
        self.element_bytes = dtype_bytes(dtype)
        self.quantization = Quantization.parse(quantization)
        self.weights_bytes = weights_bytes(config, dtype, model, self.quantization)
        # generate() passes logits_to_keep=1 to models that accept it (LLaVA and LLaVA-Next
        # do), and their forward slices the hidden states to that last position before
        # lm_head: prefill materialises logits of (B, 1, vocab), not (B, L, vocab).
        self.last_logits_only = last_logits_only

    def vision_needs(self, hired_config: HiREDConfig) -> strategies.VisionNeeds:
        """What ``hired_config``'s strategy reads from the tower when an image drops tokens, its
        layers resolved as ``hired.prepare_inputs`` resolves them."""
        s = self.shape
        initial = s.vision_layer_index(hired_config.initial_layer, "initial_layer")
        final = s.default_final_layer if hired_config.final_layer is None else hired_config.final_layer
        final = s.vision_layer_index(final, "final_layer")
        return strategies.get(hired_config.strategy).needs(initial, final)

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

    def vision_layer_bytes_per_token(self, captured_projections: int = 0) -> int:
        """Peak of one CLIP encoder layer per token, with the states kept across layers [40 KiB
        with HiRED's four captured projections].

        The tower runs all an item's partitions as one (P, 577, hidden) batch; each figure is one
        position's row. ``captured_projections`` are the q/k outputs the strategy's hooks hold
        (``VisionNeeds.captured_projections``; 0 when nothing is dropped).
        """
        s, e = self.shape, self.element_bytes
        hidden = s.vision_hidden * e  # a (P, 577, hidden) state [2 KiB]
        # Kept until the tower has run: the feature layer's state(s), the captured projections,
        # and the encoder's input, which CLIPVisionTransformer.forward still references [12 KiB].
        kept_states = (len(s.feature_layers) + captured_projections + 1) * hidden
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

    def vision_tower_bytes(self, partitions: int, captured_projections: int = 0) -> int:
        """Peak of the tower over an item's partitions (they all run in one forward) [115.9 MiB for 5, HiRED]."""
        tokens = self.shape.patch_tokens + 1  # + CLS
        per_token = self.vision_layer_bytes_per_token(captured_projections)
        return partitions * (self.pixel_bytes_per_partition() + tokens * per_token)

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

    def vision_bytes(self, partitions: int, visual_tokens_llm: int, captured_projections: int = 0) -> int:
        """The vision phase's peak for one item: the tower's or the projector's, whichever is larger."""
        tower = self.vision_tower_bytes(partitions, captured_projections)
        return max(tower, self.projector_bytes(partitions, visual_tokens_llm))

    # --- One item ------------------------------------------------------------------

    def item_bytes(
        self,
        prompt_tokens: int,
        max_new_tokens: int,
        partitions: int,
        visual_tokens_llm: int,
        captured_projections: int = 0,
    ) -> ItemBytes:
        """Memory one item adds to a batch.

        ``prompt_tokens`` is the LLM's input length (text + visual tokens + newlines,
        ``PreparedInputs.prompt_tokens``); a left-padded batch pads every item to
        its longest, so pass that. ``partitions`` are the views the tower encodes
        for the image, ``visual_tokens_llm`` the visual tokens the LLM gets,
        ``captured_projections`` what the strategy's hooks hold (:meth:`vision_needs`).
        """
        return ItemBytes(
            kv_cache_bytes=self.kv_cache_bytes(prompt_tokens + max_new_tokens),
            prefill_bytes=self.prefill_bytes(prompt_tokens),
            vision_bytes=self.vision_bytes(partitions, visual_tokens_llm, captured_projections),
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

    def image_tokens(self, image_size: tuple[int, int], hired_config: HiREDConfig | None) -> ImageTokens:
        """What a picture of ``image_size`` (height, width) costs under ``hired_config`` (None: keep
        every token): the counts ``hired.expected_lengths`` gives, from the config alone."""
        from hired.geometry import anyres_layout

        config = hired_config or NO_DROPPING
        s = self.shape
        if not s.grid_pinpoints:  # LLaVA-1.5: one view, no newlines
            return ImageTokens(1, s.patch_tokens, config.tokens_to_keep(s.patch_tokens))
        layout = anyres_layout(tuple(image_size), [list(p) for p in s.grid_pinpoints], s.image_size, s.patch_size)
        newlines = 0 if config.newlines == "none" else layout.newline_tokens
        return ImageTokens(1 + layout.num_subimages, layout.grid_tokens, config.tokens_to_keep(layout.grid_tokens) + newlines)

    def picture_item_bytes(
        self, image_size: tuple[int, int], hired_config: HiREDConfig | None, text_tokens: int, max_new_tokens: int
    ) -> ItemBytes:
        """Per-item memory for a picture of ``image_size`` with a prompt of ``text_tokens`` text tokens."""
        return self._image_item_bytes(self.image_tokens(image_size, hired_config), hired_config, text_tokens,
                                      max_new_tokens)

    def _image_item_bytes(self, image: ImageTokens, hired_config: HiREDConfig | None, text_tokens: int,
                          max_new_tokens: int) -> ItemBytes:
        config = hired_config or NO_DROPPING
        drops = config.tokens_to_keep(image.grid_tokens) < image.grid_tokens
        return self.item_bytes(
            prompt_tokens=text_tokens + image.visual_tokens_llm,
            max_new_tokens=max_new_tokens,
            partitions=image.partitions,
            visual_tokens_llm=image.visual_tokens_llm,
            captured_projections=self.vision_needs(config).captured_projections if drops else 0,
        )

    def worst_case_item_bytes(
        self, hired_config: HiREDConfig | None, text_tokens: int, max_new_tokens: int
    ) -> ItemBytes:
        """Per-item memory for the costliest image with a prompt of ``text_tokens`` text tokens,
        under ``hired_config`` (None: keep every token)."""
        return self._image_item_bytes(self.largest_image(hired_config), hired_config, text_tokens, max_new_tokens)
