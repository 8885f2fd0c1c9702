"""The pipeline's generation controls: several prompts per picture, seeded sampling, per-row
overrides, stop strings and constrained choices (stages called directly; one job through Ray)."""

import dataclasses
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import hired
from pipeline.errors import InputError
from pipeline.io.formats import inspect_input
from pipeline.prompts import read_prompts
from pipeline.settings import ColumnMap, JobSettings
from pipeline.stages.generate import Predictor
from pipeline.stages.preprocess import Preprocessor, chat_prompt
from pipeline.stages.read import read_rows, read_tasks

from .data import encoded, error_texts, truncated_jpeg, write_shard

SCHEMA = pa.schema([("id", pa.string()), ("image", pa.binary()), ("sampling", pa.string()),
                    ("choices", pa.list_(pa.string()))])
SIZES = [(240, 320), (300, 200), (336, 336), (500, 120)]


def stage_batch(settings: JobSettings) -> dict:
    """Every row of the input through the read and preprocessing stages, as one batch."""
    shards, failed = inspect_input(settings.input, settings)
    assert not failed
    slices = [piece for task in read_tasks(shards)
              for piece in read_rows({"item": np.array([task], dtype=object)}, settings.input, settings)]
    batch = {name: np.concatenate([piece[name] for piece in slices]) for name in slices[0]}
    return Preprocessor(settings)(batch)


def pictures_shard(root, rows: list[dict]) -> str:
    write_shard(str(root / "in" / "pictures.parquet"), rows, schema=SCHEMA)
    return str(root / "in")


def settings_for(root, tiny_next_path, **knobs) -> JobSettings:
    return JobSettings(input=str(root / "in"), model=str(tiny_next_path), max_new_tokens=6, **knobs)


def picture(size, seed):
    from PIL import Image

    return Image.open(io.BytesIO(encoded(*size, seed=seed))).convert("RGB")


def test_several_prompts_per_picture_share_one_vision_pass(tmp_path, tiny_next_path, tiny_next):
    model, processor = tiny_next
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps({"short": "Describe it briefly.", "long": "Describe every detail you see.",
                                        "tags": "List tags."}))
    rows = [{"id": "a", "image": encoded(*SIZES[0], seed=0)}, {"id": "bad", "image": truncated_jpeg()},
            {"id": "b", "image": encoded(*SIZES[1], seed=1)}]
    pictures_shard(tmp_path, rows)
    settings = settings_for(tmp_path, tiny_next_path, prompts=read_prompts(str(prompts_file)))
    batch = stage_batch(settings)
    predictor = Predictor(settings)
    views = []
    tower = predictor.model.model.vision_tower
    handle = tower.register_forward_pre_hook(lambda module, args, kwargs: views.append(len(args[0] if args else
                                                                                          kwargs["pixel_values"])),
                                             with_kwargs=True)
    try:
        out = predictor(batch)
    finally:
        handle.remove()

    assert list(out["id"]) == ["a"] * 3 + ["bad"] * 3 + ["b"] * 3
    assert list(out["prompt_name"]) == ["short", "long", "tags"] * 3 and list(out["prompt_index"]) == [0, 1, 2] * 3
    errors = error_texts(out)
    assert all(e.startswith("undecodable image") for e in errors[3:6]) and out["text"][3:6].tolist() == [None] * 3
    # Each picture went through the tower once for its three prompts (a batch of 4 on CPU: one picture each).
    assert views == [hired.expected_lengths(model, size, 10, None).partitions for size in SIZES[:2]]
    config = hired.HiREDConfig()
    for k, size, seed in ((0, SIZES[0], 0), (6, SIZES[1], 1)):
        texts = [chat_prompt(processor, text) for _, text in settings.prompts]
        expected = hired.generate(model, processor, [picture(size, seed)] * 3, texts, config, max_new_tokens=6)
        assert [out["text"][k + p] for p in range(3)] == [r.text for r in expected]
        assert [out["prompt_tokens"][k + p] for p in range(3)] == [r.prompt_tokens for r in expected]
        assert errors[k:k + 3] == [None] * 3


def test_seeded_sampling_gives_a_row_the_same_text_in_any_batch_and_on_a_rerun(tmp_path, tiny_next_path):
    rows = [{"id": f"r{i}", "image": encoded(*SIZES[i % 2], seed=0)} for i in range(4)]  # two pictures twice
    rows.append({"id": "greedy", "image": encoded(*SIZES[0], seed=0), "sampling": json.dumps({"temperature": 0})})
    rows.append({"id": "typo", "image": encoded(*SIZES[0], seed=0), "sampling": json.dumps({"temprature": 1})})
    pictures_shard(tmp_path, rows)
    sampled = dict(temperature=1.0, top_k=40, seed=7, columns=ColumnMap(sampling="sampling"))
    batch = stage_batch(settings_for(tmp_path, tiny_next_path, **sampled))
    together = Predictor(settings_for(tmp_path, tiny_next_path, batch_size=6, **sampled))
    one_by_one = Predictor(settings_for(tmp_path, tiny_next_path, batch_size=1, **sampled))
    first = together(dict(batch))
    assert list(first["batch_size"][:5]) == [5] * 5
    assert list(one_by_one(dict(batch))["text"]) == list(first["text"]) == list(together(dict(batch))["text"])
    texts = list(first["text"])
    assert texts[0] != texts[2] and texts[1] != texts[3]  # same picture and prompt, another id: another draw
    greedy = Predictor(settings_for(tmp_path, tiny_next_path))(dict(batch))
    assert texts[4] == greedy["text"][4] == greedy["text"][0]
    assert error_texts(first)[5] == ("bad sampling: unknown sampling field(s) temprature; fields: repetition_penalty, "
                                     "seed, stop, temperature, top_k, top_p")
    reseeded = Predictor(settings_for(tmp_path, tiny_next_path, **{**sampled, "seed": 8}))(dict(batch))
    assert list(reseeded["text"][:4]) != texts[:4]


