"""Quantized weights (bitsandbytes, on CPU here): the library's loader, the generation actor, the job.

bitsandbytes' 4-bit kernels need layers at least 64 wide, so 4-bit runs on a tiny LLaVA-Next whose
vision tower is 64 wide (its text model already is)."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest
import torch

import hired
from hired.geometry import anyres_layout
from hired.tiny import LLAVA_NEXT_PINPOINTS
from pipeline.memory import count_weight_bytes, measure_weight_bytes
from pipeline.settings import JobSettings

from .conftest import noise_image
from .data import encoded, write_shard


@pytest.fixture(scope="module")
def wide_tiny_path(tmp_path_factory):
    return hired.tiny.build_tiny_llava_next(tmp_path_factory.mktemp("wide-tiny"), vision_width=64)


def test_quantization_settings_for_bitsandbytes():
    eight = hired.bitsandbytes_config("8bit", torch.float16)
    assert eight.load_in_8bit and not eight.load_in_4bit
    four = hired.bitsandbytes_config("4bit", torch.bfloat16)
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_compute_dtype == torch.bfloat16
    assert hired.default_dtype("cpu") == torch.float32 and hired.default_dtype("cpu", "4bit") == torch.float32
    assert hired.default_dtype("cpu", "8bit") == torch.float16  # 8-bit layers compute in float16 anyway
    with pytest.raises(ValueError, match="8bit, 4bit"):
        hired.load_model("unused", quantization="3bit")


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_a_quantized_model_keeps_exact_budgets_and_is_measured(wide_tiny_path, quantization):
    """Loaded in 8 or 4 bits, the model holds the weights the memory model counts from the config
    (within 2%), fewer than in 16 bits, and generates with exactly the budget."""
    from transformers import AutoConfig

    model, processor = hired.load_model(str(wide_tiny_path), quantization=quantization)
    assert model.config.quantization_config.quant_method == "bitsandbytes"
    # Measured as the generation actor measures it: once loaded, before a forward (bitsandbytes' CPU
    # backend repacks 4-bit weights on their first use).
    config = AutoConfig.from_pretrained(wide_tiny_path)
    counted = count_weight_bytes(config, model.dtype, quantization)
    measured = measure_weight_bytes(model)
    assert abs(counted.total_bytes / measured.total_bytes - 1) < 0.02
    assert measured.total_bytes < count_weight_bytes(config, torch.float16).total_bytes
    pictures = [noise_image(300, 500, seed=1), noise_image(640, 480, seed=2)]
    results = hired.generate(model, processor, pictures, ["USER: <image>\nwhat is this ASSISTANT:"] * 2,
                             hired.HiREDConfig(budget=0.2), max_new_tokens=4)
    for picture, result in zip(pictures, results):
        n = anyres_layout((picture.height, picture.width), LLAVA_NEXT_PINPOINTS, 336, 14).grid_tokens
        assert (result.visual_tokens_full, result.visual_tokens_kept) == (n, math.floor(0.2 * n))
        assert 1 <= len(result.token_ids) <= 4


def test_the_predictor_loads_in_8_bits_and_generates_what_the_library_does(tiny_next_path):
    from pipeline.stages.generate import Predictor

    predictor = Predictor(JobSettings(model=str(tiny_next_path), quantization="8bit", max_new_tokens=5))
    assert predictor.dtype == torch.float16
    assert predictor.memory.weights_bytes == measure_weight_bytes(predictor.model).total_bytes
    assert predictor.memory.weights_bytes < measure_weight_bytes(hired.load_model(str(tiny_next_path))[0]).total_bytes
    model, processor = hired.load_model(str(tiny_next_path), quantization="8bit")
    picture, prompt = noise_image(300, 500, seed=3), "USER: <image>\nwhat is this ASSISTANT:"
    expected = hired.generate(model, processor, [picture], [prompt], hired.HiREDConfig(), max_new_tokens=5)[0]
    inputs = processor(images=[picture], text=[prompt], return_tensors="np")
    rows, prepared, _ = predictor.generate([{k: v[0] for k, v in inputs.items()}])
    assert rows[0].token_ids == expected.token_ids and rows[0].text == expected.text
    assert prepared.visual_tokens_kept[0] == expected.visual_tokens_kept


def test_the_caption_job_in_4_bits(ray_local, tmp_path, wide_tiny_path):
    """Every row at its exact budget, the quantization recorded, and an output made in 4 bits not
    resumed in 8."""
    from pipeline.errors import InputError
    from pipeline.job.run import run_job

    sizes = [(240, 320), (300, 900), (500, 500)]
    write_shard(str(tmp_path / "in" / "a.parquet"), [{"id": f"a-{i}", "image": encoded(*size, seed=i)}
                                                      for i, size in enumerate(sizes)])
    common = dict(task="caption", input=str(tmp_path / "in"), output=str(tmp_path / "out"), model=str(wide_tiny_path),
                  num_gpus=0, max_new_tokens=3)
    summary = run_job(JobSettings(**common, quantization="4bit"))
    assert summary["items"] == 3 and summary["errors"] == 0 and summary["settings"]["quantization"] == "4bit"
    rows = pq.read_table(tmp_path / "out" / "a.parquet").to_pylist()
    for (h, w), row in zip(sizes, rows):
        n = anyres_layout((h, w), LLAVA_NEXT_PINPOINTS, 336, 14).grid_tokens
        assert (row["visual_tokens_full"], row["visual_tokens_kept"]) == (n, math.floor(0.2 * n))
        assert row["error"] is None and 1 <= row["generated_tokens"] <= 3
    with pytest.raises(InputError, match="quantization"):
        run_job(JobSettings(**common, quantization="8bit"))
