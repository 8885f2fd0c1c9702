"""The memory model against what really exists: the released checkpoints' parameters on the meta
device, what bitsandbytes really loads, the projections hired's hooks really keep and what CPU
forward passes really allocate (torch profiler); then the actor's micro-batches, device memory
and OOM back-off."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (
    BitsAndBytesConfig,
    CLIPVisionConfig,
    GemmaConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    MistralConfig,
    Qwen2Config,
)

from hired import HiREDConfig, ItemLengths, expected_lengths
from pipeline import memory
from pipeline.memory import (
    CPU_BATCH_SIZE,
    MAX_BATCH_SIZE,
    GiB,
    AdaptiveBatchSize,
    BatchSizer,
    ItemBytes,
    LlavaShape,
    Margin,
    MemoryModel,
    Quantization,
    apply_memory_cap,
    count_weight_bytes,
    free_device_bytes,
    is_out_of_memory,
    linear_layers,
    measure_weight_bytes,
    parameter_count,
    run_with_oom_backoff,
)
from pipeline.memory.checkpoints import NAMES, checkpoint_config
from pipeline.memory.weights import count_weight_bytes_by_module, module_of

from .conftest import chat_prompt, noise_image


def meta_model(config, dtype=torch.float32):
    """The real model class for ``config``, built on the meta device (no memory), in ``dtype`` as
    ``from_pretrained(dtype=...)`` builds it (buffers keep their own dtypes)."""
    model_class = LlavaForConditionalGeneration if isinstance(config, LlavaConfig) else LlavaNextForConditionalGeneration
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            return model_class(config)
    finally:
        torch.set_default_dtype(default)


def plain_linear_names(model) -> set[str]:
    return {name for name, module in model.named_modules() if type(module) is torch.nn.Linear}


def unconverted_names(config, quantization) -> set[str]:
    """The linear layers the memory model expects transformers to leave in full precision."""
    return {x.name for x in linear_layers(LlavaShape.from_config(config)) if not quantization.converts(x.name)}


# ---------------------------------------------------------------------------
# Parameters: the released family, built as the real model classes on the meta device
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_each_released_checkpoint_is_counted_exactly(name):
    config = checkpoint_config(name)
    model = meta_model(config, torch.float16)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{name}: {parameters:,} parameters")  # pytest -s shows them
    assert parameter_count(config) == parameters
    # Loaded in float16: parameters and buffers (position ids, rotary tables) to the byte.
    assert count_weight_bytes(config, torch.float16).total_bytes == model.get_memory_footprint()
    # The linear layers named as transformers names them, so quantization's skip rules see the real names.
    assert {x.name for x in linear_layers(LlavaShape.from_config(config))} == plain_linear_names(model)


@pytest.mark.parametrize("name", NAMES)
def test_what_bitsandbytes_keeps_in_full_precision_in_each_checkpoint(name):
    """transformers' own rule (get_keys_to_not_convert, replace_with_bnb_linear) on the real module tree."""
    from transformers.integrations import replace_with_bnb_linear
    from transformers.quantizers.base import get_keys_to_not_convert

    config = checkpoint_config(name)
    model = meta_model(config, torch.float16)
    replace_with_bnb_linear(model, get_keys_to_not_convert(model), BitsAndBytesConfig(load_in_4bit=True))
    assert plain_linear_names(model) == unconverted_names(config, Quantization(bits=4)) == {"lm_head"}


def small_vision(**overrides) -> CLIPVisionConfig:
    settings_ = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
    settings_.update(image_size=336, patch_size=14, **overrides)
    return CLIPVisionConfig(**settings_)


def small_text(config_class=LlamaConfig, **overrides):
    settings_ = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=8)
    settings_.update(num_key_value_heads=2, vocab_size=500, **overrides)
    return config_class(**settings_)


