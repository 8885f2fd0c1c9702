"""`hired plan` and `--dry-run`: whether a model fits a card, at which budget and batch, from its config."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hired
from pipeline.memory import MemoryModel, count_weight_bytes
from pipeline.memory.cards import CARDS, CUDA_CONTEXT_BYTES, capped_card, plan_on_card, verdict
from pipeline.memory.checkpoints import checkpoint_config, planning_config
from pipeline.memory.shape import GiB

from .data import encoded, write_shard

REPO = Path(__file__).resolve().parent.parent
TWENTY, FORTY = hired.HiREDConfig(budget=0.2), hired.HiREDConfig(budget=0.4)


def test_vicuna_13b_fits_an_a10g_in_8_bits_only():
    config = checkpoint_config("llava-v1.6-vicuna-13b-hf")
    fp16 = plan_on_card(config, CARDS["a10g"], [TWENTY])
    assert not fp16.weights_fit and not fp16.fits and [row.batch for row in fp16.rows] == [0, 0]
    assert verdict(config, fp16) == (
        "does not fit: 24.87 GiB of weights; the A10G 24 GB holds 21.49 GiB after the CUDA context; "
        "use --quantization 8bit or --gpus-per-model 2")
    eight = plan_on_card(config, CARDS["a10g"], [TWENTY], quantization="8bit")
    assert eight.fits and eight.rows[1].batch >= 1
    assert verdict(config, eight) == f"fits: batch {eight.rows[1].batch} at 20% ({eight.rows[0].batch} with every token)"
    # The suggested split fits too, each GPU holding about half.
    two = plan_on_card(config, CARDS["a10g"], [TWENTY], gpus=2)
    assert two.fits and sum(two.split.weights_bytes) == count_weight_bytes(config, torch.float16).total_bytes
    assert max(two.split.weights_bytes) < 0.55 * sum(two.split.weights_bytes)


def test_vicuna_7b_with_every_token_does_not_fit_a_t4_in_16_bits():
    config = checkpoint_config("llava-v1.6-vicuna-7b-hf")
    plan = plan_on_card(config, CARDS["t4"], [])  # no budget asked: the verdict is about every token
    assert plan.weights_fit and plan.rows[0].label == "every token" and plan.rows[0].batch == 0 and not plan.fits
    assert verdict(config, plan).startswith("does not fit: the weights leave ")
    assert verdict(config, plan).endswith("one item at every token needs 1.90 GiB; use --quantization 8bit or "
                                          "--gpus-per-model 2")
    assert plan_on_card(config, CARDS["t4"], [], quantization="8bit").fits


@pytest.mark.parametrize("card", ["t4", "a10g", "h100"])
@pytest.mark.parametrize("budget", [None, FORTY, TWENTY])
def test_the_batch_is_what_fits_after_the_context_and_the_margin(card, budget):
    """Restated from the card's numbers: free = total - context - weights; usable = free - 1 GiB - 10% of
    free; the batch is the most items of the picture's bytes that fit in it."""
    config = checkpoint_config("llava-v1.6-vicuna-7b-hf")
    plan = plan_on_card(config, CARDS[card], [budget] if budget else [], quantization="8bit")
    weights = count_weight_bytes(config, torch.float16, "8bit").total_bytes
    free = CARDS[card].total_bytes - CUDA_CONTEXT_BYTES - weights
    usable = free - GiB - math.ceil(0.1 * free)
    row = plan.rows[-1]
    item = MemoryModel(config, torch.float16, quantization="8bit").picture_item_bytes((672, 672), budget, 60, 128)
    assert row.item == item
    assert row.batch * item.total_bytes <= usable < (row.batch + 1) * item.total_bytes
    assert row.prompt_tokens == 60 + (2880 + 48 if budget is None else math.floor(budget.budget * 2880))


def test_a_capped_card_holds_no_context_as_the_actor_under_a_cap_sees_it():
    config = checkpoint_config("llava-v1.6-vicuna-7b-hf")
    plan = plan_on_card(config, capped_card(22), [TWENTY])
    assert plan.free_bytes[0] == 22 * GiB - count_weight_bytes(config, torch.float16).total_bytes


