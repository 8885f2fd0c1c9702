"""The pipeline's stages called directly, without Ray: read, preprocess, generate."""

import math

import numpy as np
import pytest

import hired
from pipeline.columns import GENERATED, MODEL_INPUTS, READ_COLUMNS
from pipeline.io.location import Location
from pipeline.io.shard import ReadTask
from pipeline.row_errors import RowFailed
from pipeline.settings import JobSettings
from pipeline.stages.base import MissingColumns
from pipeline.stages.generate import Predictor
from pipeline.stages.preprocess import Preprocessor, build_prompt
from pipeline.stages.read import read_rows as read_slices
from pipeline.wire import decode_inputs, encode_inputs

from .conftest import noise_image
from .data import encoded, error_texts, truncated_jpeg, write_shard


def read_rows(request):
    """The read stage's slices for one request, as one batch."""
    uri, settings = request
    slices = list(read_slices({"item": np.array([uri], dtype=object)}, settings.input, settings))  # uri: the task
    return {k: np.concatenate([s[k] for s in slices]) for k in slices[0]}


def task(uri, group, first, count):
    where = Location.resolve(uri)
    root = where.at(where.path.rsplit("/", 1)[0])
    settings = JobSettings(input=root)
    return ReadTask(uri, "shard", "parquet", where.path, first, count, part=group), settings


@pytest.fixture(scope="module")
def mixed_shard(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    (root / "pic.png").write_bytes(encoded(100, 150, seed=7))
    rows = [
        {"id": "ok-png", "image": encoded(240, 320, "PNG", seed=1)},
        {"id": "ok-jpeg", "image": encoded(400, 200, "JPEG", seed=2), "prompt": "what color is the sky"},
        {"id": "truncated", "image": truncated_jpeg()},
        {"id": "no-image"},
        {"id": "by-uri", "image_uri": str(root / "pic.png")},
        {"id": "missing-uri", "image_uri": str(root / "nope.png")},
        {"id": "empty", "image": b""},
    ]
    uri = write_shard(f"file://{root}/shard.parquet", rows, row_group_size=4)
    return uri, rows


def test_read_rows_numbers_rows_and_keeps_columns(mixed_shard):
    uri, rows = mixed_shard
    batch = read_rows(task(uri, 1, 4, 3))
    assert list(batch["id"]) == ["by-uri", "missing-uri", "empty"]
    assert list(batch["row_index"]) == [4, 5, 6]
    assert list(batch["source_shard"]) == [uri] * 3
    assert error_texts(batch) == [None] * 3
    assert set(batch) == set(READ_COLUMNS)  # every format's rows carry the same columns


def test_unreadable_row_group_becomes_one_error_row_per_row(tmp_path):
    batch = read_rows(task(f"file://{tmp_path}/gone.parquet", 0, 10, 3))
    assert list(batch["row_index"]) == [10, 11, 12]
    assert all(e.startswith("unreadable shard: FileNotFoundError") for e in error_texts(batch))


def test_preprocess_turns_bad_rows_into_reasons(mixed_shard, tiny_next_path):
    uri, rows = mixed_shard
    batch = {k: np.concatenate([read_rows(task(uri, 0, 0, 4))[k], read_rows(task(uri, 1, 4, 3))[k]])
             for k in read_rows(task(uri, 0, 0, 4))}
    out = Preprocessor(JobSettings(model=str(tiny_next_path)))(batch)
    errors = dict(zip(out["id"], error_texts(out)))
    assert errors["ok-png"] is None and errors["ok-jpeg"] is None and errors["by-uri"] is None
    assert errors["truncated"].startswith("undecodable image")
    assert errors["no-image"] == "missing field: neither image nor image_uri is set"
    assert errors["missing-uri"].startswith("cannot fetch image_uri") and "nope.png" in errors["missing-uri"]
    assert errors["empty"] == "empty image: the image bytes are empty"
    for i, error in enumerate(error_texts(out)):
        assert (out[MODEL_INPUTS][i] is None) == (error is not None)
    assert "image" not in out and "image_uri" not in out and "prompt" not in out  # consumed here
    inputs = decode_inputs(out[MODEL_INPUTS][0])
    assert inputs["pixel_values"].shape == (3, 3, 336, 336) and inputs["pixel_values"].dtype == np.float32
    assert list(inputs["image_sizes"]) == [240, 320]


def test_preprocessing_yields_to_generation_on_the_same_cpus(tiny_next_path, monkeypatch):
    """Beside CPU generation a preprocessing actor drops to the lowest priority (or what
    HIRED_PREPROCESS_NICENESS says); otherwise, as beside a GPU, it keeps its priority."""
    from pipeline.stages import preprocess

    from pipeline.settings import environment_settings

    settings = JobSettings(model=str(tiny_next_path))
    calls = []
    monkeypatch.setattr(preprocess.os, "nice", calls.append)  # this test process keeps its own priority
    Preprocessor(settings)
    Preprocessor(settings, beside_cpu_generation=False)
    assert calls == []
    Preprocessor(settings, beside_cpu_generation=True)
    assert calls == [19]
    configured = JobSettings(model=str(tiny_next_path), **environment_settings({"HIRED_PREPROCESS_NICENESS": "5"}))
    Preprocessor(configured, beside_cpu_generation=True)
    assert calls == [19, 5]


def test_prompts(tiny_next):
    _, processor = tiny_next
    assert build_prompt(processor, "what is this") == "USER: <image>\nwhat is this ASSISTANT:"
    assert build_prompt(processor, "<image> as written") == "<image> as written"
    pre = Preprocessor.__new__(Preprocessor)
    pre.task, pre.default_prompt = "caption", "default words"
    assert pre.prompt_text(None, None) == "default words"
    assert pre.prompt_text("  ", None) == "default words"
    pre.task = "vqa"
    assert pre.prompt_text(None, "is it red?") == "is it red?\nAnswer the question using a single word or phrase."
    with pytest.raises(RowFailed, match="missing field: the VQA row has no question"):
        pre.prompt_text(None, "")


def test_a_stage_refuses_a_batch_without_a_column_it_needs(tiny_next_path):
    """A renamed or lost column stops the pipeline naming it, instead of becoming nulls."""
    batch = {"id": np.array(["a"], dtype=object), "image": np.array([b"x"], dtype=object)}
    with pytest.raises(MissingColumns, match="the preprocess stage needs image_uri .*; prompt .*; question"):
        Preprocessor(JobSettings(model=str(tiny_next_path)))(batch)


def test_pixels_can_travel_in_half_precision(mixed_shard, tiny_next_path):
    uri, _ = mixed_shard
    out = Preprocessor(JobSettings(model=str(tiny_next_path)), pixel_dtype="float16")(read_rows(task(uri, 0, 0, 4)))
    assert decode_inputs(out[MODEL_INPUTS][0])["pixel_values"].dtype == np.float16


def test_model_inputs_round_trip_exactly():
    """Every dtype and shape the processor gives (0-d included), a non-contiguous view, and an
    empty array come back equal, in their own dtype and shape, and writable (torch takes them)."""
    arrays = {
        "input_ids": np.arange(7, dtype=np.int32),
        "pixel_values": np.random.default_rng(0).standard_normal((5, 3, 4, 4)).astype(np.float16),
        "image_sizes": np.array([672, 336], dtype=np.int64),
        "strided": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],
        "scalar": np.array(3.5),
        "empty": np.zeros((0, 3), dtype=np.uint8),
    }
    data = encode_inputs(arrays)
    back = decode_inputs(data)
    assert list(back) == list(arrays)
    for name, a in arrays.items():
        assert back[name].dtype == a.dtype and back[name].shape == a.shape, name
        np.testing.assert_array_equal(back[name], a)
        assert back[name].flags.writeable, name
    pixels = np.ones((5, 3, 336, 336), np.float32)
    assert len(encode_inputs({"pixel_values": pixels})) <= pixels.nbytes + 128  # a header, no more


