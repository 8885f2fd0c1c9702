"""The decode loop (hired.decode): equal to transformers' generate under greedy decoding, sampling
controls, stop strings, constrained choices, several prompts per picture, device-side selection."""

import pytest
import torch

import hired
from hired import DecodeOptions, HiREDConfig, Sampling, prepare_inputs
from hired.decode import Decoder, trim_at_eos

from .conftest import chat_prompt, noise_image

MIXED_SIZES = [(480, 640), (300, 900), (1000, 200), (336, 336)]
TEXTS = ["what is this", "describe the picture", "how many cars are there", "is the sky blue"]
LOOPS = {
    "static": DecodeOptions(cache="static", sync_every=1),
    "static-sync4": DecodeOptions(cache="static", sync_every=4),
    "dynamic": DecodeOptions(cache="dynamic", sync_every=3),
}


def processed(processor, sizes, texts):
    images = [noise_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    prompts = [chat_prompt(processor, t) for t in texts]
    return images, prompts, processor(images=images, text=prompts, return_tensors="pt", padding=True)


def stock_tokens(model, prepared, new_tokens):
    """What transformers' generate makes of the same pruned inputs (the loop hired used before its own)."""
    out = model.generate(**prepared.model_inputs(), max_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=model.generation_config.pad_token_id)
    return [trim_at_eos(row, {model.generation_config.eos_token_id}) for row in out.tolist()]


CONFIGS = [None] + [HiREDConfig(budget=b, strategy=s) for s in hired.STRATEGIES for b in (0.1, 640)]


@pytest.mark.parametrize("fixture", ["tiny_next", "tiny_llava"])
def test_greedy_loop_equals_transformers_generate(request, fixture):
    model, processor = request.getfixturevalue(fixture)
    _, _, inputs = processed(processor, MIXED_SIZES, TEXTS)
    decoders = {name: Decoder(model, processor, options) for name, options in LOOPS.items()}
    for config in CONFIGS:
        prepared = prepare_inputs(model, inputs, config)
        expected = stock_tokens(model, prepared, 12)
        assert any(len(t) == 12 for t in expected), "some row should run the whole length"
        for name, decoder in decoders.items():
            rows = decoder(prepared, 12).rows
            assert [r.token_ids for r in rows] == expected, (name, config)
            for r, ids in zip(rows, expected):
                assert r.text == processor.decode(ids, skip_special_tokens=True).strip()
                assert r.finish_reason == ("eos" if ids[-1] == model.generation_config.eos_token_id else "length")


def test_padded_buckets_change_nothing(tiny_next):
    """Rows padded to a bucket (4 for 3) and the cache rounded up (to 256) give the unpadded rows' tokens."""
    model, processor = tiny_next
    _, _, inputs = processed(processor, MIXED_SIZES[:3], TEXTS[:3])
    prepared = prepare_inputs(model, inputs, HiREDConfig(budget=0.2))
    decoded = Decoder(model, processor, DecodeOptions(cache="static", pad_to_buckets=True, sync_every=2))(prepared, 10)
    assert decoded.timing.batch == 4 and decoded.timing.cache_length % 256 == 0
    assert [r.token_ids for r in decoded.rows] == stock_tokens(model, prepared, 10)


@pytest.mark.slow  # inductor compiles the tiny model's decode step on the CPU: about a minute on 2 cores
def test_compiled_step_equals_eager(tiny_next):
    model, processor = tiny_next
    _, _, inputs = processed(processor, MIXED_SIZES[:3], TEXTS[:3])
    prepared = prepare_inputs(model, inputs, HiREDConfig(budget=0.2))
    decoder = Decoder(model, processor, DecodeOptions(cache="static", compile=True, compile_mode="default", sync_every=4))
    expected = stock_tokens(model, prepared, 10)
    for _ in range(2):  # the second call reuses the compiled step and the cache
        assert [r.token_ids for r in decoder(prepared, 10).rows] == expected


@pytest.mark.parametrize(
    "kwargs, message",
    [({"cache": "paged"}, "cache must be one of"), ({"sync_every": 0}, "sync_every"),
     ({"cache": "dynamic", "compile": True}, "needs cache='static'"), ({"batch_buckets": (4, 2)}, "increasing")],
)
def test_bad_decode_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecodeOptions(**kwargs)


def test_device_defaults():
    cpu, cuda = DecodeOptions().resolve(torch.device("cpu")), DecodeOptions().resolve(torch.device("cuda"))
    assert (cpu.cache, cpu.compile, cpu.sync_every, cpu.pad_to_buckets) == ("static", False, 1, False)
    assert (cuda.cache, cuda.compile, cuda.sync_every, cuda.pad_to_buckets) == ("static", True, 8, True)
    assert DecodeOptions(compile=False).resolve(torch.device("cuda")).pad_to_buckets is False

def test_driven_as_the_predictor_drives_it(tiny_next):
    """The pipeline's way in: per-row arrays from the preprocess stage, one Decoder held across calls,
    TTFT counted from before the inputs were prepared."""
    import time

    import numpy as np

    model, processor = tiny_next
    config = HiREDConfig(budget=0.2)
    items = []
    for i, (h, w) in enumerate(MIXED_SIZES[:3]):
        one = processor(images=[noise_image(h, w, seed=i)], text=[chat_prompt(processor, TEXTS[i])], return_tensors="np")
        items.append({k: v[0] for k, v in one.items()})
    decoder = Decoder(model, processor)
    for _ in range(2):  # the held decoder gives the same rows again
        started = time.perf_counter()
        inputs = {"input_ids": [torch.as_tensor(np.asarray(it["input_ids"])) for it in items],
                  "pixel_values": [torch.as_tensor(it["pixel_values"]) for it in items],
                  "image_sizes": [it["image_sizes"].tolist() for it in items]}
        prepared = prepare_inputs(model, inputs, config)
        decoded = decoder(prepared, 8, started=started)
        assert [r.token_ids for r in decoded.rows] == stock_tokens(model, prepared, 8)
        timing = decoded.timing
        assert timing.started == started <= timing.first_token <= timing.finished
        assert timing.batch == 3 and 1 <= timing.steps <= 8
        assert timing.cache_length == prepared.attention_mask.shape[1] + 8


# -- sampling -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": 1.0, "top_p": 0.0}, "top_p"),
        ({"temperature": 1.0, "top_p": 1.5}, "top_p"),
        ({"temperature": 1.0, "top_k": 0}, "top_k"),
        ({"temperature": 1.0, "top_k": 2.5}, "top_k"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"seed": -1}, "seed"),
        ({"seed": True}, "seed"),
        ({"stop": [""]}, "stop"),
        ({"top_p": 0.9}, "temperature > 0"),
        ({"top_k": 5}, "temperature > 0"),
    ],
)
def test_bad_sampling_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**kwargs)