VARIANTS = {
    "llava-next gqa": lambda: LlavaNextConfig(vision_config=small_vision(), text_config=small_text()),
    "explicit head_dim": lambda: LlavaNextConfig(vision_config=small_vision(), text_config=small_text(head_dim=32)),
    "llama biases": lambda: LlavaNextConfig(
        vision_config=small_vision(), text_config=small_text(attention_bias=True, mlp_bias=True)
    ),
    "tied embeddings": lambda: LlavaNextConfig(
        vision_config=small_vision(), text_config=small_text(), tie_word_embeddings=True
    ),
    "two feature layers": lambda: LlavaNextConfig(
        vision_config=small_vision(), text_config=small_text(), vision_feature_layer=[-2, -1]
    ),
    "no projector bias": lambda: LlavaNextConfig(
        vision_config=small_vision(), text_config=small_text(), multimodal_projector_bias=False
    ),
    "mistral": lambda: LlavaNextConfig(vision_config=small_vision(), text_config=small_text(MistralConfig)),
    "qwen2": lambda: LlavaNextConfig(vision_config=small_vision(), text_config=small_text(Qwen2Config)),
    "qwen2 tied": lambda: LlavaNextConfig(
        vision_config=small_vision(), text_config=small_text(Qwen2Config), tie_word_embeddings=True
    ),
    "llava-1.5": lambda: LlavaConfig(vision_config=small_vision(), text_config=small_text()),
    "llava-1.5 qwen2": lambda: LlavaConfig(vision_config=small_vision(), text_config=small_text(Qwen2Config)),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameter_count_matches_the_meta_model(name):
    config = VARIANTS[name]()
    model = meta_model(config)
    assert parameter_count(config) == sum(p.numel() for p in model.parameters())
    assert count_weight_bytes(config, torch.float32).total_bytes == model.get_memory_footprint()


def test_an_unknown_text_backbone_is_refused_from_the_config_and_measured_when_loaded():
    config = LlavaNextConfig(vision_config=small_vision(), text_config=small_text(GemmaConfig, head_dim=16))
    with pytest.raises(ValueError, match="llava_next/clip_vision_model/gemma: load the model and measure it"):
        parameter_count(config)
    with pytest.raises(ValueError, match="measure it"):
        MemoryModel(config, torch.float32)
    model = meta_model(config)
    assert MemoryModel(config, torch.float32, model=model).weights_bytes == model.get_memory_footprint()


def test_quantization_settings_are_read_or_refused():
    assert Quantization.parse(None) is None
    assert Quantization.parse("8bit") == Quantization(bits=8)
    assert Quantization.parse(BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_use_double_quant=True)) == Quantization(
        bits=4, double_quant=True
    )
    skip = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["vision_tower"])
    assert Quantization.parse(skip.to_dict()) == Quantization(bits=8, skip_modules=("vision_tower",))
    with pytest.raises(ValueError, match="8bit, 4bit"):
        Quantization.parse("3bit")
    with pytest.raises(ValueError, match="bitsandbytes"):
        Quantization.parse({"quant_method": "gptq"})


# ---------------------------------------------------------------------------
# Quantized weights: tiny models really loaded by bitsandbytes on CPU
# ---------------------------------------------------------------------------

# bitsandbytes' 4-bit kernels need layers at least 64 wide: the tiny models' vision tower widened to 64.
LOADS = {
    "fp32": (torch.float32, None),
    "fp16": (torch.float16, None),
    "8bit": (torch.float16, BitsAndBytesConfig(load_in_8bit=True)),
    "8bit, vision and projector kept": (
        torch.float16,
        BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"]),
    ),
    "nf4": (torch.float16, BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                              bnb_4bit_compute_dtype=torch.float16)),
    "nf4, double quantization": (torch.float16, BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float16)),
}


@pytest.fixture(scope="module")
def wide_tiny_paths(tmp_path_factory):
    from hired.tiny import build_tiny_llava, build_tiny_llava_next

    root = tmp_path_factory.mktemp("wide-tiny")
    return {
        "llava-next": build_tiny_llava_next(root / "next", vision_width=64),
        "llava-1.5": build_tiny_llava(root / "llava", vision_width=64),
    }