def test_stop_strings_and_choices(tmp_path, tiny_next_path, tiny_next):
    rows = [{"id": f"r{i}", "image": encoded(*size, seed=i)} for i, size in enumerate(SIZES)]
    rows[1]["choices"] = ["red", "green", "blue sky"]  # words the tiny tokenizer spells
    rows[2]["choices"] = []
    pictures_shard(tmp_path, rows)
    plain = stage_batch(settings_for(tmp_path, tiny_next_path))
    greedy = list(Predictor(settings_for(tmp_path, tiny_next_path))(dict(plain))["text"])
    words = greedy[0].split()
    assert len(words) >= 3, greedy[0]
    stop = words[2]
    stopped = Predictor(settings_for(tmp_path, tiny_next_path, stop=[stop]))(dict(plain))
    assert stopped["text"][0] == greedy[0][: greedy[0].index(stop)].strip()
    for text, full in zip(stopped["text"], greedy):
        assert text == (full[: full.index(stop)].strip() if stop in full else full)

    batch = stage_batch(settings_for(tmp_path, tiny_next_path, columns=ColumnMap(choices="choices")))
    choosing = Predictor(settings_for(tmp_path, tiny_next_path, choices=("yes", "no"),
                                      columns=ColumnMap(choices="choices")))
    out = choosing(dict(batch))
    errors = error_texts(out)
    assert out["text"][0] in {"yes", "no"} and out["text"][3] in {"yes", "no"}
    assert out["text"][1] in {"red", "green", "blue sky"}, errors[1]
    assert errors[2].startswith("bad choices: ") and out["text"][2] is None
    assert [e is None for e in errors] == [True, True, False, True]


def test_generation_settings_are_checked_before_anything_runs(tmp_path, tiny_next_path):
    from pipeline.model_check import check_choices

    with pytest.raises(InputError, match="--top-p and --top-k shape sampling: set --temperature > 0"):
        JobSettings(top_p=0.9)
    with pytest.raises(InputError, match="--prompts and --prompt-column"):
        JobSettings(prompts=(("a", "Describe."),), columns=ColumnMap(prompt="instruction"))
    with pytest.raises(InputError, match="--compile on needs --decode-cache static"):
        JobSettings(compile="on", decode_cache="dynamic")
    (tmp_path / "dup.json").write_text(json.dumps([{"name": "x", "prompt": "A."}, {"name": "x", "prompt": "B."}]))
    with pytest.raises(ValueError, match="prompt names must be unique; repeated: x"):
        read_prompts(str(tmp_path / "dup.json"))
    (tmp_path / "lines.txt").write_text("Describe it.\n\n  List tags.  \n")
    assert read_prompts(str(tmp_path / "lines.txt")) == (("1", "Describe it."), ("2", "List tags."))
    long_answer = "a very long answer that needs many tokens"
    with pytest.raises(InputError, match=f"--choices {long_answer},no: choice .* cannot be tokenized"):
        check_choices(JobSettings(model=str(tiny_next_path), choices=(long_answer, "no"), max_new_tokens=2))
    recorded = JobSettings(temperature=0.7, seed=3, stop=["END"]).result_settings()
    assert (recorded["temperature"], recorded["seed"], recorded["stop"]) == (0.7, 3, ["END"])
    assert not {"temperature", "seed", "stop", "choices", "prompts", "top_p"} & set(JobSettings().result_settings())


def test_a_job_with_several_prompts_writes_a_row_per_picture_and_prompt(ray_local, tmp_path, tiny_next_path):
    from pipeline.job.run import run_job

    (tmp_path / "prompts.txt").write_text("Describe it.\nList tags.\n")
    write_shard(str(tmp_path / "in" / "a.parquet"), [{"id": "x", "image": encoded(100, 80, seed=1)},
                                                     {"id": "y", "image": truncated_jpeg()},
                                                     {"id": "z", "image": encoded(64, 64, seed=2)}])
    settings = JobSettings(input=str(tmp_path / "in"), output=str(tmp_path / "out"), model=str(tiny_next_path),
                           num_gpus=0, max_new_tokens=3, prompts=read_prompts(str(tmp_path / "prompts.txt")))
    summary = run_job(settings)
    table = pq.read_table(tmp_path / "out" / "a.parquet")
    assert table.schema.names[:3] == ["id", "prompt_name", "prompt_index"]
    assert table.column("id").to_pylist() == ["x", "x", "y", "y", "z", "z"]
    assert table.column("prompt_name").to_pylist() == ["1", "2"] * 3
    assert table.column("row_index").to_pylist() == [0, 0, 1, 1, 2, 2]
    assert [e is None for e in table.column("error").to_pylist()] == [True, True, False, False, True, True]
    assert (summary["items"], summary["pictures"], summary["prompts"]) == (6, 3, ["1", "2"])
    assert (summary["ok"], summary["errors"], summary["duplicate_ids"]) == (4, 2, 0)
    again = run_job(settings)
    assert again["shards"]["written_this_run"] == 0 and again["shards"]["already_complete"] == 1
    with pytest.raises(InputError, match="prompts differ"):
        run_job(dataclasses.replace(settings, prompts=(("1", "Describe it."),)))