@pytest.mark.parametrize("size", [(240, 320), (672, 672), (300, 900), (1, 400), (1000, 100)])
@pytest.mark.parametrize("budget", [None, TWENTY, hired.HiREDConfig(budget=640, newlines="all")])
def test_the_pictures_tokens_are_what_hired_prepares(tiny_next, tiny_llava, size, budget):
    for model, _ in (tiny_next, tiny_llava):
        image = MemoryModel(model.config, torch.float32).image_tokens(size, budget)
        lengths = hired.expected_lengths(model, size, 5000, budget)
        assert (image.partitions, image.grid_tokens, image.visual_tokens_llm) == (
            lengths.partitions, lengths.visual_tokens_full, lengths.visual_tokens_llm)


def test_configs_come_from_a_folder_the_hub_cache_or_the_known_checkpoints(tmp_path, tiny_next_path, monkeypatch):
    import huggingface_hub.constants

    config, source = planning_config(str(tiny_next_path))
    assert config.model_type == "llava_next" and source == f"{tiny_next_path}/config.json"
    # A hub id in the cache, laid out as huggingface_hub lays it out.
    snapshot = tmp_path / "hub" / "models--someone--tiny-next" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text((tiny_next_path / "config.json").read_text())
    (tmp_path / "hub" / "models--someone--tiny-next" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-next" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cached, source = planning_config("someone/tiny-next")
    assert source.startswith("the hub cache") and cached.text_config.hidden_size == config.text_config.hidden_size
    known, source = planning_config("llava-hf/llava-v1.6-34b-hf")
    assert known.text_config.num_key_value_heads == 8 and "pipeline.memory.checkpoints" in source
    for wrong, message in [("someone/not-cached", "not in the hub cache"), (str(tmp_path / "nowhere/x/y"), "not a local"),
                           (str(tmp_path), "holds no config.json")]:
        with pytest.raises(ValueError, match=message):
            planning_config(wrong)


def plan_output(capsys, *args) -> tuple[int, list[str]]:
    import pipeline.cli as cli

    status = cli.main(["plan", *args])
    return status, capsys.readouterr().out.splitlines()


def test_hired_plan_prints_the_weights_the_batches_and_a_verdict(capsys):
    status, lines = plan_output(capsys, "--model", "llava-v1.6-vicuna-13b-hf", "--gpu", "a10g", "--quantization", "8bit",
                                "--budget", "0.4,0.2")
    assert status == 0
    assert lines[1].startswith("llava-v1.6-vicuna-13b-hf on 1 x A10G 24 GB (21.99 GiB each; 0.5 GiB CUDA context, "
                               "then the sizer's 1 GiB + 10% held back per GPU), 8bit, 1 GPU")
    assert lines[2] == "weights: 12.75 GiB"
    assert lines[4] == ("a typical picture: 672x672 (5 partitions, 2880 grid tokens + 48 newlines), 60 text tokens, "
                        "128 new tokens")
    batches = [int(re.search(r"batch (\d+)$", line).group(1)) for line in lines[5:8]]
    assert [line.split()[0] for line in lines[5:8]] == ["every", "40%", "20%"]
    assert lines[-1] == f"fits: batch {batches[1]} at 40%, batch {batches[2]} at 20% ({batches[0]} with every token)"
    status, lines = plan_output(capsys, "--model", "llava-v1.6-vicuna-13b-hf", "--gpu", "a10g", "--gpus-per-model", "2")
    assert status == 0 and lines[2].startswith("weights per GPU: GPU 0: ") and "(19 layers, vision), GPU 1" in lines[2]
    status, lines = plan_output(capsys, "--model", "llava-next-72b-hf")  # every card, a line each; none holds it
    assert status == 1 and [line.split()[0] for line in lines[1:]] == list(CARDS)
    assert lines[-1].startswith("h100     does not fit: ") and lines[-1].endswith("use --quantization 8bit or "
                                                                              "--gpus-per-model 2")


def test_hired_plan_refuses_what_it_cannot_read(capsys):
    import pipeline.cli as cli

    assert cli.main(["plan", "--model", "someone/not-here", "--gpu", "t4"]) == 2
    assert "not in the hub cache" in capsys.readouterr().err
    assert cli.main(["plan", "--model", "llava-1.5-7b-hf", "--gpu", "t4", "--gpus-per-model", "40"]) == 2
    assert "splits over 1 to 32 GPUs, not 40" in capsys.readouterr().err
    from pipeline.cli.plan import CARD_NAMES

    assert CARD_NAMES == tuple(CARDS)  # --help lists the cards without importing torch


def test_the_cards_table_is_current_and_is_what_hired_plan_says(tmp_path, capsys):
    written = tmp_path / "cards.md"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "plan_table.py"), "--out", str(written)],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    docs = (REPO / "docs" / "cards.md").read_text()
    assert written.read_text() == docs, "docs/cards.md is stale: run python bench/plan_table.py"
    tables = docs.split("## ")[1:]
    cards = {"T4 16 GB": "t4", "A10G 24 GB": "a10g", "L4 24 GB": "l4", "A100 80 GB": "a100-80", "H100 80 GB": "h100"}
    for table, quantization in zip(tables, [None, "8bit"]):
        rows = [line.strip("|").split(" | ") for line in table.splitlines() if line.startswith("| ")]
        header, body = [c.strip() for c in rows[0]], {r[0].strip(): [c.strip() for c in r] for r in rows[1:]}
        for model, card in [("llava-v1.6-vicuna-7b-hf", "T4 16 GB"), ("llava-v1.6-vicuna-13b-hf", "A10G 24 GB"),
                            ("llava-next-72b-hf", "H100 80 GB"), ("llava-1.5-7b-hf", "L4 24 GB")]:
            args = ["--model", model, "--gpu", cards[card], "--budget", "0.4,0.2"]
            status, lines = plan_output(capsys, *args, *(["--quantization", quantization] if quantization else []))
            cell = body[model][header.index(card)]
            said = [line.rsplit(" ", 1)[-1] for line in lines if re.match(r"  (every|40%|20%) ", line)]
            assert cell == ("weights too big" if said == ["-"] * 3 else " / ".join(said)), (model, card, lines)
            assert (status == 0) == (cell != "weights too big" and "0" not in said[1:])