@pytest.mark.parametrize("kind", ["llava-next", "llava-1.5"])
@pytest.mark.parametrize("load", list(LOADS))
def test_weights_from_the_config_are_what_bitsandbytes_loads(wide_tiny_paths, kind, load):
    from transformers import AutoConfig, AutoModelForImageTextToText

    dtype, quantization = LOADS[load]
    path = wide_tiny_paths[kind]
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=dtype, quantization_config=quantization, device_map="cpu" if quantization else None
    )
    config = AutoConfig.from_pretrained(path)
    # Read as the Predictor reads a loaded model: from its own config.
    estimate = count_weight_bytes(config, dtype, getattr(model.config, "quantization_config", None))
    footprint = model.get_memory_footprint()
    measured = measure_weight_bytes(model)
    print(f"{kind} {load}: estimate / get_memory_footprint {estimate.stored_bytes / footprint:.4f}, "
          f"with quantization state {estimate.total_bytes / measured.total_bytes:.4f}")
    assert abs(estimate.stored_bytes / footprint - 1) < 0.02
    assert abs(estimate.total_bytes / measured.total_bytes - 1) < 0.02
    assert MemoryModel(config, dtype, model=model).weights_bytes == measured.total_bytes
    # Part by part too, as a model split over GPUs places them: parameters and buffers exactly.
    by_part = {part: w.stored_bytes for part, w in count_weight_bytes_by_module(config, dtype, quantization).items()}
    held = dict.fromkeys(by_part, 0)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        held[module_of(name)] += tensor.numel() * tensor.element_size()
    assert held == by_part
    if quantization is not None:
        # The layers left in full precision are the ones the memory model expects, and the
        # quantization state lies beyond what get_memory_footprint() sees.
        assert plain_linear_names(model) == unconverted_names(config, Quantization.parse(quantization))
        assert measured.quantization_state_bytes > 0
        assert measured.total_bytes > footprint


# ---------------------------------------------------------------------------
# The vision working set: what each strategy's hooks keep, as the registry says
# ---------------------------------------------------------------------------

HOOK_CASES = {
    "hired": HiREDConfig(budget=0.2),  # initial layer 0, final layer 2 (the feature layer -2 of 4)
    "hired, one layer for both": HiREDConfig(budget=0.2, initial_layer=2),
    "hired, negative final layer": HiREDConfig(budget=0.2, final_layer=-1),
    "prumerge+": HiREDConfig(budget=0.2, strategy="prumerge+"),
    "uniform": HiREDConfig(budget=0.2, strategy="uniform"),
    "random": HiREDConfig(budget=0.2, strategy="random"),
    "every token kept": HiREDConfig(budget=1.0, newlines="all"),
}


@pytest.mark.parametrize("case", list(HOOK_CASES))
def test_captured_projections_are_the_projections_prepare_hooks(tiny_next, monkeypatch, case):
    """Counted by watching ``hired.prepare_inputs`` register its hooks on the tower's q/k projections."""
    from hired import prepare_inputs

    model, processor = tiny_next
    config = HOOK_CASES[case]
    names = {id(module): name for name, module in model.named_modules()}
    hooked = set()
    register = torch.nn.Module.register_forward_hook

    def recording(module, hook, *args, **kwargs):
        hooked.add(names.get(id(module), "?"))
        return register(module, hook, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "register_forward_hook", recording)
    inputs = processor(images=[noise_image(672, 672)], text=[chat_prompt(processor, "a b")], return_tensors="pt")
    prepare_inputs(model, inputs, config)
    projections = {name for name in hooked if name.endswith(("q_proj", "k_proj"))}

    lengths = expected_lengths(model, (672, 672), inputs["input_ids"].shape[1], config)
    sizer = BatchSizer(MemoryModel(model.config, torch.float32), 4, free_bytes=None, hired_config=config)
    assert sizer.captured_projections([lengths]) == len(projections)
    # Not told the strategy, the sizer assumes the costliest; with nothing dropped, nothing is kept.
    unknown = BatchSizer(MemoryModel(model.config, torch.float32), 4, free_bytes=None)
    assert unknown.captured_projections([lengths]) >= len(projections)
    if lengths.visual_tokens_kept == lengths.visual_tokens_full:
        assert unknown.captured_projections([lengths]) == 0


def test_a_layer_outside_the_tower_is_refused_as_hired_refuses_it(tiny_next):
    from hired import prepare_inputs

    model, processor = tiny_next
    config = HiREDConfig(budget=0.2, initial_layer=4)
    inputs = processor(images=[noise_image(336, 336)], text=[chat_prompt(processor, "a")], return_tensors="pt")
    with pytest.raises(ValueError) as hired_error:
        prepare_inputs(model, inputs, config)
    with pytest.raises(ValueError) as memory_error:
        MemoryModel(model.config, torch.float32).worst_case_item_bytes(config, 10, 4)
    assert str(memory_error.value) == str(hired_error.value)


