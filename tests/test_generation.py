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
