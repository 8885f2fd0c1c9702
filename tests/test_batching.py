"""Batch sizing in the generation actor: micro-batches by calculation, correction from measured
peaks, and OOM back-off that loses no item (injected OOM errors; CPU, tiny model)."""

import dataclasses
import logging

import numpy as np
import pytest
import torch

import hired
from pipeline.settings import JobSettings
from pipeline.memory import BatchSizer, Margin
from pipeline.stages.generate import Predictor
from pipeline.columns import MODEL_INPUTS
from pipeline.wire import decode_inputs, encode_inputs

from .conftest import chat_prompt, noise_image
from .data import error_texts

SIZES = [(480, 640), (1, 400), (300, 900), (64, 64), (1000, 200), (336, 336), (200, 200), (50, 700)]


@pytest.fixture(scope="module")
def predictor(tiny_next_path):
    return Predictor(JobSettings(model=str(tiny_next_path), config=hired.HiREDConfig(budget=0.2), max_new_tokens=4))


def rows(processor, sizes, texts=None):
    """A preprocessed batch, as the CPU stage hands it to the generation actor."""
    texts = texts or ["what is this"] * len(sizes)
    encoded = []
    for i, ((h, w), text) in enumerate(zip(sizes, texts)):
        inputs = processor(images=[noise_image(h, w, seed=i)], text=[chat_prompt(processor, text)], return_tensors="np")
        encoded.append(encode_inputs({k: v[0] for k, v in inputs.items() if k != "attention_mask"}))
    n = len(sizes)
    column = np.empty(n, dtype=object)
    column[:] = encoded
    nulls = np.array([None] * n, dtype=object)
    return {"id": np.array([f"i{k}" for k in range(n)], dtype=object), MODEL_INPUTS: column, "error_kind": nulls,
            "error_detail": nulls, "sampling": nulls, "choices": nulls, "row_index": np.arange(n),
            "source_shard": np.array(["s"] * n, dtype=object)}


def lengths_of(predictor, batch):
    items = [decode_inputs(b) for b in batch[MODEL_INPUTS]]
    return [hired.expected_lengths(predictor.model, tuple(it["image_sizes"].tolist()), len(it["input_ids"]),
                                   predictor.config) for it in items]


def test_expected_lengths_match_what_prepare_makes(tiny_next):
    model, processor = tiny_next
    for config in (hired.HiREDConfig(budget=0.2), hired.HiREDConfig(budget=0.1, newlines="all"), None):
        for (h, w) in SIZES:
            inputs = processor(images=[noise_image(h, w)], text=[chat_prompt(processor, "a b c")], return_tensors="pt")
            prepared = hired.prepare_inputs(model, inputs, config)
            expected = hired.expected_lengths(model, (h, w), inputs["input_ids"].shape[1], config)
            assert expected.prompt_tokens == prepared.prompt_tokens[0]
            assert expected.visual_tokens_llm == prepared.visual_tokens_llm[0]
            assert expected.visual_tokens_kept == prepared.visual_tokens_kept[0]
            assert expected.visual_tokens_full == prepared.visual_tokens_full[0]
            assert expected.partitions == prepared.partitions[0].num_partitions


@pytest.fixture
def sized(predictor):
    """The predictor's batch sizer as if on a GPU, no margin; each test sets the free memory."""
    saved = predictor.batches
    predictor.batches = BatchSizer(predictor.memory, predictor.max_new_tokens, free_bytes=0, margin=Margin(0.0, 0))
    yield predictor.batches
    predictor.batches = saved


def test_micro_batches_fit_the_memory_and_are_as_large_as_possible(predictor, sized, tiny_next):
    _, processor = tiny_next
    batch = rows(processor, SIZES)
    lengths = lengths_of(predictor, batch)
    one_longest = sized.batch_bytes([max(lengths, key=lambda x: x.prompt_tokens)])
    sized.free_bytes = int(2.5 * one_longest)
    micro = sized.micro_batches(lengths)
    assert sorted(i for m in micro for i in m) == list(range(len(SIZES)))  # every item exactly once
    flat = [i for m in micro for i in m]
    assert [lengths[i].prompt_tokens for i in flat] == sorted((x.prompt_tokens for x in lengths), reverse=True)
    for k, m in enumerate(micro):
        assert sized.batch_bytes([lengths[i] for i in m]) <= sized.free_bytes
        if k + 1 < len(micro):  # one more item would not have fitted
            assert sized.batch_bytes([lengths[i] for i in m + [micro[k + 1][0]]]) > sized.free_bytes
    assert len(micro[0]) == 2  # the two longest at the longest length: 2 x one_longest <= 2.5 x
    assert len(micro[-1]) > 2  # short items pack more