@pytest.mark.parametrize("kind", ["llava-next", "llava-1.5"])
@pytest.mark.parametrize("config", [None, HiREDConfig(budget=0.2), HiREDConfig(budget=0.3, newlines="all")])
def test_the_largest_image_is_the_costliest_hired_prepares(tiny_next, tiny_llava, kind, config):
    """Against ``hired.expected_lengths`` (hired's own geometry) over pictures of many shapes."""
    model, _ = tiny_next if kind == "llava-next" else tiny_llava
    largest = MemoryModel(model.config, torch.float32).largest_image(config)
    sizes = [(336, 336), (672, 672), (336, 1008), (1008, 336), (500, 1000), (900, 700), (20, 1500)]
    lengths = [expected_lengths(model, size, 10, config) for size in sizes]
    assert largest.partitions == max(x.partitions for x in lengths)
    assert largest.grid_tokens == max(x.visual_tokens_full for x in lengths)
    assert largest.visual_tokens_llm == max(x.visual_tokens_llm for x in lengths)


# ---------------------------------------------------------------------------
# The estimate against what transformers allocates (CPU, torch profiler)
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


PROFILED = {
    "every token": None,
    "hired 20%": HiREDConfig(budget=0.2),
    "prumerge+ 20%": HiREDConfig(budget=0.2, strategy="prumerge+"),
    "uniform 20%": HiREDConfig(budget=0.2, strategy="uniform"),
}


@pytest.mark.parametrize("case", list(PROFILED))
def test_estimate_bounds_what_transformers_allocates(small_llava_next, case):
    """The generation actor's estimate for a batch (``BatchSizer.padded_item_bytes`` from
    ``hired.expected_lengths``, as the pipeline computes it) against the profiler's peaks and the
    KV cache ``generate`` leaves."""
    from hired import prepare_inputs

    model, processor = small_llava_next
    config = PROFILED[case]
    torch.set_num_threads(2)
    batch, new_tokens = 3, 8
    images = [noise_image(672, 672, seed=i) for i in range(batch)]  # 2x2 grids, nothing unpadded
    # Prompts of different lengths, so the batch is padded and the causal mask is built.
    prompts = [chat_prompt(processor, "describe the image" + " red" * i) for i in range(batch)]
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    lengths = [
        expected_lengths(model, (672, 672), int(ids), config) for ids in inputs["attention_mask"].sum(dim=1)
    ]
    memory_model = MemoryModel(model.config, torch.float32, model=model)
    sizer = BatchSizer(memory_model, new_tokens, free_bytes=None, hired_config=config)
    item = sizer.padded_item_bytes(lengths)

    # Vision: the tower's working set with what the strategy's hooks keep, nearly to the byte.
    with torch.no_grad():
        vision_peak = profiled_peak_bytes(lambda: prepare_inputs(model, inputs, config))
        prepared = prepare_inputs(model, inputs, config)
    assert max(prepared.prompt_tokens) == max(x.prompt_tokens for x in lengths)  # the lengths the actor predicts
    vision_estimate = batch * item.vision_bytes
    assert 0.99 < vision_peak / vision_estimate < 1.01
    # Not told the strategy, the sizer assumes the costliest.
    unknown = BatchSizer(memory_model, new_tokens, free_bytes=None).padded_item_bytes(lengths)
    assert unknown.vision_bytes >= item.vision_bytes

    # Generation: KV cache + prefill bound the peak, and not by a wide margin.
    output = None

    def generate():
        nonlocal output
        with torch.no_grad():
            output = model.generate(
                **prepared.model_inputs(), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                return_dict_in_generate=True,
            )

    llm_peak = profiled_peak_bytes(generate)
    llm_estimate = batch * (item.kv_cache_bytes + item.prefill_bytes)
    print(f"{case}: measured / estimated: vision {vision_peak / vision_estimate:.3f}, "
          f"generation {llm_peak / llm_estimate:.3f}")  # pytest -s shows them
    assert 0.7 < llm_peak / llm_estimate <= 1.0
    # The cache generate leaves: every token but the last generated one, to the byte.
    cache = output.past_key_values
    cached = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    padded_length = max(prepared.prompt_tokens)
    assert cached == batch * memory_model.kv_cache_bytes(padded_length + new_tokens - 1)
    # The whole batch's figure, which micro-batches are cut by, bounds either phase.
    assert max(vision_peak, llm_peak) <= sizer.batch_bytes(lengths)


# ---------------------------------------------------------------------------
# The actor's micro-batches
# ---------------------------------------------------------------------------

