"""Every strategy under the same budget contract, on the tiny checkpoints: exactly B tokens an image,
shares summing to B, no padding, spatial order, determinism, batch invariance; and what is particular
to each of "uniform", "random" and "prumerge+"."""

import numpy as np
import pytest
import torch

from hired import HiREDConfig, prepare_inputs
from hired.budget import largest_remainder
from hired.models import adapter_for
from hired.prepare import _pixel_values_per_image
from hired import strategies
from hired.strategies import VisionNeeds
from hired.strategies.base import ImageSignals
from hired.strategies.random_subset import partition_seed
from hired.vision import encode

from .conftest import chat_prompt, noise_image
from .test_hired import SIZES, expected_budget

STRATEGIES = ["hired", "uniform", "random", "prumerge+"]  # written out: a strategy dropped from the registry fails here
BASELINES = ["uniform", "random", "prumerge+"]
BUDGETS = [0.05, 0.2, 0.4, 0.999, 1.0, 1, 64, 320, 640, 5000]
ODD_LATTICE = [y * 24 + x for y in range(1, 24, 2) for x in range(1, 24, 2)]


def batch(processor, images, texts=None):
    prompts = [chat_prompt(processor, t) for t in (texts or ["what is this"] * len(images))]
    return processor(images=images, text=prompts, return_tensors="pt", padding=True)


def noise_images(sizes):
    return [noise_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]


def image_rows(prepared, item, image_token_id):
    """The visual-token embeddings one item sends to the LLM."""
    ids, embeds = prepared.input_ids[item], prepared.inputs_embeds[item]
    return embeds[ids == image_token_id]


@pytest.fixture(scope="module")
def evidence(tiny_next):
    """Partitions and vision signals for SIZES, encoded once (as prepare_inputs does) for the contract test."""
    model, processor = tiny_next
    inputs = batch(processor, noise_images(SIZES))
    adapter = adapter_for(model)
    parts = [adapter.partitions(tuple(s.tolist())) for s in inputs["image_sizes"]]
    pixels = _pixel_values_per_image(inputs, [p.num_partitions for p in parts])
    vision = encode(adapter.tower, torch.cat(pixels), [-2], [0, 2], "sum", key_layers=[2])
    out, offset = [], 0
    for p, pv in zip(parts, pixels):
        span = slice(offset, offset + p.num_partitions)
        offset += p.num_partitions
        signals = ImageSignals(pv, vision.features[span], vision.cls_attention[0][span],
                               vision.cls_attention[2][span], vision.keys[2][span])
        out.append((p, signals))
    return out


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_budget_contract(evidence, strategy, alpha):
    for budget in BUDGETS:
        config = HiREDConfig(budget=budget, alpha=alpha, strategy=strategy)
        for parts, signals in evidence:
            n, b = parts.grid_tokens, expected_budget(budget, parts.grid_tokens)
            selection = strategies.get(strategy).select(parts, signals, config)
            shares = [len(k) for k in selection.kept]
            assert len(shares) == parts.num_partitions and sum(shares) == b
            for p, kept in enumerate(selection.kept):
                assert kept.dtype == torch.long
                assert parts.valid[p][kept].all(), "a kept token is padding"
                assert (kept[1:] > kept[:-1]).all(), "kept tokens must be distinct and in spatial order"
            if strategy != "hired":
                # Proportional to the valid token counts, whatever alpha says: within one token of b * c / n.
                capacities = parts.capacities
                assert shares == largest_remainder(b, capacities, capacities)
                assert all(abs(s - b * c / n) < 1 for s, c in zip(shares, capacities))
            if selection.features is None:
                assert strategy != "prumerge+"
            else:
                assert [f.shape for f in selection.features] == [(s, signals.features.shape[-1]) for s in shares]