def test_a_measured_peak_above_the_estimate_shrinks_later_batches(predictor, sized, tiny_next):
    _, processor = tiny_next
    lengths = lengths_of(predictor, rows(processor, SIZES))
    sized.free_bytes = 4 * sized.batch_bytes([max(lengths, key=lambda x: x.prompt_tokens)])
    before = [len(m) for m in sized.micro_batches(lengths)]
    predicted = sized.batch_bytes(lengths[:2])
    sized.learn_from_peak(lengths[:2], peak_bytes=1000 + 2 * predicted, baseline_bytes=1000)
    assert sized.correction == pytest.approx(2.0)
    after = [len(m) for m in sized.micro_batches(lengths)]
    assert after[0] < before[0] and len(after) > len(before)
    sized.learn_from_peak(lengths[:2], peak_bytes=1000 + predicted // 10, baseline_bytes=1000)  # never lowered
    assert sized.correction == pytest.approx(2.0)


def test_the_actor_learns_from_each_batchs_measured_peak(predictor, sized, tiny_next, monkeypatch, caplog):
    """The Predictor hands every micro-batch's measured peak to its BatchSizer (faked here: CPU has none)."""
    _, processor = tiny_next
    batch = rows(processor, SIZES[:3])
    lengths = lengths_of(predictor, batch)
    predicted = sized.batch_bytes(lengths)
    sized.free_bytes = 100 * predicted  # one micro-batch of all three
    real_generate = predictor.generate

    def generate(items):
        token_ids, prepared, timing = real_generate(items)
        return token_ids, prepared, dataclasses.replace(timing, peak_gpu_mem_bytes=3 * predicted)

    monkeypatch.setattr(predictor, "generate", generate)
    with caplog.at_level(logging.WARNING, logger="hired.pipeline"):
        out = predictor(batch)
    assert list(out["batch_size"]) == [3, 3, 3]
    assert sized.correction == pytest.approx(3.0)
    assert sized.batch_bytes(lengths) == pytest.approx(3 * predicted, abs=3)
    assert [m for m in caplog.messages if m.startswith("a batch of 3 used ")] == [
        f"a batch of 3 used {3 * predicted / 2**30:.2f} GiB, 200% over the {predicted / 2**30:.2f} GiB predicted: "
        "estimates raised by that much"
    ]


def test_out_of_memory_loses_no_item(predictor, tiny_next, monkeypatch, caplog):
    _, processor = tiny_next
    batch = rows(processor, SIZES)
    poisoned = SIZES.index((1000, 200))
    real_generate = predictor.generate
    calls = []

    def generate(items):
        calls.append(len(items))
        if len(items) > 2 or any(tuple(it["image_sizes"].tolist()) == (1000, 200) for it in items):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_generate(items)

    monkeypatch.setattr(predictor, "generate", generate)
    monkeypatch.setattr(predictor.batches.sizes, "batch_size", 4)
    with caplog.at_level(logging.WARNING, logger="hired.pipeline"):
        out = predictor(batch)
    errors = error_texts(out)
    assert "OOM back-off: batch size 4 -> 2: out of memory on a batch of 4" in caplog.messages
    assert list(out["id"]) == [f"i{k}" for k in range(len(SIZES))]
    for k in range(len(SIZES)):
        if k == poisoned:
            assert errors[k].startswith("out of memory: the item alone in its batch")
            assert "OutOfMemoryError" in errors[k] and out["text"][k] is None
        else:
            assert errors[k] is None and isinstance(out["text"][k], str) and out["batch_size"][k] <= 2
    assert predictor.batches.sizes.batch_size == 2  # later batches start at the size that ran
    calls.clear()
    out = predictor(rows(processor, SIZES[:4]))
    assert all(e is None for e in error_texts(out)) and max(calls) == 2


def test_other_failures_cost_only_the_failing_item(predictor, tiny_next, monkeypatch):
    """A failure that is not out-of-memory is pinned on its item by running the batch's items alone."""
    _, processor = tiny_next
    real_generate = predictor.generate

    def generate(items):
        if any(tuple(it["image_sizes"].tolist()) == (300, 900) for it in items):
            raise ValueError("this picture breaks something")
        return real_generate(items)

    monkeypatch.setattr(predictor, "generate", generate)
    out = predictor(rows(processor, SIZES[:4]))
    errors = error_texts(out)
    assert errors[2] == "generation failed: ValueError: this picture breaks something"
    assert [e is None for e in errors] == [True, True, False, True]
    assert all(isinstance(t, str) for k, t in enumerate(out["text"]) if k != 2)


def test_a_prompt_longer_than_the_context_is_an_error_row(predictor, tiny_next):
    _, processor = tiny_next
    long_text = " ".join(["sky"] * 5000)  # the tiny model's context is 4096 positions
    out = predictor(rows(processor, [(480, 640), (480, 640)], ["what is this", long_text]))
    errors = error_texts(out)
    assert errors[0] is None
    assert errors[1].startswith("prompt too long: ") and "exceed the model's context of 4096" in errors[1]
