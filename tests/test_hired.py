"""HiRED on the tiny LLaVA-Next and LLaVA-1.5 checkpoints: exact budgets, the paper's
selection rule, equivalence to stock transformers, batch invariance, clear errors."""

import math
from fractions import Fraction

import pytest
import torch

import hired
from hired import HiREDConfig, prepare_inputs
from hired.budget import round_half_up
from hired.generation import trim_at_eos
from hired.models import adapter_for
from hired.strategies.hired import partition_budgets
from hired.vision import VisionTower, encode

from .conftest import chat_prompt, noise_image

SIZES = [(480, 640), (300, 900), (1000, 200), (1, 4000), (4000, 1), (1, 1), (336, 336), (1333, 777), (37, 1911)]
BUDGETS = [0.1, 0.2, 0.4, 1.0, 0.999, 1, 64, 320, 640, 5000]


def expected_budget(budget, n):
    if isinstance(budget, int):
        return min(budget, n)
    return math.floor(Fraction(repr(budget)) * n)


def processed(processor, sizes, texts=None):
    images = [noise_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    texts = texts or ["what is this"] * len(sizes)
    prompts = [chat_prompt(processor, t) for t in texts]
    return images, prompts, processor(images=images, text=prompts, return_tensors="pt", padding=True)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("budget", BUDGETS)
def test_exact_budget_for_every_image(tiny_next, budget, alpha):
    model, processor = tiny_next
    _, _, inputs = processed(processor, SIZES)
    prepared = prepare_inputs(model, inputs, HiREDConfig(budget=budget, alpha=alpha))
    image_token = model.config.image_token_id
    for i, parts in enumerate(prepared.partitions):
        n = parts.grid_tokens
        b = expected_budget(budget, n)
        assert prepared.visual_tokens_full[i] == n
        assert prepared.visual_tokens_kept[i] == b
        assert sum(prepared.partition_budgets[i]) == b
        # Exactly B placeholders reach the LLM (newlines are dropped by default).
        assert int((prepared.input_ids[i] == image_token).sum()) == b == prepared.visual_tokens_llm[i]
        for p, kept in enumerate(prepared.kept_indices[i]):
            assert len(kept) == prepared.partition_budgets[i][p]
            assert parts.valid[p][kept].all(), "a kept token is padding that unpadding throws away"
            assert (kept[1:] > kept[:-1]).all(), "kept tokens must keep their spatial order"
        # The full view gets round(alpha * B), unless the sub-images cannot hold the rest.
        full_share = prepared.partition_budgets[i][0]
        wanted = min(round_half_up(alpha * b), 576)
        sub_capacity = sum(parts.capacities[1:])
        assert full_share == max(wanted, b - sub_capacity)


def test_subimage_shares_follow_initial_layer_attention(tiny_next):
    """Step 1 reproduced by hand: shares proportional to the full-view attention in each region."""
    model, processor = tiny_next
    _, _, inputs = processed(processor, [(672, 672)])
    adapter = adapter_for(model)
    tower = adapter.tower
    vision = encode(tower, inputs["pixel_values"][0], [-2], [0, 2])
    full_view = vision.cls_attention[0][0].view(24, 24)
    quarters = [full_view[:12, :12], full_view[:12, 12:], full_view[12:, :12], full_view[12:, 12:]]
    scores = torch.stack([q.sum() for q in quarters])
    config = HiREDConfig(budget=0.2)
    parts = adapter.partitions((672, 672))
    budgets = partition_budgets(parts, vision.cls_attention[0], config)
    b = math.floor(0.2 * 2880)
    assert budgets[0] == b // 2
    ideal = (b - b // 2) * scores / scores.sum()
    assert sum(budgets[1:]) == b - b // 2
    assert all(abs(share - float(q)) < 1 for share, q in zip(budgets[1:], ideal))
    # The selection keeps each partition's top tokens by the final layer's CLS attention.
    prepared = prepare_inputs(model, inputs, config)
    final = vision.cls_attention[2]
    for p, kept in enumerate(prepared.kept_indices[0]):
        top = torch.topk(final[p], len(kept)).indices.sort().values
        assert torch.equal(kept, top)


def test_cls_attention_from_hooks_equals_the_models_attention_maps(tiny_next):
    """Our CLS row, computed from captured queries and keys, equals the eager attention map's row 0."""
    model, processor = tiny_next
    _, _, inputs = processed(processor, [(480, 640)])
    pixels = inputs["pixel_values"][0]
    tower = VisionTower.of(model.model.vision_tower)
    ours = encode(tower, pixels, [-2], [0, 1, 3])
    original = model.model.vision_tower.config._attn_implementation
    model.model.vision_tower.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model.model.vision_tower(pixels, output_attentions=True)
    finally:
        model.model.vision_tower.set_attn_implementation(original)
    for layer in (0, 1, 3):
        reference = out.attentions[layer][:, :, 0, 1:].sum(dim=1)  # (P, 576): heads summed, CLS row
        torch.testing.assert_close(ours.cls_attention[layer], reference, rtol=1e-5, atol=1e-6)


def test_vision_tower_keeps_sdpa(tiny_next, monkeypatch):
    """HiRED never asks for attention maps, so the tower never falls back to eager attention."""
    import transformers.models.clip.modeling_clip as clip

    model, processor = tiny_next
    assert model.model.vision_tower.config._attn_implementation == "sdpa"

    def forbidden(*args, **kwargs):
        raise AssertionError("eager attention used")

    monkeypatch.setattr(clip, "eager_attention_forward", forbidden)
    _, _, inputs = processed(processor, [(480, 640), (300, 900)])
    prepare_inputs(model, inputs, HiREDConfig(budget=0.2))


@pytest.mark.parametrize("fixture", ["tiny_next", "tiny_llava"])
def test_no_dropping_equals_stock_generate(request, fixture):
    model, processor = request.getfixturevalue(fixture)
    sizes = [(480, 640), (300, 900), (1000, 200), (336, 336)]
    texts = ["what is this", "describe the picture", "how many cars are there", "is the sky blue"]
    images, prompts, inputs = processed(processor, sizes, texts)
    stock = model.generate(**inputs, max_new_tokens=12, do_sample=False)[:, inputs["input_ids"].shape[1] :]
    eos = model.generation_config.eos_token_id
    stock_rows = [trim_at_eos(row, {eos}) for row in stock.tolist()]
    for config in (None, HiREDConfig(budget=1.0, newlines="all")):
        batched = hired.generate(model, processor, images, prompts, config, max_new_tokens=12)
        assert [r.token_ids for r in batched] == stock_rows
        for i in (0, 2):
            alone = hired.generate(model, processor, images[i], prompts[i], config, max_new_tokens=12)[0]
            single = processor(images=images[i], text=prompts[i], return_tensors="pt")
            stock_alone = model.generate(**single, max_new_tokens=12, do_sample=False)
            stock_alone = stock_alone[0, single["input_ids"].shape[1] :].tolist()
            assert alone.token_ids == stock_alone == stock_rows[i]


def test_stock_layout_inputs_equal_the_models_own_embeddings(tiny_next):
    """At 100% with stock newlines the LLM input is the stock model's, position for position."""
    model, processor = tiny_next
    _, _, inputs = processed(processor, [(480, 640), (1000, 200)])
    prepared = prepare_inputs(model, inputs, None)
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
    for i in range(2):
        ids = prepared.input_ids[i][prepared.attention_mask[i].bool()]
        stock_ids = inputs["input_ids"][i][inputs["attention_mask"][i].bool()]
        assert torch.equal(ids, stock_ids)
        embeds = prepared.inputs_embeds[i][prepared.attention_mask[i].bool()]
        visual = embeds[ids == model.config.image_token_id]
        torch.testing.assert_close(visual, features[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_next", "tiny_llava"])
def test_batch_invariance_with_dropping(request, fixture):
    model, processor = request.getfixturevalue(fixture)
    # (LLaVA-1.5's processor resizes the short side to 336: a 1x4000 picture would become 336x1.3M pixels.)
    extreme = (1, 4000) if fixture == "tiny_next" else (20, 400)
    sizes = [(480, 640), (300, 900), (1000, 200), extreme, (1333, 777)]
    texts = ["what is this", "describe the picture in one short caption", "red", "is there a dog", "color"]
    images, prompts, _ = processed(processor, sizes, texts)
    config = HiREDConfig(budget=0.2)
    batched = hired.generate(model, processor, images, prompts, config, max_new_tokens=10)
    for i in range(len(images)):
        alone = hired.generate(model, processor, [images[i]], [prompts[i]], config, max_new_tokens=10)[0]
        assert alone.token_ids == batched[i].token_ids
        assert alone.partition_budgets == batched[i].partition_budgets
        for a, b in zip(alone.kept_indices, batched[i].kept_indices):
            assert torch.equal(a, b)


def test_dropping_changes_what_the_llm_sees(tiny_next):
    model, processor = tiny_next
    images, prompts, _ = processed(processor, [(480, 640)] * 3, ["what is this", "red", "sky"])
    full = hired.generate(model, processor, images, prompts, None, max_new_tokens=8)
    pruned = hired.generate(model, processor, images, prompts, HiREDConfig(budget=0.1), max_new_tokens=8)
    assert [r.prompt_tokens for r in pruned] == [r.prompt_tokens - (2304 + 36 - 230) for r in full]
    assert [r.token_ids for r in pruned] != [r.token_ids for r in full]


def test_llava_15_takes_the_whole_budget_in_its_single_view(tiny_llava):
    model, processor = tiny_llava
    _, _, inputs = processed(processor, [(480, 640), (20, 400), (900, 300)])
    for budget, kept in [(0.2, 115), (0.5, 288), (320, 320), (1.0, 576)]:
        prepared = prepare_inputs(model, inputs, HiREDConfig(budget=budget))
        assert prepared.visual_tokens_full == [576] * 3
        assert prepared.visual_tokens_kept == [kept] * 3
        assert prepared.partition_budgets == [[kept]] * 3
        assert (prepared.input_ids == model.config.image_token_id).sum(dim=1).tolist() == [kept] * 3


@pytest.mark.parametrize("mode", ["none", "kept_rows", "all"])
def test_newline_modes(tiny_next, mode):
    model, processor = tiny_next
    _, _, inputs = processed(processor, [(480, 640), (4000, 1), (1000, 200)])
    prepared = prepare_inputs(model, inputs, HiREDConfig(budget=0.05, newlines=mode))
    for i, parts in enumerate(prepared.partitions):
        layout = parts.layout
        rows_with_kept = 0
        if layout.sub_tokens:
            kept_grid = torch.zeros(layout.grid[0] * 24, layout.grid[1] * 24, dtype=torch.bool)
            for tile, kept in enumerate(prepared.kept_indices[i][1:]):
                r, c = divmod(tile, layout.grid[1])
                kept_grid[r * 24 + kept // 24, c * 24 + kept % 24] = True
            rows_with_kept = int(kept_grid.any(dim=1).sum())
        extra = {"none": 0, "kept_rows": rows_with_kept, "all": layout.newline_tokens}[mode]
        assert prepared.visual_tokens_llm[i] == prepared.visual_tokens_kept[i] + extra


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"budget": 0}, "token count"),
        ({"budget": -0.2}, r"\(0, 1\]"),
        ({"budget": 1.5}, r"\(0, 1\]"),
        ({"budget": 0.0}, r"\(0, 1\]"),
        ({"budget": True}, "fraction"),
        ({"budget": "20x"}, "not a number"),
        ({"budget": "1"}, "ambiguous"),
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": 1.1}, "alpha"),
        ({"head_reduction": "mean-ish"}, "head_reduction"),
        ({"newlines": "some"}, "newlines"),
        ({"initial_layer": 1.5}, "initial_layer"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HiREDConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{"initial_layer": 4}, {"final_layer": -5}, {"final_layer": 99}])
def test_layer_out_of_range_is_refused(tiny_next, kwargs):
    model, processor = tiny_next
    _, _, inputs = processed(processor, [(480, 640)])
    with pytest.raises(ValueError, match="out of range for a vision tower with 4 layers"):
        prepare_inputs(model, inputs, HiREDConfig(**kwargs))


def test_negative_layers_count_from_the_end(tiny_next):
    model, processor = tiny_next
    _, _, inputs = processed(processor, [(480, 640)])
    a = prepare_inputs(model, inputs, HiREDConfig(initial_layer=-4, final_layer=-2))
    b = prepare_inputs(model, inputs, HiREDConfig(initial_layer=0, final_layer=2))
    c = prepare_inputs(model, inputs, HiREDConfig(initial_layer=0, final_layer=None))  # feature layer -2 -> layer 2
    assert a.partition_budgets == b.partition_budgets == c.partition_budgets
    assert all(torch.equal(x, y) for x, y in zip(a.kept_indices[0], c.kept_indices[0]))


def test_model_without_cls_token_is_refused(tmp_path):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, SiglipVisionConfig

    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=336, patch_size=14)
    config = LlavaNextConfig(vision_config=vision, text_config={"model_type": "llama", "hidden_size": 32,
                             "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                             "vocab_size": 64}, image_token_id=5)
    model = LlavaNextForConditionalGeneration(config)
    with pytest.raises(hired.NoClsTokenError, match="no CLS token"):
        prepare_inputs(model, {"input_ids": [[5]], "pixel_values": torch.zeros(1, 3, 3, 336, 336),
                               "image_sizes": [[336, 672]]}, HiREDConfig())


def test_prompt_errors(tiny_next):
    model, processor = tiny_next
    image = noise_image(64, 64)
    with pytest.raises(ValueError, match="exactly once"):
        hired.generate(model, processor, [image], ["no image token here"], max_new_tokens=2)
    with pytest.raises(ValueError, match="2 prompts"):
        hired.generate(model, processor, [image], ["<image> a", "<image> b"], max_new_tokens=2)


def test_processor_model_mismatch_is_explained(tiny_next):
    model, processor = tiny_next
    _, _, inputs = processed(processor, [(480, 640)])
    ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool()]
    shorter = {"input_ids": [ids[1:]], "pixel_values": inputs["pixel_values"], "image_sizes": inputs["image_sizes"]}
    image_positions = (ids == model.config.image_token_id).nonzero().flatten()
    keep = torch.ones(len(ids), dtype=torch.bool)
    keep[image_positions[0]] = False
    one_short = dict(shorter, input_ids=[ids[keep]])
    with pytest.raises(ValueError, match="processor does not match the model"):
        prepare_inputs(model, one_short, HiREDConfig())


def test_unsupported_model_is_refused():
    with pytest.raises(TypeError, match="supports"):
        adapter_for(torch.nn.Linear(2, 2))