def test_dry_run_plans_the_input_and_the_model_and_starts_nothing(tmp_path, tiny_next_path, capsys, monkeypatch):
    import pipeline.cli as cli
    from pipeline.job import run

    monkeypatch.setattr(run, "init_ray", lambda *a: pytest.fail("Ray was started"))
    write_shard(str(tmp_path / "in" / "a.parquet"), [{"id": f"a{i}", "image": encoded(60, 90, seed=i)} for i in range(3)])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".a.0123.tmp").write_text("a running job's half-written file")
    args = ["caption", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", str(tiny_next_path),
            "--dry-run"]
    assert cli.main(args + ["--accelerator-type", "T4", "--quantization", "8bit"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"input {tmp_path / 'in'}: 1 shards to do (3 rows), 0 already complete in {tmp_path / 'out'}, 0 unreadable"
    assert lines[1] == f"model config: {tiny_next_path}/config.json"
    assert lines[2].startswith(f"{tiny_next_path} on 1 x T4 16 GB (14.56 GiB each;") and lines[2].endswith("8bit, 1 GPU")
    assert lines[-1].startswith("fits: batch 256 at 20%")  # a tiny model: the sizer's ceiling
    assert cli.main(args + ["--gpu-memory-gb", "2", "--budget", "0.4,0.2"]) == 0  # a sweep: each budget
    lines = capsys.readouterr().out.splitlines()
    assert "GPU capped at 2 GiB (2.00 GiB each; the sizer's" in lines[2]
    assert [line.split()[0] for line in lines[6:9]] == ["every", "40%", "20%"]
    assert cli.main(args) == 0  # no card named: a line per card
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]] == list(CARDS)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".a.0123.tmp"]  # nothing written, nothing tidied