def test_sampling_overrides():
    job = Sampling(temperature=0.7, seed=1, stop="###")
    assert job.stop == ("###",)
    row = job.with_overrides({"seed": 5, "top_p": None})
    assert (row.temperature, row.seed, row.top_p, row.stop) == (0.7, 5, None, ("###",))
    with pytest.raises(ValueError, match="unknown sampling field.*temprature"):
        job.with_overrides({"temprature": 1.0})
    assert Sampling().describe() == "greedy" and "seed=1" in job.describe()


@pytest.fixture(scope="module")
def four(tiny_next):
    model, processor = tiny_next
    images, prompts, _ = processed(processor, MIXED_SIZES, TEXTS)
    return model, processor, images, prompts


def test_seeded_sampling_is_reproducible_in_any_batch(four):
    model, processor, images, prompts = four
    config = HiREDConfig(budget=0.2)
    hot = [Sampling(temperature=2.0, seed=s) for s in (11, 12, 13, 14)]
    batched = hired.generate(model, processor, images, prompts, config, max_new_tokens=10, sampling=hot)
    again = hired.generate(model, processor, images, prompts, config, max_new_tokens=10, sampling=hot,
                           options=DecodeOptions(cache="static", sync_every=4))
    assert [r.token_ids for r in again] == [r.token_ids for r in batched]
    for i in (0, 3):
        alone = hired.generate(model, processor, images[i], prompts[i], config, max_new_tokens=10, sampling=hot[i])[0]
        assert alone.token_ids == batched[i].token_ids
    pair = hired.generate(model, processor, images[2:], prompts[2:], config, max_new_tokens=10, sampling=hot[2:])
    assert [r.token_ids for r in pair] == [r.token_ids for r in batched[2:]]
    # Sampling really samples: other seeds give other texts, and the seeded rows are not the greedy ones.
    other = hired.generate(model, processor, images, prompts, config, max_new_tokens=10,
                           sampling=[Sampling(temperature=2.0, seed=s) for s in (21, 22, 23, 24)])
    greedy = hired.generate(model, processor, images, prompts, config, max_new_tokens=10)
    assert [r.token_ids for r in other] != [r.token_ids for r in batched] != [r.token_ids for r in greedy]