@pytest.mark.parametrize("strategy", BASELINES)
@pytest.mark.parametrize("budget", [0.2, 640])
def test_exact_budget_through_prepare_inputs(tiny_next, strategy, budget):
    model, processor = tiny_next
    prepared = prepare_inputs(model, batch(processor, noise_images(SIZES)), HiREDConfig(budget=budget, strategy=strategy))
    for i, parts in enumerate(prepared.partitions):
        b = expected_budget(budget, parts.grid_tokens)
        assert prepared.visual_tokens_kept[i] == b == sum(prepared.partition_budgets[i])
        assert int((prepared.input_ids[i] == model.config.image_token_id).sum()) == b == prepared.visual_tokens_llm[i]
        for p, kept in enumerate(prepared.kept_indices[i]):
            assert len(kept) == prepared.partition_budgets[i][p]
            assert parts.valid[p][kept].all() and (kept[1:] > kept[:-1]).all()


@pytest.mark.parametrize("strategy", BASELINES)
def test_strategies_work_on_llava_15(tiny_llava, strategy):
    model, processor = tiny_llava
    inputs = batch(processor, noise_images([(480, 640), (20, 400)]))
    for budget, kept in [(0.2, 115), (320, 320)]:
        prepared = prepare_inputs(model, inputs, HiREDConfig(budget=budget, strategy=strategy))
        assert prepared.partition_budgets == [[kept]] * 2
        assert (prepared.input_ids == model.config.image_token_id).sum(dim=1).tolist() == [kept] * 2


@pytest.mark.parametrize("strategy", BASELINES)
def test_same_config_same_choice(tiny_next, strategy):
    model, processor = tiny_next
    inputs = batch(processor, noise_images([(480, 640), (1000, 200)]))
    config = HiREDConfig(budget=0.2, strategy=strategy)
    first, second = prepare_inputs(model, inputs, config), prepare_inputs(model, inputs, config)
    for a, b in zip(first.kept_indices, second.kept_indices):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(first.inputs_embeds, second.inputs_embeds)


@pytest.mark.parametrize("strategy", BASELINES)
def test_batch_invariance(tiny_next, strategy):
    model, processor = tiny_next
    images = [noise_image(300, 900, seed=11), noise_image(480, 640, seed=12)]
    config = HiREDConfig(budget=0.2, strategy=strategy)
    batched = prepare_inputs(model, batch(processor, images), config)
    image_token = model.config.image_token_id
    alone = prepare_inputs(model, batch(processor, [images[1]]), config)
    assert all(torch.equal(x, y) for x, y in zip(alone.kept_indices[0], batched.kept_indices[1]))
    torch.testing.assert_close(image_rows(alone, 0, image_token), image_rows(batched, 1, image_token))
    # Reversed order: the item's place in the batch does not matter either.
    reversed_ = prepare_inputs(model, batch(processor, images[::-1]), config)
    for i in range(2):
        assert all(torch.equal(x, y) for x, y in zip(reversed_.kept_indices[1 - i], batched.kept_indices[i]))
        torch.testing.assert_close(image_rows(reversed_, 1 - i, image_token), image_rows(batched, i, image_token))


def drawn(tiny_next, images, seed):
    model, processor = tiny_next
    return prepare_inputs(model, batch(processor, images), HiREDConfig(budget=0.2, strategy="random", seed=seed))


def test_random_depends_on_the_seed_and_the_image(tiny_next):
    images = [noise_image(480, 640, seed=1), noise_image(480, 640, seed=2)]
    seed0, seed1 = drawn(tiny_next, images, 0), drawn(tiny_next, images, 1)
    # Every partition draws afresh: 115 of 576 twice alike would be a broken generator.
    for a, b in zip(seed0.kept_indices[0], seed1.kept_indices[0]):
        assert not torch.equal(a, b)
    # Two pictures of one size do not share a pattern, and no two partitions of one picture do.
    for a, b in zip(seed0.kept_indices[0], seed0.kept_indices[1]):
        assert not torch.equal(a, b)
    sub_images = seed0.kept_indices[0][1:]
    assert len({tuple(k.tolist()) for k in sub_images}) == len(sub_images)


def test_partition_seed_is_stable_and_mixes_its_inputs():
    pixels = torch.arange(12, dtype=torch.float32).view(3, 2, 2) / 7  # values float16 cannot hold exactly
    seed = partition_seed(0, 1, pixels)
    assert seed == partition_seed(0, 1, pixels.clone()) and 0 <= seed < 2**63
    assert seed == partition_seed(0, 1, pixels.half())  # CPU float32 and GPU float16 pixels draw alike
    assert len({seed, partition_seed(1, 1, pixels), partition_seed(0, 2, pixels), partition_seed(0, 1, pixels + 1)}) == 4