NEW_TOKENS = 128
# The largest LLaVA-Next-7B items, as hired.expected_lengths gives them to the generation actor
# (a 2x2 grid, 60 text tokens): every token and its 48 newlines, and HiRED-20% without newlines.
FULL_LENGTHS = ItemLengths(
    partitions=5, visual_tokens_full=2880, visual_tokens_kept=2880, visual_tokens_llm=2928, prompt_tokens=2988
)
HIRED20_LENGTHS = ItemLengths(
    partitions=5, visual_tokens_full=2880, visual_tokens_kept=576, visual_tokens_llm=576, prompt_tokens=636
)
NO_MARGIN = Margin(fraction=0.0, fixed_bytes=0)


@pytest.fixture(scope="module")
def vicuna_7b() -> MemoryModel:
    return MemoryModel(checkpoint_config("llava-v1.6-vicuna-7b-hf"), torch.float16)


def test_fewer_tokens_fit_more_items(vicuna_7b):
    sizer = BatchSizer(vicuna_7b, NEW_TOKENS, 24 * GiB - vicuna_7b.weights_bytes, hired_config=HiREDConfig(budget=0.2))
    full = sizer.items_that_fit(sizer.padded_item_bytes([FULL_LENGTHS]))
    hired20 = sizer.items_that_fit(sizer.padded_item_bytes([HIRED20_LENGTHS]))
    assert 1 <= full < hired20
    assert sizer.items_that_fit(vicuna_7b.worst_case_item_bytes(None, 60, NEW_TOKENS)) == full
    assert sizer.items_that_fit(vicuna_7b.worst_case_item_bytes(HiREDConfig(budget=0.2), 60, NEW_TOKENS)) == hired20


def item_lengths():
    def build(prompt_tokens, partitions, kept_share):
        full = 576 * partitions
        kept = max(1, int(full * kept_share))
        return ItemLengths(partitions, full, kept, kept, prompt_tokens)

    return st.builds(build, st.integers(100, 4000), st.integers(1, 5), st.sampled_from([0.1, 0.2, 0.5, 1.0]))


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(item_lengths(), max_size=30),
    free_gib=st.floats(0.0, 40.0),
    ceiling=st.integers(1, MAX_BATCH_SIZE),
)
def test_micro_batches_fit_longest_first_and_are_as_large_as_allowed(vicuna_7b, lengths, free_gib, ceiling):
    sizer = BatchSizer(vicuna_7b, NEW_TOKENS, int(free_gib * GiB), NO_MARGIN, hired_config=HiREDConfig())
    sizer.sizes.lower_to(ceiling, "what OOM back-off taught")
    batches = sizer.micro_batches(lengths)
    order = [i for batch in batches for i in batch]
    assert sorted(order) == list(range(len(lengths)))  # every item exactly once
    prompts = [lengths[i].prompt_tokens for i in order]
    assert prompts == sorted(prompts, reverse=True)  # longest first
    for k, batch in enumerate(batches):
        members = [lengths[i] for i in batch]
        assert 1 <= len(batch) <= ceiling
        assert len(batch) == 1 or sizer.batch_bytes(members) <= sizer.usable_bytes  # fits, or alone
        if k + 1 < len(batches) and len(batch) < ceiling:  # one more would not have fitted
            assert sizer.batch_bytes(members + [lengths[batches[k + 1][0]]]) > sizer.usable_bytes


