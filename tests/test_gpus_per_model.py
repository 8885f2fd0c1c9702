"""One model over several GPUs: the split (which device holds which layers), each device's part of
an item, batches that fit the tightest device, and Ray actors holding N GPUs each."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

import hired
from hired.prepare import ItemLengths
from pipeline.memory import BatchSizer, DeviceShare, ItemBytes, Margin, MemoryModel, count_weight_bytes, split_model
from pipeline.memory.checkpoints import NAMES, checkpoint_config
from pipeline.memory.placement import shares_of
from pipeline.memory.shape import GiB
from pipeline.memory.weights import count_weight_bytes_by_module

from .data import encoded, write_shard
from .servers import free_port
from .test_jobs import REPO, job_env


def meta_model(config):
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


@pytest.mark.parametrize("name", ["llava-v1.6-vicuna-13b-hf", "llava-next-72b-hf", "llava-1.5-7b-hf"])
@pytest.mark.parametrize("quantization", [None, "4bit"])
def test_the_split_places_every_parameter_once_and_balances_the_weights(name, quantization):
    config = checkpoint_config(name)
    parameters = [n for n, _ in meta_model(config).named_parameters()]
    parts = count_weight_bytes_by_module(config, torch.float16, quantization)
    total = count_weight_bytes(config, torch.float16, quantization).total_bytes
    layer = max(w.total_bytes for part, w in parts.items() if ".layers." in part)
    for devices in (1, 2, 3, 4, 8):
        split = split_model(config, torch.float16, devices, quantization)
        # Each parameter falls under exactly one entry of the device map, as accelerate requires.
        for parameter in parameters:
            holders = [part for part in split.device_map if parameter == part or parameter.startswith(part + ".")]
            assert len(holders) == 1, (parameter, holders)
        assert sum(split.weights_bytes) == total
        assert sum(split.layers_on(d) for d in range(devices)) == config.text_config.num_hidden_layers
        assert all(split.layers_on(d) >= 1 for d in range(devices))
        # Device order follows the model's: the vision tower first, decoder layers in runs, lm_head last.
        order = list(split.device_map.values())
        assert order == sorted(order) and order[0] == 0 and order[-1] == devices - 1
        # Balanced: moving one layer between neighbours could not make the fullest device lighter by
        # more than a layer, so the fullest holds at most the average plus the fixed parts plus a layer.
        fixed = total - sum(w.total_bytes for part, w in parts.items() if ".layers." in part)
        assert max(split.weights_bytes) <= total / devices + fixed + layer


def test_the_split_is_what_transformers_loads_and_generates_the_same(tmp_path, tiny_next):
    """The device map names the real modules: the tiny model loads with it split over two devices (the
    CPU and, for want of a second GPU here, the disk) and generates what it does in one piece."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from .conftest import noise_image

    model, processor = tiny_next
    path = model.name_or_path
    split = split_model(AutoConfig.from_pretrained(path), torch.float32, 2)
    assert split.layers_on(0) == split.layers_on(1) == 1
    device_map = {part: "cpu" if device == 0 else "disk" for part, device in split.device_map.items()}
    spread = AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch.float32, device_map=device_map, offload_folder=str(tmp_path / "offload")).eval()
    assert spread.hf_device_map == device_map
    picture, prompt, config = noise_image(300, 500, seed=1), "USER: <image>\nwhat is this ASSISTANT:", hired.HiREDConfig()
    expected = hired.generate(model, processor, [picture], [prompt], config, max_new_tokens=5)[0]
    got = hired.generate(spread, processor, [picture], [prompt], config, max_new_tokens=5)[0]
    assert got.token_ids == expected.token_ids and got.visual_tokens_kept == expected.visual_tokens_kept
    del device_map["model.language_model.layers.1"]  # the loader does check the map against the modules
    with pytest.raises(ValueError, match="does not give any device for the following parameters"):
        AutoModelForImageTextToText.from_pretrained(path, device_map=device_map, offload_folder=str(tmp_path / "o2"))
    with pytest.raises(ValueError, match="splits over 1 to 2 GPUs, not 3"):
        split_model(model.config, torch.float32, 3)