def test_uniform_keeps_the_odd_lattice_of_every_partition(tiny_next, tiny_llava):
    # 672x672: a 2x2 grid, all 5 partitions fully valid (N = 2880); 720 tokens are 144 a partition.
    model, processor = tiny_next
    prepared = prepare_inputs(model, batch(processor, [noise_image(672, 672)]), HiREDConfig(budget=720, strategy="uniform"))
    assert prepared.partition_budgets == [[144] * 5]
    assert all(kept.tolist() == ODD_LATTICE for kept in prepared.kept_indices[0])
    model, processor = tiny_llava
    prepared = prepare_inputs(model, batch(processor, [noise_image(480, 640)]), HiREDConfig(budget=144, strategy="uniform"))
    assert prepared.kept_indices[0][0].tolist() == ODD_LATTICE


def numpy_outliers(attention, valid):
    q1, q3 = np.percentile(attention[valid], [25, 75])
    return set(np.nonzero(valid & (attention > q3 + 1.5 * (q3 - q1)))[0].tolist())


@pytest.mark.parametrize("budget", [0.2, 12])
def test_prumerge_plus_keeps_the_iqr_outliers(tiny_next, budget):
    model, processor = tiny_next
    inputs = batch(processor, noise_images([(480, 640), (300, 900), (672, 672)]))
    prepared = prepare_inputs(model, inputs, HiREDConfig(budget=budget, strategy="prumerge+"))
    adapter = adapter_for(model)
    pixels = _pixel_values_per_image(inputs, [p.num_partitions for p in prepared.partitions])
    seen = {"all kept": 0, "top kept": 0}
    for i, parts in enumerate(prepared.partitions):
        attention = encode(adapter.tower, pixels[i], [-2], [2]).cls_attention[2].numpy()
        for p, kept in enumerate(prepared.kept_indices[i]):
            outliers, share = numpy_outliers(attention[p], parts.valid[p].numpy()), len(kept)
            if len(outliers) <= share:
                assert outliers <= set(kept.tolist())
                seen["all kept"] += bool(outliers)
            else:  # too many outliers for the share: the ones with the highest attention
                assert set(kept.tolist()) <= outliers
                dropped = outliers - set(kept.tolist())
                assert min(attention[p][kept]) >= max(attention[p][list(dropped)])
                seen["top kept"] += 1
    # The random tiny model does have outliers, and the small budget runs out of room for them.
    assert seen["all kept"] > 0 if budget == 0.2 else seen["top kept"] > 0


def reference_merge(features, keys, weights, kept, valid):
    """PruMerge's merge written out token by token, to check the vectorised one against."""
    kept = kept.tolist()
    total = {k: weights[k] * features[k] for k in kept}
    mass = {k: weights[k] for k in kept}
    unit = keys / keys.norm(dim=-1, keepdim=True)
    for j in range(len(features)):
        if valid[j] and j not in total:
            owner = kept[int(torch.argmax(unit[kept] @ unit[j]))]
            total[owner] = total[owner] + weights[j] * features[j]
            mass[owner] = mass[owner] + weights[j]
    return torch.stack([total[k] / mass[k] for k in kept])


def test_prumerge_plus_merges_dropped_tokens_into_the_llm_input(tiny_llava):
    model, processor = tiny_llava
    inputs = batch(processor, [noise_image(480, 640, seed=3)])
    prepared = prepare_inputs(model, inputs, HiREDConfig(budget=0.2, strategy="prumerge+"))
    kept = prepared.kept_indices[0][0]
    assert len(kept) == 115
    adapter = adapter_for(model)
    vision = encode(adapter.tower, inputs["pixel_values"], [-2], [2], key_layers=[2])
    features, keys, weights = vision.features[0], vision.keys[2][0], vision.cls_attention[2][0]
    sent = image_rows(prepared, 0, model.config.image_token_id)
    with torch.no_grad():
        unmerged = adapter.projector(features[kept])
        merged = adapter.projector(reference_merge(features, keys, weights, kept, torch.ones(576, dtype=torch.bool)))
    torch.testing.assert_close(sent, merged, rtol=1e-4, atol=1e-5)
    changed = (sent - unmerged).abs().amax(dim=1) > 1e-4
    assert changed.float().mean() > 0.5, "most kept tokens absorb some dropped ones"