def test_items_fit_after_the_margin(vicuna_7b):
    item = ItemBytes(kv_cache_bytes=1 * GiB, prefill_bytes=GiB // 2, vision_bytes=GiB // 4)  # 1.75 GiB

    def sizer(free_bytes, margin):
        return BatchSizer(vicuna_7b, NEW_TOKENS, free_bytes, margin)

    quarter = Margin(fraction=0.0, fixed_bytes=GiB // 4)
    assert sizer(7 * GiB, quarter).items_that_fit(item) == 3  # 6.75 GiB usable: 3 x 1.75 = 5.25, 4 x = 7
    assert sizer(7 * GiB + GiB // 4, quarter).items_that_fit(item) == 4  # exactly 4 x 1.75
    ten = ItemBytes(10 * GiB, 0, 0)
    assert sizer(100 * GiB, Margin(fraction=0.5, fixed_bytes=0)).items_that_fit(ten) == 5
    assert sizer(100 * GiB, Margin(fraction=0.5, fixed_bytes=GiB)).items_that_fit(ten) == 4


def test_without_a_memory_figure_or_with_a_fixed_size_items_are_cut_at_that_size(vicuna_7b):
    lengths = [HIRED20_LENGTHS] * 5 + [FULL_LENGTHS] * 5
    cpu = BatchSizer(vicuna_7b, NEW_TOKENS, None)
    assert not cpu.sizing and cpu.sizes.batch_size == CPU_BATCH_SIZE == 4
    assert cpu.micro_batches(lengths) == [[5, 6, 7, 8], [9, 0, 1, 2], [3, 4]]  # longest first, memory ignored
    assert cpu.describe(None) == "batch size 4 (CPU default: no device memory figure)"
    assert cpu.learn_from_peak(lengths, peak_bytes=100 * GiB, baseline_bytes=0) is None
    fixed = BatchSizer(vicuna_7b, NEW_TOKENS, 1000 * GiB, fixed_batch_size=3)
    assert not fixed.sizing and [len(b) for b in fixed.micro_batches(lengths)] == [3, 3, 3, 1]
    assert fixed.describe(None) == "batch size 3 (fixed by the caller)"


def test_micro_batches_stay_under_the_ceiling_and_what_oom_back_off_taught(vicuna_7b):
    sizer = BatchSizer(vicuna_7b, NEW_TOKENS, 1000 * GiB, NO_MARGIN)  # room for far more than the ceiling
    assert sizer.sizes.batch_size == MAX_BATCH_SIZE
    assert [len(b) for b in sizer.micro_batches([HIRED20_LENGTHS] * 300)] == [MAX_BATCH_SIZE, 300 - MAX_BATCH_SIZE]
    sizer.sizes.lower_to(5, "out of memory on a batch of 10")
    assert [len(b) for b in sizer.micro_batches([HIRED20_LENGTHS] * 12)] == [5, 5, 2]


def test_an_item_too_large_alone_still_gets_a_batch(vicuna_7b):
    sizer = BatchSizer(vicuna_7b, NEW_TOKENS, 2 * GiB)  # 1 GiB fixed + 10% leaves 0.8 GiB: not one full item
    full = sizer.padded_item_bytes([FULL_LENGTHS])
    assert sizer.items_that_fit(full) == 0
    assert sizer.micro_batches([FULL_LENGTHS] * 3) == [[0], [1], [2]]  # OOM back-off makes them error rows
    line = sizer.describe(full)
    assert line.startswith("batch sizing: 2.00 GiB free after weights, 0.80 GiB usable (1.00 GiB + 10% held back); ")
    assert line.endswith(f"0 to a batch at {full.describe()}: such items would be out-of-memory error rows")


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        Margin(fraction=1.0)
    with pytest.raises(ValueError):
        Margin(fixed_bytes=-1)
    with pytest.raises(ValueError):
        AdaptiveBatchSize(0)


def test_a_peak_above_the_estimate_raises_it_and_lowers_later_batches(vicuna_7b):
    one = BatchSizer(vicuna_7b, NEW_TOKENS, None).batch_bytes([FULL_LENGTHS])
    sizer = BatchSizer(vicuna_7b, NEW_TOKENS, 14 * one, NO_MARGIN)
    assert [len(b) for b in sizer.micro_batches([FULL_LENGTHS] * 14)] == [14]
    baseline = 15 * GiB  # the weights
    note = sizer.learn_from_peak([FULL_LENGTHS] * 4, baseline + 4 * 2 * one, baseline)  # twice the estimate
    assert sizer.correction == pytest.approx(2.0)
    assert note == (f"a batch of 4 used {8 * one / GiB:.2f} GiB, 100% over the {4 * one / GiB:.2f} GiB predicted: "
                    "estimates raised by that much")
    assert sizer.batch_bytes([FULL_LENGTHS]) == 2 * one
    assert [len(b) for b in sizer.micro_batches([FULL_LENGTHS] * 14)] == [7, 7]
    # Corrections compound: the next peak is compared with the corrected estimate.
    sizer.learn_from_peak([FULL_LENGTHS], baseline + 3 * one, baseline)
    assert sizer.correction == pytest.approx(3.0)


def test_a_peak_below_the_estimate_changes_nothing(vicuna_7b):
    # A batch that stopped at EOS did not grow its KV cache to full length: no evidence of less.
    one = BatchSizer(vicuna_7b, NEW_TOKENS, None).batch_bytes([FULL_LENGTHS])
    sizer = BatchSizer(vicuna_7b, NEW_TOKENS, 14 * one, NO_MARGIN)
    assert sizer.learn_from_peak([FULL_LENGTHS] * 4, peak_bytes=GiB, baseline_bytes=0) is None
    assert sizer.learn_from_peak([FULL_LENGTHS] * 4, peak_bytes=4 * one, baseline_bytes=0) is None
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
