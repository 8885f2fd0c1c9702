"""Batch sizing: the memory model against hand arithmetic for LLaVA-Next-7B and against the
allocations the torch profiler records, the actor's micro-batches (``BatchSizer``), and OOM back-off."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    MistralConfig,
)

from hired import HiREDConfig, ItemLengths
from pipeline.stages import memory
from pipeline.stages.memory import (
    CPU_BATCH_SIZE,
    MAX_BATCH_SIZE,
    GiB,
    AdaptiveBatchSize,
    BatchSizer,
    ItemBytes,
    Margin,
    MemoryModel,
    apply_memory_cap,
    free_device_bytes,
    is_out_of_memory,
    parameter_count,
    run_with_oom_backoff,
    weights_bytes,
)

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def llava_next_7b_config(**text_overrides) -> LlavaNextConfig:
    """llava-v1.6-vicuna-7b's architecture, built locally."""
    text = dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        max_position_embeddings=4096,
    )
    text.update(text_overrides)
    return LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
        ),
        text_config=LlamaConfig(**text),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-2,
    )


def meta_parameter_count(model_class, config) -> int:
    with torch.device("meta"):
        model = model_class(config)
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------
# LLaVA-Next-7B, by hand
# ---------------------------------------------------------------------------

FP16 = 2
F32 = 4

# Parameters. CLIP ViT-L/14 at 336 px: 24 x 24 = 576 patches + CLS = 577 positions.
CLIP_LAYER = (
    4 * (1024 * 1024 + 1024)  # q, k, v, out projections with biases
    + (1024 * 4096 + 4096)  # fc1
    + (4096 * 1024 + 1024)  # fc2
    + 2 * (2 * 1024)  # layer_norm1, layer_norm2 (weight + bias)
)
VISION_PARAMS = (
    1024  # class embedding
    + 3 * 14 * 14 * 1024  # patch embedding conv, no bias
    + 577 * 1024  # position embeddings
    + 2 * (2 * 1024)  # pre_layrnorm, post_layernorm
    + 24 * CLIP_LAYER
)
PROJECTOR_PARAMS = (1024 * 4096 + 4096) + (4096 * 4096 + 4096) + 4096  # linear_1, linear_2, image_newline
LLAMA_LAYER = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096  # q/k/v/o, gate/up/down, two RMSNorms
LLM_PARAMS = 32064 * 4096 + 32 * LLAMA_LAYER + 4096 + 32064 * 4096  # embeddings, layers, final norm, lm_head
TOTAL_PARAMS = VISION_PARAMS + PROJECTOR_PARAMS + LLM_PARAMS

# KV cache: keys and values, 32 layers, 32 KV heads of 128.
KV_PER_TOKEN = 2 * 32 * 32 * 128 * FP16

# Prefill, per token: one decoder layer's peak (its phases), input embeddings, rotary cos/sin.
HIDDEN = 4096 * FP16
Q = KV = 32 * 128 * FP16
INTERMEDIATE = 11008 * FP16
NORM_PHASE = HIDDEN + 2 * 4096 * F32  # residual + RMSNorm's two float32 temporaries
ROTARY_PHASE = 2 * HIDDEN + Q + 2 * KV + max(3 * Q, Q + 3 * KV)
ATTENTION_PHASE = 2 * HIDDEN + Q + 2 * KV + 2 * Q  # no GQA repeat: 32 KV heads
MLP_PHASE = 2 * HIDDEN + 3 * INTERMEDIATE
PREFILL_PER_TOKEN = HIDDEN + 2 * 128 * FP16 + MLP_PHASE
LOGITS = 32064 * FP16 + 2 * 32064 * F32  # last position's logits + generate's float32 copy and scores


def prefill(prompt_tokens: int) -> int:
    return prompt_tokens * PREFILL_PER_TOKEN + prompt_tokens**2 * (1 + FP16) + LOGITS


# Vision, per token of a partition: kept states (feature layer, HiRED's q/k at two layers, the
# encoder input) + the MLP phase (residual, normed, fc1 and quick_gelu's two temporaries).
VISION_TOKEN = (1 + 4 + 1) * 1024 * FP16 + 2 * 1024 * FP16 + 3 * 4096 * FP16
PIXELS = 3 * 336 * 336 * FP16
VISION_TOWER_ITEM = 5 * (PIXELS + 577 * VISION_TOKEN)  # full view + 2x2 grid