def test_each_device_holds_its_layers_kv_cache_and_the_first_the_vision_phase():
    shape = MemoryModel(checkpoint_config("llava-v1.6-vicuna-7b-hf"), torch.float16).shape
    device_map = {"model.vision_tower": 0, "model.multi_modal_projector": 0, "model.image_newline": 0,
                  "model.language_model.embed_tokens": 0, "model.language_model.rotary_emb": 0,
                  **{f"model.language_model.layers.{i}": 0 if i < 12 else 1 for i in range(32)},
                  "model.language_model.norm": 1, "lm_head": 1}
    first, second = shares_of(device_map, {"cuda:0": 5 * GiB, "cuda:1": 7 * GiB}, shape)
    assert (first.device, first.layers, first.vision, first.free_bytes) == ("cuda:0", 12, True, 5 * GiB)
    assert (second.device, second.layers, second.vision, second.free_bytes) == ("cuda:1", 20, False, 7 * GiB)
    item = ItemBytes(kv_cache_bytes=32 * 1000, prefill_bytes=700, vision_bytes=50)
    assert first.item_bytes(item) == 12 * 1000 + 700 + 50
    assert second.item_bytes(item) == 20 * 1000 + 700
    # accelerate's own maps: the whole model on one device, or the tower cut between two.
    (whole,) = shares_of({"": 0}, {"cuda:0": GiB}, shape)
    assert (whole.layers, whole.vision) == (32, True) and whole.item_bytes(item) == item.total_bytes
    cut = {"model.vision_tower.embeddings": 0, "model.vision_tower.encoder.layers.0": 0,
           "model.vision_tower.encoder.layers.1": 1, "model.language_model": 1, "lm_head": 1}
    assert [(s.layers, s.vision) for s in shares_of(cut, {"cuda:0": GiB, "cuda:1": GiB}, shape)] == [(0, True), (32, True)]