def test_top_k_1_and_a_tiny_top_p_sample_the_greedy_token(four):
    model, processor, images, prompts = four
    greedy = hired.generate(model, processor, images, prompts, None, max_new_tokens=8)
    for sampling in (Sampling(temperature=1.3, top_k=1, seed=3), Sampling(temperature=1.3, top_p=1e-6, seed=3)):
        sampled = hired.generate(model, processor, images, prompts, None, max_new_tokens=8, sampling=sampling)
        assert [r.token_ids for r in sampled] == [r.token_ids for r in greedy]


def test_per_row_sampling_leaves_greedy_rows_greedy(four):
    model, processor, images, prompts = four
    greedy = hired.generate(model, processor, images, prompts, None, max_new_tokens=8)
    mixed = hired.generate(model, processor, images, prompts, None, max_new_tokens=8,
                           sampling=[None, Sampling(temperature=3.0, seed=1), Sampling(), Sampling(temperature=3.0, seed=2)])
    assert [mixed[i].token_ids for i in (0, 2)] == [greedy[i].token_ids for i in (0, 2)]
    with pytest.raises(ValueError, match="3 per-row sampling settings for 4 rows"):
        hired.generate(model, processor, images, prompts, None, max_new_tokens=2, sampling=[Sampling()] * 3)


def test_repetition_penalty_bars_seen_tokens(four):
    model, processor, images, prompts = four
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    image_token = model.config.image_token_id
    rows = hired.generate(model, processor, images, prompts, None, max_new_tokens=10,
                          sampling=Sampling(repetition_penalty=1e9))
    plain = hired.generate(model, processor, images, prompts, None, max_new_tokens=10)
    assert any(len(set(r.token_ids)) < len(r.token_ids) for r in plain), "the greedy rows should repeat themselves"
    for r, ids, mask in zip(rows, inputs["input_ids"], inputs["attention_mask"]):
        prompt = set(ids[mask.bool()].tolist()) - {image_token}
        assert len(set(r.token_ids)) == len(r.token_ids), "a generated token repeats"
        assert not prompt & set(r.token_ids), "a prompt token was generated again"