def projector(visual_tokens_llm: int) -> int:
    return (
        5 * PIXELS
        + 5 * 577 * 1024 * FP16  # feature-layer states
        + visual_tokens_llm * 1024 * FP16  # gathered kept features
        + 2 * visual_tokens_llm * 4096 * FP16  # linear_1 output and activation
        + 2 * visual_tokens_llm * 4096 * FP16  # projected features and their concatenation
    )


TEXT_TOKENS, NEW_TOKENS = 60, 128
FULL_PROMPT = 2880 + 48 + TEXT_TOKENS  # every grid token + one newline per row of the 48-row grid
HIRED20_PROMPT = 576 + TEXT_TOKENS  # floor(0.2 * 2880) = 576, newlines dropped

FULL_ITEM = (FULL_PROMPT + NEW_TOKENS) * KV_PER_TOKEN + prefill(FULL_PROMPT) + VISION_TOWER_ITEM
HIRED20_ITEM = (HIRED20_PROMPT + NEW_TOKENS) * KV_PER_TOKEN + prefill(HIRED20_PROMPT) + VISION_TOWER_ITEM

CARD_24GB = 24 * GiB
FREE_AFTER_WEIGHTS = CARD_24GB - TOTAL_PARAMS * FP16
USABLE = FREE_AFTER_WEIGHTS - (1 * GiB + -(-FREE_AFTER_WEIGHTS // 10))  # default margin: 1 GiB + 10%, rounded up


def test_hand_figures_are_what_we_say():
    # The figures quoted in the README and the report, so a typo above cannot hide.
    assert TOTAL_PARAMS == 7_063_431_168
    assert TOTAL_PARAMS * FP16 == 14_126_862_336  # ~14.1 GB
    assert KV_PER_TOKEN == 524_288
    assert (ROTARY_PHASE, ATTENTION_PHASE, MLP_PHASE, NORM_PHASE) == (73_728, 57_344, 82_432, 40_960)
    assert PREFILL_PER_TOKEN == 91_136
    assert VISION_TOWER_ITEM == 121_556_480
    assert projector(2928) < VISION_TOWER_ITEM and projector(576) < VISION_TOWER_ITEM
    assert FULL_ITEM == 2_054_657_328  # 1.91 GiB
    assert HIRED20_ITEM == 581_609_136  # 0.54 GiB
    assert USABLE == 9_404_905_472


def test_parameter_count_of_7b_matches_hand_count_and_meta_model():
    config = llava_next_7b_config()
    assert parameter_count(config) == TOTAL_PARAMS
    assert meta_parameter_count(LlavaNextForConditionalGeneration, config) == TOTAL_PARAMS
    assert weights_bytes(config, torch.float16) == TOTAL_PARAMS * FP16
    assert weights_bytes(config, "bfloat16") == TOTAL_PARAMS * 2
    assert weights_bytes(config, torch.float32) == TOTAL_PARAMS * 4


def test_weights_measured_from_a_model_count_parameters_and_buffers_at_their_dtypes():
    config = llava_next_7b_config()
    with torch.device("meta"):
        model = LlavaNextForConditionalGeneration(config).to(torch.float16)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert buffers > 0  # position ids (int64) and rotary frequencies
    assert weights_bytes(config, torch.float16, model) == TOTAL_PARAMS * FP16 + buffers
    assert MemoryModel(config, torch.float16, model=model).weights_bytes == TOTAL_PARAMS * FP16 + buffers


def test_7b_per_item_parts_match_hand_arithmetic():
    model = MemoryModel(llava_next_7b_config(), torch.float16)
    assert model.kv_cache_bytes_per_token == KV_PER_TOKEN
    assert model.kv_cache_bytes(FULL_PROMPT + NEW_TOKENS) == 3116 * 524_288
    assert model.decoder_layer_bytes_per_token() == MLP_PHASE
    assert model.prefill_bytes_per_token() == PREFILL_PER_TOKEN
    assert model.prefill_bytes(FULL_PROMPT) == prefill(FULL_PROMPT) == 299_419_440
    assert model.vision_tower_bytes(5) == VISION_TOWER_ITEM
    assert model.projector_bytes(5, 2928) == projector(2928)
    assert model.vision_bytes(5, 2928) == VISION_TOWER_ITEM

    full = model.item_bytes(FULL_PROMPT, NEW_TOKENS, partitions=5, visual_tokens_llm=2928)
    assert full == ItemBytes(
        kv_cache_bytes=(FULL_PROMPT + NEW_TOKENS) * KV_PER_TOKEN,
        prefill_bytes=prefill(FULL_PROMPT),
        vision_bytes=VISION_TOWER_ITEM,
    )
    assert full.total_bytes == FULL_ITEM


def test_largest_image_is_a_2x2_grid_and_hired_keeps_a_fifth():
    model = MemoryModel(llava_next_7b_config(), torch.float16)
    full = model.largest_image(None)  # stock: every grid token and every newline
    assert (full.partitions, full.grid_tokens, full.visual_tokens_llm) == (5, 2880, 2880 + 48)
    hired20 = model.largest_image(HiREDConfig(budget=0.2))
    assert (hired20.partitions, hired20.grid_tokens, hired20.visual_tokens_llm) == (5, 2880, 576)
    # A 1x3 grid has more rows (72 newlines) but fewer tokens: 2304 + 72 < 2880 + 48.
    assert model.largest_image(HiREDConfig(budget=1.0, newlines="all")).visual_tokens_llm == 2928


def test_what_fits_on_a_24gb_card_full_tokens_vs_hired_20():
    model = MemoryModel(llava_next_7b_config(), torch.float16)
    free = CARD_24GB - model.weights_bytes
    assert free == FREE_AFTER_WEIGHTS

    full = model.worst_case_item_bytes(None, TEXT_TOKENS, NEW_TOKENS)
    hired20 = model.worst_case_item_bytes(HiREDConfig(budget=0.2), TEXT_TOKENS, NEW_TOKENS)
    assert full.total_bytes == FULL_ITEM
    assert hired20.total_bytes == HIRED20_ITEM

    # 9,404,905,472 usable bytes: 4 items of 2,054,657,328 (a 5th needs 10.27e9);
    # 16 items of 581,609,136 (a 17th needs 9.89e9).
    assert USABLE // FULL_ITEM == 4 and USABLE // HIRED20_ITEM == 16
    sizer = BatchSizer(model, NEW_TOKENS, free)
    assert sizer.usable_bytes == USABLE
    assert sizer.fits(full) == 4
    assert sizer.fits(hired20) == 16
    assert sizer.describe(full) == (
        "batch sizing: 10.84 GiB free after weights, 8.76 GiB usable (1.00 GiB + 10% held back); "
        "4 to a batch at 1.91 GiB per item (KV 1.52, prefill 0.28, vision 0.11)"
    )


# The largest LLaVA-Next-7B items, as hired.expected_lengths gives them to the generation actor.
FULL_LENGTHS = ItemLengths(
    partitions=5, visual_tokens_full=2880, visual_tokens_kept=2880, visual_tokens_llm=2928, prompt_tokens=FULL_PROMPT
)
HIRED20_LENGTHS = ItemLengths(
    partitions=5, visual_tokens_full=2880, visual_tokens_kept=576, visual_tokens_llm=576, prompt_tokens=HIRED20_PROMPT
)


def test_the_actors_micro_batches_of_7b_items_on_a_24gb_card():
    model = MemoryModel(llava_next_7b_config(), torch.float16)
    sizer = BatchSizer(model, NEW_TOKENS, CARD_24GB - model.weights_bytes)
    assert sizer.batch_bytes([FULL_LENGTHS]) == FULL_ITEM
    assert sizer.batch_bytes([HIRED20_LENGTHS] * 16) == 16 * HIRED20_ITEM
    assert [len(b) for b in sizer.micro_batches([FULL_LENGTHS] * 10)] == [4, 4, 2]
    assert [len(b) for b in sizer.micro_batches([HIRED20_LENGTHS] * 40)] == [16, 16, 8]
    # Mixed: longest first; a batch holding one full item pays the full length for each member.
    mixed = [HIRED20_LENGTHS] * 20 + [FULL_LENGTHS] * 2
    batches = sizer.micro_batches(mixed)
    assert batches[0] == [20, 21, 0, 1]  # two full items and two short ones padded to the full length
    assert [len(b) for b in batches] == [4, 16, 2]


# ---------------------------------------------------------------------------
# Other architectures: config reading and parameter counts
# ---------------------------------------------------------------------------


def small_vision(**overrides) -> CLIPVisionConfig:
    settings_ = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
    settings_.update(image_size=336, patch_size=14, **overrides)
    return CLIPVisionConfig(**settings_)


def small_llama(**overrides) -> LlamaConfig:
    settings_ = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=8)
    settings_.update(num_key_value_heads=2, vocab_size=500, **overrides)
    return LlamaConfig(**settings_)


VARIANTS = {
    "llava-next gqa": lambda: LlavaNextConfig(vision_config=small_vision(), text_config=small_llama()),
    "explicit head_dim": lambda: LlavaNextConfig(vision_config=small_vision(), text_config=small_llama(head_dim=32)),
    "biases": lambda: LlavaNextConfig(
        vision_config=small_vision(), text_config=small_llama(attention_bias=True, mlp_bias=True)
    ),
    "tied embeddings": lambda: LlavaNextConfig(
        vision_config=small_vision(), text_config=small_llama(), tie_word_embeddings=True
    ),
    "two feature layers": lambda: LlavaNextConfig(
        vision_config=small_vision(), text_config=small_llama(), vision_feature_layer=[-2, -1]
    ),
    "no projector bias": lambda: LlavaNextConfig(
        vision_config=small_vision(), text_config=small_llama(), multimodal_projector_bias=False
    ),
    "mistral": lambda: LlavaNextConfig(
        vision_config=small_vision(),
        text_config=MistralConfig(
            hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=8,
            num_key_value_heads=2, vocab_size=500,
        ),
    ),
    "llava-1.5": lambda: LlavaConfig(vision_config=small_vision(), text_config=small_llama()),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameter_count_matches_meta_model(name):
    config = VARIANTS[name]()
    is_llava_15 = isinstance(config, LlavaConfig)
    model_class = LlavaForConditionalGeneration if is_llava_15 else LlavaNextForConditionalGeneration
    assert parameter_count(config) == meta_parameter_count(model_class, config)


def test_kv_cache_reads_kv_heads_and_head_dim():
    gqa = MemoryModel(VARIANTS["llava-next gqa"](), torch.bfloat16)
    assert gqa.kv_cache_bytes_per_token == 2 * 2 * 2 * (128 // 8) * 2  # layers, KV heads, hidden/heads
    explicit = MemoryModel(VARIANTS["explicit head_dim"](), torch.bfloat16)
    assert explicit.kv_cache_bytes_per_token == 2 * 2 * 2 * 32 * 2
    mistral_7b = MemoryModel(llava_next_7b_config(num_key_value_heads=8), torch.float16)
    assert mistral_7b.kv_cache_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131_072


def test_gqa_counts_repeated_keys_and_values_in_attention():
    # 8 KV heads of 32: with a padding mask, sdpa_attention_forward repeats k/v to all heads.
    model = MemoryModel(llava_next_7b_config(num_key_value_heads=8, intermediate_size=1024), torch.float16)
    hidden, q, kv = 8192, 8192, 8 * 128 * 2
    attention = 2 * hidden + q + 2 * kv + 2 * q + 2 * q  # residual, normed, q/k/v, repeated k/v, output + copy
    assert attention == 61_440
    assert model.decoder_layer_bytes_per_token() == attention


def test_all_logits_adds_a_vocab_row_per_prompt_token():
    config = llava_next_7b_config()
    last = MemoryModel(config, torch.float16)
    every = MemoryModel(config, torch.float16, last_logits_only=False)
    assert every.prefill_bytes(1000) - last.prefill_bytes(1000) == 999 * 32064 * FP16


def test_llava_15_has_one_view_and_no_newlines():
    config = LlavaConfig(vision_config=small_vision(), text_config=small_llama())
    image = MemoryModel(config, torch.float16).largest_image(HiREDConfig(budget=0.2))
    assert (image.partitions, image.grid_tokens, image.visual_tokens_llm) == (1, 576, 115)


# ---------------------------------------------------------------------------
# The model against what transformers allocates (CPU, torch profiler)
# ---------------------------------------------------------------------------


def profiled_peak_bytes(fn) -> int:
    """Peak of the bytes allocated while ``fn`` runs, from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = prof.profiler.kineto_results.events()
    allocations = sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns())
    live = peak = 0
    for event in allocations:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


@pytest.fixture(scope="module")
def small_llava_next(tiny_next_path):
    """A LLaVA-Next with the real geometry, wider than the tiny one, and the tiny processor."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_next_path)
    tiny = LlavaNextConfig.from_pretrained(tiny_next_path)
    text = tiny.text_config
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
            image_size=336, patch_size=14,
        ),
        text_config=LlamaConfig(
            vocab_size=text.vocab_size, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id,
        ),
        image_token_id=tiny.image_token_id,
        image_grid_pinpoints=tiny.image_grid_pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlavaNextForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = text.pad_token_id
    return model, processor


@pytest.mark.parametrize("budget", [None, 0.2])
def test_estimate_bounds_what_transformers_allocates(small_llava_next, budget):
    """The generation actor's estimate for a batch (``BatchSizer.padded_item_bytes`` from
    ``hired.expected_lengths``, as the pipeline computes it) against the profiler's peaks."""
    from hired import expected_lengths, prepare_inputs

    from .conftest import chat_prompt, noise_image

    model, processor = small_llava_next
    torch.set_num_threads(2)
    batch, new_tokens = 3, 8
    images = [noise_image(672, 672, seed=i) for i in range(batch)]  # 2x2 grids, nothing unpadded
    # Prompts of different lengths, so the batch is padded and the causal mask is built.
    prompts = [chat_prompt(processor, "describe the image" + " red" * i) for i in range(batch)]
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    config = HiREDConfig(budget=budget) if budget else None
    lengths = [
        expected_lengths(model, (672, 672), int(ids), config) for ids in inputs["attention_mask"].sum(dim=1)
    ]
    sizer = BatchSizer(MemoryModel(model.config, torch.float32, model=model), new_tokens, free_bytes=None)
    item = sizer.padded_item_bytes(lengths)

    # Vision: the tower's working set, predicted nearly to the byte when HiRED's hooks run.
    with torch.no_grad():
        vision_peak = profiled_peak_bytes(lambda: prepare_inputs(model, inputs, config))
        prepared = prepare_inputs(model, inputs, config)
    assert max(prepared.prompt_tokens) == max(x.prompt_tokens for x in lengths)  # the lengths the actor predicts
    vision_estimate = batch * item.vision_bytes
    if budget:
        assert 0.99 < vision_peak / vision_estimate < 1.01
    else:  # no scoring layers hooked: four fewer states kept than the model assumes
        assert 0.75 < vision_peak / vision_estimate <= 1.0

    # Generation: KV cache + prefill bound the peak, and not by a wide margin.
    def generate():
        with torch.no_grad():
            model.generate(
                **prepared.model_inputs(), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )

    llm_peak = profiled_peak_bytes(generate)
    llm_estimate = batch * (item.kv_cache_bytes + item.prefill_bytes)
    print(f"budget {budget}: measured / estimated: vision {vision_peak / vision_estimate:.3f}, "
          f"generation {llm_peak / llm_estimate:.3f}")  # pytest -s shows them
    assert 0.7 < llm_peak / llm_estimate <= 1.0
    # The whole batch's figure, which micro-batches are cut by, bounds either phase.
    assert max(vision_peak, llm_peak) <= sizer.batch_bytes(lengths)


# ---------------------------------------------------------------------------
# The actor's micro-batches
# ---------------------------------------------------------------------------

ITEM = ItemBytes(kv_cache_bytes=1 * GiB, prefill_bytes=GiB // 2, vision_bytes=GiB // 4)  # 1.75 GiB
NO_MARGIN = Margin(fraction=0.0, fixed_bytes=0)


def sizer_7b(free_bytes, margin=NO_MARGIN, **kwargs) -> BatchSizer:
    return BatchSizer(MemoryModel(llava_next_7b_config(), torch.float16), NEW_TOKENS, free_bytes, margin, **kwargs)


def test_items_fit_after_the_margin():
    margin = Margin(fraction=0.0, fixed_bytes=GiB // 4)
    assert sizer_7b(7 * GiB, margin).fits(ITEM) == 3  # 6.75 GiB usable: 3 x 1.75 = 5.25, 4 x = 7
    assert sizer_7b(7 * GiB + GiB // 4, margin).fits(ITEM) == 4  # exactly 4 x 1.75
    ten = ItemBytes(10 * GiB, 0, 0)
    assert sizer_7b(100 * GiB, Margin(fraction=0.5, fixed_bytes=0)).fits(ten) == 5
    assert sizer_7b(100 * GiB, Margin(fraction=0.5, fixed_bytes=GiB)).fits(ten) == 4


def test_without_a_memory_figure_or_with_a_fixed_size_items_are_cut_at_that_size():
    lengths = [HIRED20_LENGTHS] * 5 + [FULL_LENGTHS] * 5
    cpu = sizer_7b(None)
    assert not cpu.sizing and cpu.sizes.batch_size == CPU_BATCH_SIZE == 4
    assert cpu.micro_batches(lengths) == [[5, 6, 7, 8], [9, 0, 1, 2], [3, 4]]  # longest first, memory ignored
    assert cpu.describe(None) == "batch size 4 (CPU default: no device memory figure)"
    assert cpu.learn_from_peak(lengths, peak_bytes=100 * GiB, baseline_bytes=0) is None
    fixed = sizer_7b(1000 * GiB, fixed_batch_size=3)
    assert not fixed.sizing and [len(b) for b in fixed.micro_batches(lengths)] == [3, 3, 3, 1]
    assert fixed.describe(None) == "batch size 3 (fixed by the caller)"


def test_micro_batches_stay_under_the_ceiling_and_what_oom_back_off_taught():
    sizer = sizer_7b(1000 * GiB)  # room for about 1,800 short items
    assert sizer.sizes.batch_size == MAX_BATCH_SIZE
    assert [len(b) for b in sizer.micro_batches([HIRED20_LENGTHS] * 300)] == [MAX_BATCH_SIZE, 300 - MAX_BATCH_SIZE]
    sizer.sizes.lower_to(5, "out of memory on a batch of 10")
    assert [len(b) for b in sizer.micro_batches([HIRED20_LENGTHS] * 12)] == [5, 5, 2]


def test_an_item_too_large_alone_still_gets_a_batch():
    sizer = sizer_7b(2 * GiB, Margin())  # 1 GiB fixed + 10% leaves 0.8 GiB: not one full item
    assert sizer.fits(sizer.padded_item_bytes([FULL_LENGTHS])) == 0
    assert sizer.micro_batches([FULL_LENGTHS] * 3) == [[0], [1], [2]]  # OOM back-off makes them error rows
    assert sizer.describe(sizer.padded_item_bytes([FULL_LENGTHS])).endswith(
        "0 to a batch at 1.91 GiB per item (KV 1.52, prefill 0.28, vision 0.11): "
        "such items would be out-of-memory error rows"
    )


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        Margin(fraction=1.0)
    with pytest.raises(ValueError):
        Margin(fixed_bytes=-1)
    with pytest.raises(ValueError):
        AdaptiveBatchSize(0)


def test_a_peak_above_the_estimate_raises_it_and_lowers_later_batches():
    sizer = sizer_7b(14 * FULL_ITEM)
    assert [len(b) for b in sizer.micro_batches([FULL_LENGTHS] * 14)] == [14]
    baseline = 15 * GiB  # the weights
    note = sizer.learn_from_peak([FULL_LENGTHS] * 4, baseline + 4 * 2 * FULL_ITEM, baseline)  # twice the estimate
    assert sizer.correction == pytest.approx(2.0)
    assert note == "a batch of 4 used 15.31 GiB, 100% over the 7.65 GiB predicted: estimates raised by that much"
    assert sizer.batch_bytes([FULL_LENGTHS]) == 2 * FULL_ITEM
    assert sizer.fits(ItemBytes(FULL_ITEM, 0, 0)) == 7
    assert [len(b) for b in sizer.micro_batches([FULL_LENGTHS] * 14)] == [7, 7]
    # Corrections compound: the next peak is compared with the corrected estimate.
    sizer.learn_from_peak([FULL_LENGTHS], baseline + 3 * FULL_ITEM, baseline)
    assert sizer.correction == pytest.approx(3.0)


def test_a_peak_below_the_estimate_changes_nothing():
    # A batch that stopped at EOS did not grow its KV cache to full length: no evidence of less.
    sizer = sizer_7b(14 * FULL_ITEM)
    assert sizer.learn_from_peak([FULL_LENGTHS] * 4, peak_bytes=GiB, baseline_bytes=0) is None
    assert sizer.learn_from_peak([FULL_LENGTHS] * 4, peak_bytes=4 * FULL_ITEM, baseline_bytes=0) is None
    assert sizer.correction == 1.0
    assert [len(b) for b in sizer.micro_batches([FULL_LENGTHS] * 14)] == [14]


# ---------------------------------------------------------------------------
# Device memory (CPU here: CUDA is faked to check the arithmetic)
# ---------------------------------------------------------------------------


def test_no_cuda_means_no_figure(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert free_device_bytes() is None
    assert apply_memory_cap(24) is None


@pytest.fixture
def fake_cuda(monkeypatch):
    """An 80 GiB GPU with 60 GiB free; this process holds 16 GiB, 14 GiB of it in use."""
    state = {"fraction": 1.0, "empty_cache": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (60 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 14 * GiB)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 16 * GiB)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: state["fraction"])
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device=None: state.update(fraction=f))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: state.update(empty_cache=state["empty_cache"] + 1))
    return state


def test_free_bytes_count_the_allocators_unused_cache(fake_cuda):
    assert free_device_bytes() == 60 * GiB + 2 * GiB


def test_free_bytes_under_a_cap_without_setting_it(fake_cuda):
    assert free_device_bytes(gpu_memory_gb=24) == 24 * GiB - 14 * GiB
    assert free_device_bytes(gpu_memory_gb=200) == 62 * GiB
    assert fake_cuda["fraction"] == 1.0
    with pytest.raises(ValueError):
        free_device_bytes(gpu_memory_gb=-1)


def test_memory_cap_sets_the_fraction_and_returns_what_is_left_under_it(fake_cuda):
    assert apply_memory_cap(24) == 24 * GiB - 14 * GiB
    assert fake_cuda["fraction"] == pytest.approx(24 / 80)
    assert free_device_bytes() == 10 * GiB  # the cap holds for later calls
    assert apply_memory_cap(200) == 62 * GiB  # a cap above the card is no cap
    assert fake_cuda["fraction"] == 1.0
    with pytest.raises(ValueError):
        apply_memory_cap(0)


def test_release_empties_the_cache_on_cuda(fake_cuda):
    memory.release_device_memory()
    assert fake_cuda["empty_cache"] == 1


# ---------------------------------------------------------------------------
# OOM back-off
# ---------------------------------------------------------------------------


def cuda_oom(size: int) -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {size} MiB")


class FakeGpu:
    """``run_batch`` that runs out of memory above ``capacity`` items or on a poisoned item."""

    def __init__(self, capacity: int = 10**9, poisoned=()):
        self.capacity, self.poisoned = capacity, set(poisoned)
        self.calls: list[list] = []
        self.completed: list = []
        self.frees = 0

    def run_batch(self, batch: list) -> list:
        self.calls.append(list(batch))
        if len(batch) > self.capacity or self.poisoned & set(batch):
            raise cuda_oom(len(batch))
        self.completed.extend(batch)
        return [f"ok {item}" for item in batch]

    def free_memory(self):
        self.frees += 1


def error_result(item, reason):
    return f"error {item}: {reason}"


def test_is_out_of_memory():
    assert is_out_of_memory(cuda_oom(1))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_batches_that_fit_run_once_each():
    gpu = FakeGpu()
    results = run_with_oom_backoff(range(10), gpu.run_batch, 4, error_result, free_memory=gpu.free_memory)
    assert results == [f"ok {i}" for i in range(10)]
    assert [len(c) for c in gpu.calls] == [4, 4, 2]
    assert gpu.frees == 0


def test_oom_splits_batches_and_lowers_the_batch_size():
    gpu = FakeGpu(capacity=3)
    state = AdaptiveBatchSize(8)
    results = run_with_oom_backoff(range(20), gpu.run_batch, state, error_result, free_memory=gpu.free_memory)
    assert results == [f"ok {i}" for i in range(20)]  # every item, once, in order
    assert sorted(gpu.completed) == list(range(20))
    # 8 fails, 4 fails, 2 + 2 run: later batches use 2.
    assert [len(c) for c in gpu.calls[:5]] == [8, 4, 2, 2, 4]
    assert state.batch_size == 2
    assert len(gpu.calls) == 7 + 6 and all(len(c) == 2 for c in gpu.calls[7:])
    assert state.out_of_memory_errors == gpu.frees == 3  # 8, then both 4s
    assert state.failed_items == 0
    assert state.history == ["batch size 8 -> 2: out of memory on a batch of 8"]


def test_a_poisoned_item_becomes_an_error_and_the_rest_run():
    gpu = FakeGpu(poisoned={13})
    state = AdaptiveBatchSize(8)
    results = run_with_oom_backoff(range(20), gpu.run_batch, state, error_result, free_memory=gpu.free_memory)
    assert len(results) == 20
    assert results[13].startswith("error 13: out of memory: the item alone in its batch (OutOfMemoryError: CUDA")
    assert [r for i, r in enumerate(results) if i != 13] == [f"ok {i}" for i in range(20) if i != 13]
    assert sorted(gpu.completed) == [i for i in range(20) if i != 13]
    assert state.failed_items == 1
    # 8..15 failed; its first half (4 items) ran, so later batches use 4, not 1.
    assert state.batch_size == 4
    assert [len(c) for c in gpu.calls[-1:]] == [4]


def test_an_int_batch_size_works_without_a_state_object():
    gpu = FakeGpu(capacity=1)
    results = run_with_oom_backoff(["a", "b", "c"], gpu.run_batch, 3, error_result, free_memory=gpu.free_memory)
    assert results == ["ok a", "ok b", "ok c"]


def test_runtime_error_out_of_memory_is_backed_off_too():
    calls = []

    def run_batch(batch):
        calls.append(len(batch))
        if len(batch) > 1:
            raise RuntimeError("CUDA error: out of memory")
        return batch

    assert run_with_oom_backoff([1, 2], run_batch, 2, error_result, free_memory=lambda: None) == [1, 2]
    assert calls == [2, 1, 1]


def test_other_errors_propagate():
    def run_batch(batch):
        raise ValueError("cannot decode image")

    with pytest.raises(ValueError, match="cannot decode"):
        run_with_oom_backoff([1, 2, 3], run_batch, 2, error_result, free_memory=lambda: None)

    def shape_bug(batch):
        if len(batch) > 1:
            raise cuda_oom(1)
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="mat1"):
        run_with_oom_backoff([1, 2], shape_bug, 2, error_result, free_memory=lambda: None)


def test_a_run_batch_that_loses_items_is_refused():
    with pytest.raises(ValueError, match="2 results for 3 items"):
        run_with_oom_backoff([1, 2, 3], lambda batch: batch[:2], 3, error_result, free_memory=lambda: None)


def test_no_items_no_calls():
    gpu = FakeGpu()
    assert run_with_oom_backoff([], gpu.run_batch, 4, error_result) == []
    assert gpu.calls == []


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), max_size=40),
    capacity=st.integers(1, 30),
    batch_size=st.integers(1, 16),
)
def test_every_item_accounted_for_once_in_order(sizes, capacity, batch_size):
    """Items of different sizes on a device of ``capacity``: an item larger than the device fails alone."""
    completed = []

    def run_batch(batch):
        if sum(size for _, size in batch) > capacity:
            raise cuda_oom(capacity)
        completed.extend(index for index, _ in batch)
        return [("ok", index) for index, _ in batch]

    items = list(enumerate(sizes))
    state = AdaptiveBatchSize(batch_size)
    def make_error(item, reason):
        return ("error", item[0])

    results = run_with_oom_backoff(items, run_batch, state, make_error, free_memory=lambda: None)
    expected = [("error" if size > capacity else "ok", index) for index, size in items]
    assert results == expected
    assert sorted(completed) == [index for index, size in items if size <= capacity]
    assert 1 <= state.batch_size <= batch_size
    assert state.failed_items == sum(size > capacity for size in sizes)