def test_prumerge_plus_merged_features_reach_llava_next_in_order(tiny_next):
    model, processor = tiny_next
    inputs = batch(processor, [noise_image(480, 640, seed=4)])
    config = HiREDConfig(budget=0.2, strategy="prumerge+")
    prepared = prepare_inputs(model, inputs, config)
    adapter = adapter_for(model)
    parts = prepared.partitions[0]
    pixels = inputs["pixel_values"][0, : parts.num_partitions]
    vision = encode(adapter.tower, pixels, [-2], [2], key_layers=[2])
    merged_features = vision.features.clone()
    for p, kept in enumerate(prepared.kept_indices[0]):
        merged_features[p, kept] = reference_merge(
            vision.features[p], vision.keys[2][p], vision.cls_attention[2][p], kept, parts.valid[p]
        )
    order = adapter.token_order(parts, prepared.kept_indices[0], "none")
    with torch.no_grad():
        expected = adapter.projector(merged_features.flatten(0, 1)[order])
        unmerged = adapter.projector(vision.features.flatten(0, 1)[order])
    sent = image_rows(prepared, 0, model.config.image_token_id)
    torch.testing.assert_close(sent, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(sent, unmerged, rtol=1e-4, atol=1e-4)


def test_prumerge_plus_at_full_budget_is_the_stock_input(tiny_next):
    model, processor = tiny_next
    inputs = batch(processor, noise_images([(480, 640), (1000, 200)]))
    stock = prepare_inputs(model, inputs, None)
    full = prepare_inputs(model, inputs, HiREDConfig(budget=1.0, newlines="all", strategy="prumerge+"))
    assert torch.equal(full.inputs_embeds, stock.inputs_embeds)


def test_only_prumerge_plus_asks_for_keys_and_baselines_need_no_attention():
    needs = {name: strategies.get(name).needs(0, 2) for name in STRATEGIES}
    assert needs["hired"] == VisionNeeds(attention_layers=(0, 2))
    assert strategies.get("hired").needs(2, 2) == VisionNeeds(attention_layers=(2,))
    assert needs["uniform"] == needs["random"] == VisionNeeds()
    assert needs["prumerge+"] == VisionNeeds(attention_layers=(2,), key_layers=(2,))
    # What the tower's hooks hold until it has run: q and k per attention layer, k per other key layer.
    assert [needs[name].captured_projections for name in STRATEGIES] == [4, 0, 0, 2]
    assert VisionNeeds(attention_layers=(2,), key_layers=(0,)).captured_projections == 3


def test_the_registry_is_what_config_and_command_lines_offer():
    assert tuple(STRATEGIES) == strategies.NAMES
    with pytest.raises(ValueError, match="unknown strategy 'fastv'; choose from hired, uniform"):
        strategies.get("fastv")
    assert strategies.STOCK not in strategies.REGISTRY  # "none" keeps every token: not a strategy


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strategy": "fastv"}, "strategy must be one of"),
        ({"strategy": "HiRED"}, "strategy must be one of"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"seed": True}, "seed must be an integer"),
        ({"seed": "0"}, "seed must be an integer"),
    ],
)
def test_bad_strategy_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HiREDConfig(**kwargs)


def test_hired_is_the_default_and_unchanged_by_the_seed(tiny_next):
    model, processor = tiny_next
    inputs = batch(processor, noise_images([(480, 640)]))
    default = prepare_inputs(model, inputs, HiREDConfig(budget=0.2))
    named = prepare_inputs(model, inputs, HiREDConfig(budget=0.2, strategy="hired", seed=7))
    assert torch.equal(default.inputs_embeds, named.inputs_embeds)
    assert default.partition_budgets == named.partition_budgets
    assert HiREDConfig().strategy == "hired" and HiREDConfig().seed == 0