@pytest.mark.parametrize("sync_every", [1, 4])
def test_stop_strings_end_the_row_and_are_cut(four, sync_every):
    model, processor, images, prompts = four
    options = DecodeOptions(cache="static", sync_every=sync_every)
    free = hired.generate(model, processor, images, prompts, None, max_new_tokens=12, options=options)
    words = [r.text.split() for r in free]
    stops = [w[len(w) // 2] if len(w) > 2 else "zzz" for w in words]  # a word from the middle; "zzz" never appears
    rows = hired.generate(model, processor, images, prompts, None, max_new_tokens=12, options=options,
                          sampling=[Sampling(stop=(s, "never-there")) for s in stops])
    for f, r, stop in zip(free, rows, stops):
        at = f.text.find(stop)
        if at < 0:
            assert (r.token_ids, r.text) == (f.token_ids, f.text)
            continue
        assert r.finish_reason == "stop" and r.text == f.text[:at].strip()
        assert r.token_ids == f.token_ids[: len(r.token_ids)] and len(r.token_ids) < len(f.token_ids)
        assert stop in processor.decode(r.token_ids) and stop not in processor.decode(r.token_ids[:-1])
    assert sum(r.finish_reason == "stop" for r in rows) >= 2


# -- constrained choices --------------------------------------------------------------------------------
def metaspace_tokenizer():
    """A SentencePiece-style BPE tokenizer (Metaspace pre-tokenizer, ``▁`` marks a word start), trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["Yes, there is a dog in the picture.", "No, there is no cat.", "yes no yes no maybe", "The answer is A",
              "The answer is B or C or D", "Is there a red car? Yes.", "No way. Not really.", "none of them"] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ▁.,?")
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=160, special_tokens=["<unk>", "<s>", "</s>"],
                                                        initial_alphabet=alphabet))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_choices_spelled_with_sentencepiece_word_starts():
    from hired.choices import build_trie, spellings

    tokenizer = metaspace_tokenizer()
    word_start = tokenizer.convert_tokens_to_ids("▁yes")
    assert word_start != tokenizer.unk_token_id
    assert (word_start,) in spellings(tokenizer, "yes")  # how the model continues "ASSISTANT:" with " yes"
    for choice in ("yes", "no way", "maybe", "C"):
        for ids in spellings(tokenizer, choice):
            assert tokenizer.decode(list(ids)).strip() == choice
    trie = build_trie(tokenizer, ["no", "no way", "none"])
    assert trie.shortest == 1 and any(len(s) > 1 for s in trie.sequences)


def test_every_path_through_the_trie_spells_a_choice():
    """Random logits, random seeds, sampled and greedy: the tokens the constraint lets through always decode
    to one of the choices (prefixes of one another included) and end with EOS or at the token budget."""
    from hired.chooser import TokenChooser
    from hired.choices import build_trie

    tokenizer = metaspace_tokenizer()
    choices = ["no", "no way", "none", "maybe", "The answer is A"]
    trie = build_trie(tokenizer, choices, max_new_tokens=8)
    eos, vocab, rows = tokenizer.eos_token_id, len(tokenizer), 64
    seen = set()
    for budget in (8, trie.to_finish[0] + 1):
        samplings = [Sampling(temperature=2.0, seed=s) if s % 2 else Sampling() for s in range(rows)]
        chooser = TokenChooser(samplings, [trie] * rows, [eos], torch.device("cpu"),
                               torch.zeros(rows, 1, dtype=torch.long), torch.ones(rows, 1))
        logits = torch.Generator().manual_seed(budget)
        out = [[] for _ in range(rows)]
        for step in range(budget):
            tokens = chooser(torch.randn(rows, vocab, generator=logits) * 3, step, budget)
            chooser.taken(tokens)
            for r, t in enumerate(tokens.tolist()):
                if not out[r] or out[r][-1] != eos:
                    out[r].append(t)
        for ids in out:
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            assert text in choices, (ids, text)
            assert ids[-1] == eos or len(ids) == budget
            seen.add(text)
    assert len(seen) >= 3, "random logits should reach several choices"


@pytest.mark.parametrize("sampling", [None, Sampling(temperature=2.0, seed=7)])
def test_choices_constrain_every_text(four, sampling):
    model, processor, images, prompts = four
    per_call = hired.generate(model, processor, images, prompts, HiREDConfig(budget=0.2), max_new_tokens=6,
                              choices=["yes", "no"], sampling=sampling)
    assert all(r.text in ("yes", "no") for r in per_call)
    assert all(r.token_ids[-1] == model.generation_config.eos_token_id for r in per_call)
    per_row = [["red", "green", "blue"], ["one", "one two", "three"], None, ["a photo of a dog", "a cat"]]
    rows = hired.generate(model, processor, images, prompts, HiREDConfig(budget=0.2), max_new_tokens=6,
                          choices=per_row, sampling=sampling)
    for r, allowed in zip(rows, per_row):
        if allowed is not None:
            assert r.text in allowed
            assert r.finish_reason == "eos" or len(r.token_ids) == 6


def test_greedy_choice_is_the_likelier_first_token(four):
    """With one-token choices, greedy picks the choice the model scores higher at the first step."""
    model, processor, images, prompts = four
    prepared = prepare_inputs(model, processor(images=images, text=prompts, return_tensors="pt", padding=True), None)
    mask = prepared.attention_mask
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.no_grad():
        logits = model(inputs_embeds=prepared.inputs_embeds, attention_mask=mask, position_ids=positions).logits[:, -1]
    words = ["yes", "no", "red", "dog"]
    ids = processor.tokenizer.convert_tokens_to_ids(words)
    expected = [words[int(torch.argmax(row[ids]))] for row in logits]
    rows = hired.generate(model, processor, images, prompts, None, max_new_tokens=4, choices=words)
    assert [r.text for r in rows] == expected


@pytest.mark.parametrize(
    "choices, message",
    [
        ([[]], "row 0: choices is empty"),
        ([["yes"], ["yes", ""]], "row 1: a choice is empty"),
        ([None, ["yes", "zebra"]], "row 1: choice 'zebra' cannot be tokenized"),
        ([["yes", " no"]], "row 0: choice ' no' has leading or trailing whitespace"),
        ([["a photo of the sky"]], r"row 0: the shortest choice needs 5 tokens but max_new_tokens is 4"),
    ],
)
def test_bad_choices_name_their_row(four, choices, message):
    model, processor, images, prompts = four
    rows = len(choices)
    with pytest.raises(hired.ChoiceError, match=message) as caught:
        hired.generate(model, processor, images[:rows], prompts[:rows], None, max_new_tokens=4, choices=choices)
    assert caught.value.row == int(message[4])


# -- several prompts per picture --------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_next", "tiny_llava"])
@pytest.mark.parametrize("config", [None, HiREDConfig(budget=0.2), HiREDConfig(budget=0.1, strategy="prumerge+")])
def test_several_prompts_per_picture_encode_each_picture_once(request, fixture, config):
    model, processor = request.getfixturevalue(fixture)
    pictures = [noise_image(480, 640, seed=1), noise_image(300, 900, seed=2)]
    texts = ["what is this", "describe the picture in one short caption", "is the sky blue", "red", "how many cars"]
    prompts = [chat_prompt(processor, t) for t in texts]
    image_index = [0, 0, 0, 1, 1]
    seen = []
    hook = model.model.vision_tower.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    try:
        shared = hired.generate(model, processor, pictures, prompts, config, max_new_tokens=8, image_index=image_index)
    finally:
        hook.remove()
    from hired.models import adapter_for

    adapter = adapter_for(model)
    sizes = [(480, 640), (300, 900)] if fixture == "tiny_next" else [(0, 0), (0, 0)]
    assert seen == [sum(adapter.partitions(s).num_partitions for s in sizes)], "one tower pass, each picture once"
    assert len(shared) == 5
    for r, (text, i) in enumerate(zip(prompts, image_index)):
        alone = hired.generate(model, processor, pictures[i], text, config, max_new_tokens=8)[0]
        assert shared[r].token_ids == alone.token_ids
        assert shared[r].prompt_tokens == alone.prompt_tokens and shared[r].partition_budgets == alone.partition_budgets
        assert all(torch.equal(a, b) for a, b in zip(shared[r].kept_indices, alone.kept_indices))


def test_image_index_errors(tiny_next):
    model, processor = tiny_next
    pictures = [noise_image(64, 64, seed=1), noise_image(64, 96, seed=2)]
    prompts = [chat_prompt(processor, "what")] * 3
    with pytest.raises(ValueError, match=r"picture\(s\) \[1\] have no prompt"):
        hired.generate(model, processor, pictures, prompts, None, max_new_tokens=2, image_index=[0, 0, 0])
    with pytest.raises(ValueError, match="one entry in"):
        hired.generate(model, processor, pictures, prompts, None, max_new_tokens=2, image_index=[0, 2, 1])
    with pytest.raises(ValueError, match="pass image_index"):
        hired.generate(model, processor, pictures, prompts, None, max_new_tokens=2)


# -- HiRED's selection for a whole batch on the device --------------------------------------------------
@pytest.fixture(scope="module")
def batch_signals(tiny_next):
    """The vision tower's evidence for pictures of every shape (SIZES of test_hired, extremes included)."""
    from hired.models import adapter_for
    from hired.prepare import _pixel_values_per_image
    from hired.strategies.base import BatchSignals
    from hired.vision import encode

    from .test_hired import SIZES

    model, processor = tiny_next
    images = [noise_image(h, w, seed=i) for i, (h, w) in enumerate(SIZES)]
    inputs = processor(images=images, text=[chat_prompt(processor, "what")] * len(images), return_tensors="pt", padding=True)
    adapter = adapter_for(model)
    parts = [adapter.partitions(tuple(s.tolist())) for s in inputs["image_sizes"]]
    pixels = _pixel_values_per_image(inputs, [p.num_partitions for p in parts])
    vision = encode(adapter.tower, torch.cat(pixels), [-2], [0, 2])
    spans, offset = [], 0
    for p in parts:
        spans.append(slice(offset, offset + p.num_partitions))
        offset += p.num_partitions
    return BatchSignals(parts, spans, pixels, vision.features, vision.cls_attention[0], vision.cls_attention[2])


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.8, 1.0])
def test_batch_selection_keeps_what_the_one_picture_selection_keeps(batch_signals, alpha):
    from hired.strategies import hired as hired_strategy

    for budget in (0.05, 0.1, 0.2, 0.4, 0.999, 1.0, 1, 64, 320, 640, 5000):
        config = HiREDConfig(budget=budget, alpha=alpha)
        keep = hired_strategy.select_batch(batch_signals, config).keep
        for i, parts in enumerate(batch_signals.parts):
            one = hired_strategy.select(parts, batch_signals.picture(i), config)
            batch_kept = [row.nonzero().flatten() for row in keep[batch_signals.spans[i]]]
            assert [len(k) for k in batch_kept] == [len(k) for k in one.kept], (budget, alpha, i)
            assert all(torch.equal(a, b) for a, b in zip(batch_kept, one.kept)), (budget, alpha, i)