def test_batches_fit_the_tightest_device():
    memory = MemoryModel(checkpoint_config("llava-v1.6-vicuna-7b-hf"), torch.float16)
    lengths = ItemLengths(partitions=5, visual_tokens_full=2880, visual_tokens_kept=2880, visual_tokens_llm=2928,
                          prompt_tokens=2988)
    no_margin = Margin(fraction=0.0, fixed_bytes=0)
    one = BatchSizer(memory, 128, None).padded_item_bytes([lengths])
    # Half the layers each; the first also runs the tower. 10 GiB on the first, 6 on the second.
    shares = [DeviceShare("cuda:0", 10 * GiB, 16, 32, vision=True), DeviceShare("cuda:1", 6 * GiB, 16, 32, vision=False)]
    sizer = BatchSizer(memory, 128, shares, no_margin)
    per_first = math.ceil(one.kv_cache_bytes / 2) + one.prefill_bytes + one.vision_bytes
    per_second = math.ceil(one.kv_cache_bytes / 2) + one.prefill_bytes
    expected = min(10 * GiB // per_first, 6 * GiB // per_second)
    assert sizer.items_that_fit(one) == expected == 6 * GiB // per_second  # the second is the tighter
    batches = sizer.micro_batches([lengths] * (2 * expected + 1))
    assert [len(b) for b in batches] == [expected, expected, 1]
    assert sizer.batch_bytes([lengths] * 2) == 2 * (per_first + per_second)
    # The whole model on one device of both devices' memory fits fewer: the KV cache is not split.
    whole = BatchSizer(memory, 128, 16 * GiB, no_margin)
    assert whole.items_that_fit(one) == 16 * GiB // one.total_bytes < 2 * expected
    line = sizer.describe(one)
    assert line.startswith("batch sizing: over 2 devices (0.00 GiB + 0% held back on each): cuda:0 10.00 GiB free "
                           "after its weights, 10.00 usable (16 of 32 layers, vision), cuda:1 6.00 GiB")
    assert line.endswith(f"; {expected} to a batch at {one.describe()}")


def test_num_gpus_must_be_a_multiple_of_gpus_per_model(tmp_path, tiny_next_path, capsys):
    import pipeline.cli as cli

    args = ["caption", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--model", str(tiny_next_path)]
    for extra, expected in [
        (["--num-gpus", "3", "--gpus-per-model", "2"], "--num-gpus 3 is not a multiple of --gpus-per-model 2: each copy of the model takes 2 GPUs"),
        (["--num-gpus", "0", "--gpus-per-model", "2"], "--gpus-per-model 2 needs GPUs, and --num-gpus 0 runs on CPU"),
    ]:
        assert cli.main(args + extra) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"error: {expected}"]


JOB = """
import json, os, sys
import ray
from ray.util.state import list_actors
from pipeline.job.run import run_job
from pipeline.settings import JobSettings

ray.init(address="local", num_cpus=8, num_gpus=4, include_dashboard=True, dashboard_host="127.0.0.1",
         dashboard_port=int(sys.argv[4]), log_to_driver=False)
summary = run_job(JobSettings(task="caption", input=sys.argv[1], output=sys.argv[2], model=sys.argv[3], num_gpus=4,
                              gpus_per_model=2, quantization="8bit", max_new_tokens=3))
actors = [a for a in list_actors(address=f"http://127.0.0.1:{sys.argv[4]}", detail=True, limit=10_000,
                                  raise_on_missing_output=False)
          if a.class_name == "MapWorker(MapBatches(Predictor))"]
print("RESULT", json.dumps({"summary": summary, "actors": [a.required_resources for a in actors]}))
"""


def test_actors_of_two_gpus_each_on_four_fake_gpus(tmp_path, tiny_next_path):
    """A cluster with four (fake) GPUs and --gpus-per-model 2: Ray runs two generation actors holding two
    GPUs each; with no CUDA they generate on the CPU, in 8 bits, and every row comes back at its budget."""
    import pyarrow.parquet as pq

    from hired.geometry import anyres_layout
    from hired.tiny import LLAVA_NEXT_PINPOINTS

    sizes = [(240, 320), (400, 200), (300, 900), (500, 500)]
    for s in range(2):
        write_shard(str(tmp_path / "in" / f"{s}.parquet"),
                    [{"id": f"{s}-{i}", "image": encoded(*sizes[i], seed=s * 4 + i)} for i in range(4)])
    ray_temp = f"/tmp/rg{free_port()}"  # Ray wants a short socket path
    try:
        result = subprocess.run(
            [sys.executable, "-c", JOB, str(tmp_path / "in"), str(tmp_path / "out"), str(tiny_next_path), str(free_port())],
            capture_output=True, text=True, cwd=REPO, env=job_env({"RAY_TMPDIR": ray_temp}), timeout=600)
    finally:
        subprocess.run(["rm", "-rf", ray_temp], check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-3000:]
    found = json.loads(lines[0].removeprefix("RESULT "))
    assert found["summary"]["items"] == 8 and found["summary"]["errors"] == 0
    assert found["summary"]["settings"]["quantization"] == "8bit"
    assert [r.get("GPU") for r in found["actors"]] == [2.0, 2.0]
    for s in range(2):
        rows = pq.read_table(tmp_path / "out" / f"{s}.parquet").to_pylist()
        assert [r["id"] for r in rows] == [f"{s}-{i}" for i in range(4)]
        for (h, w), r in zip(sizes, rows):
            n = anyres_layout((h, w), LLAVA_NEXT_PINPOINTS, 336, 14).grid_tokens
            assert r["error"] is None and r["device"] == "cpu"
            assert (r["visual_tokens_full"], r["visual_tokens_kept"]) == (n, math.floor(0.2 * n))