@pytest.fixture(scope="module")
def predictor(tiny_next_path):
    return Predictor(JobSettings(model=str(tiny_next_path), config=hired.HiREDConfig(budget=0.2), max_new_tokens=6, run_id="run-1"))


def test_predictor_fills_every_row(mixed_shard, tiny_next_path, predictor):
    uri, _ = mixed_shard
    batch = Preprocessor(JobSettings(model=str(tiny_next_path)))(read_rows(task(uri, 0, 0, 4)))
    out = predictor(batch)
    assert set(GENERATED) <= set(out) and MODEL_INPUTS not in out
    assert list(out["id"]) == ["ok-png", "ok-jpeg", "truncated", "no-image"]
    errors = error_texts(out)
    for i in (0, 1):
        assert errors[i] is None and isinstance(out["text"][i], str)
        n = out["visual_tokens_full"][i]
        assert out["visual_tokens_kept"][i] == math.floor(0.2 * n)
        assert 1 <= out["generated_tokens"][i] <= 6
        assert out["ttft_ms"][i] > 0 and out["decode_ms"][i] >= 0 and out["tokens_per_s"][i] > 0
        assert out["batch_size"][i] == 2 and out["peak_gpu_mem_bytes"][i] is None
    # 240x320 goes to a 1x2 grid (336x672 canvas); resized to 448x336 it fills 32 of 48 token columns.
    assert out["visual_tokens_full"][0] == 576 + 24 * 32
    for i in (2, 3):
        assert errors[i] is not None and out["text"][i] is None and out["visual_tokens_kept"][i] is None
    assert set(out["device"]) == {"cpu"} and set(out["run_id"]) == {"run-1"}
    assert set(out["strategy"]) == {"hired"} and set(out["budget_fraction"]) == {0.2} and set(out["budget_tokens"]) == {None} and set(out["alpha"]) == {0.5}


def test_predictor_matches_the_library(tiny_next, tiny_next_path, predictor):
    """The pipeline generates exactly what hired.generate does for the same picture and prompt."""
    model, processor = tiny_next
    picture, prompt = noise_image(300, 500, seed=3), "USER: <image>\nwhat is this ASSISTANT:"
    expected = hired.generate(model, processor, [picture], [prompt], hired.HiREDConfig(budget=0.2), max_new_tokens=6)[0]
    inputs = processor(images=[picture], text=[prompt], return_tensors="np")
    rows, prepared, _ = predictor.generate([{k: v[0] for k, v in inputs.items()}])
    assert rows[0].token_ids == expected.token_ids and rows[0].text == expected.text
    assert prepared.visual_tokens_kept[0] == expected.visual_tokens_kept


def test_predictor_without_dropping(mixed_shard, tiny_next_path):
    uri, _ = mixed_shard
    batch = Preprocessor(JobSettings(model=str(tiny_next_path)))(read_rows(task(uri, 0, 0, 4)))
    out = Predictor(JobSettings(model=str(tiny_next_path), config=None, max_new_tokens=3))(batch)
    assert list(out["visual_tokens_kept"][:2]) == list(out["visual_tokens_full"][:2]) == [1344, 576 + 48 * 24]
    assert set(out["strategy"]) == {"none"} and list(out["budget_fraction"]) == list(out["budget_tokens"]) == [None] * 4