def test_batch_split_equals_python_largest_remainder():
    """The device split against hired.budget on shares that tie, saturate, and have no content."""
    import random

    from hired.budget import largest_remainder
    from hired.device_budget import largest_remainder_batch

    rng = random.Random(0)
    cases = [(10, [1.0, 1.0, 1.0], [5, 5, 5]), (9, [0.0, 0.0], [3, 8]), (50, [5.0, 1.0, 0.0, 1.0], [4, 100, 7, 3]),
             (7, [0.25, 0.25, 0.5, 0.0], [0, 2, 9, 9]), (0, [1.0], [4]), (100, [1.0, 2.0], [3, 4])]
    for _ in range(300):
        width = rng.randint(1, 6)
        weights = [rng.choice([0.0, 1.0, rng.random(), float(rng.randint(0, 3))]) for _ in range(width)]
        cases.append((rng.randint(0, 60), weights, [rng.randint(0, 20) for _ in range(width)]))
    width = max(len(w) for _, w, _ in cases)
    pad = lambda xs: xs + [0] * (width - len(xs))  # noqa: E731
    totals = torch.tensor([t for t, _, _ in cases], dtype=torch.float64)
    weights = torch.tensor([pad(w) for _, w, _ in cases], dtype=torch.float64)
    capacities = torch.tensor([pad(c) for _, _, c in cases], dtype=torch.float64)
    shares = largest_remainder_batch(totals, weights, capacities).long().tolist()
    for (total, w, c), got in zip(cases, shares):
        assert got[: len(w)] == largest_remainder(total, w, c), (total, w, c)
        assert not any(got[len(w):])


@pytest.mark.parametrize("sync_every, most_steps", [(1, 2), (4, 4), (16, 16)])
def test_done_rows_are_read_every_sync_every_steps(four, sync_every, most_steps):
    """One-token choices end every row at its second token (EOS); the loop notices at its next read."""
    model, processor, images, prompts = four
    _, _, inputs = processed(processor, MIXED_SIZES, TEXTS)
    prepared = prepare_inputs(model, inputs, HiREDConfig(budget=0.2))
    decoder = Decoder(model, processor, DecodeOptions(cache="static", sync_every=sync_every))
    decoded = decoder(prepared, 20, choices=["yes", "no"])
    assert all(len(r.token_ids) == 2 and r.finish_reason == "eos" for r in decoded.rows)
    assert decoded.timing.steps == most_steps
