"""hired.viz: the figure's layout, what is drawn where; ``hired viz``, the command line, end to end."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hired import HiREDConfig, prepare_inputs
from hired.geometry import anyres_layout
from hired.models import Partitions
from hired.tiny import LLAVA_NEXT_PINPOINTS, build_tiny_llava_next
from hired.viz import (
    KEPT_COLOR,
    PADDING_ALPHA,
    PADDING_COLOR,
    denormalize,
    figure_size,
    panel_boxes,
    render,
    render_prepared,
)

from pipeline.cli import build_parser as hired_parser
from pipeline.cli import main as hired_main

from .conftest import chat_prompt, noise_image


def main(argv) -> int:
    """``hired viz ARGS``: its exit status, argparse's own refusals included."""
    try:
        return hired_main(["viz", *argv])
    except SystemExit as exit_:
        return exit_.code


def build_parser():
    return next(a for a in hired_parser()._actions if a.dest == "command").choices["viz"]

ROOT = Path(__file__).resolve().parent.parent
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]  # CLIP's


def next_partitions(height, width):
    layout = anyres_layout((height, width), LLAVA_NEXT_PINPOINTS, tile_size=336, patch_size=14)
    return Partitions(valid=torch.cat([torch.ones(1, 576, dtype=torch.bool), layout.valid_mask()]), layout=layout)


def flat_pixels(colors):
    """(P, 3, 336, 336) normalised pixels, partition p a flat picture of colors[p] (uint8 RGB)."""
    pictures = torch.tensor(colors, dtype=torch.float32).view(-1, 3, 1, 1).expand(-1, 3, 336, 336) / 255
    return (pictures - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_denormalize_undoes_the_processors_normalisation(tiny_next):
    _, processor = tiny_next
    ip = processor.image_processor
    picture = np.asarray(noise_image(336, 336))
    normalised = ip(Image.fromarray(picture), return_tensors="pt")["pixel_values"][0, 0]  # the squashed full view
    restored = denormalize(normalised, ip.image_mean, ip.image_std).astype(int)
    assert restored.shape == (336, 336, 3)
    assert np.abs(restored - picture).max() <= 1  # 336x336 is resized to itself: only rounding is lost


def test_layout_of_a_2x2_figure():
    boxes = panel_boxes(5, (2, 2), 336)
    assert len(boxes) == 5
    assert all(r - l == 336 and b - t == 336 for l, t, r, b in boxes)
    # Full view on the left; sub-images in their grid to its right, row-major, not overlapping.
    assert boxes[1][0] == boxes[3][0] > boxes[0][2] and boxes[2][0] > boxes[1][2]
    assert boxes[1][1] == boxes[2][1] == boxes[0][1] and boxes[3][1] > boxes[1][3]
    # margin + full view + gap + two columns with a margin between + margin; header + 2 titled rows + margins.
    assert figure_size(boxes) == (12 + 336 + 28 + 336 + 12 + 336 + 12, 30 + 2 * (22 + 336) + 12 + 12)
    assert figure_size(panel_boxes(1, None, 336)) == (12 + 336 + 12, 30 + 22 + 336 + 12)
    with pytest.raises(ValueError, match="does not hold"):
        panel_boxes(4, (2, 2), 336)


def test_kept_tokens_are_outlined_and_padding_shaded(tmp_path):
    # A 2x2 grid; the picture is padded above and below: the top sub-images' first 6 token rows and the
    # bottom ones' last 6 are padding.
    parts = next_partitions(480, 640)
    colors = [(200, 100, 50), (20, 200, 20), (20, 20, 200), (200, 200, 20), (120, 20, 160)]
    kept = [torch.tensor([0, 300]), torch.tensor([6 * 24 + 5]), torch.tensor([], dtype=torch.long),
            torch.tensor([200]), torch.tensor([17 * 24 + 23])]
    figure = render(flat_pixels(colors), parts, kept, MEAN, STD, title="test")
    path = tmp_path / "kept.png"
    figure.save(path)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.mode == "RGB"
        pixels = np.asarray(png).astype(int)
    boxes = panel_boxes(5, (2, 2), 336)
    assert pixels.shape == (figure_size(boxes)[1], figure_size(boxes)[0], 3)

    def at(p, token, dy, dx):
        """The figure's pixel at offset (dy, dx) inside token ``token`` of partition ``p``."""
        y, x = divmod(token, 24)
        return tuple(pixels[boxes[p][1] + y * 14 + dy, boxes[p][0] + x * 14 + dx])

    shaded = lambda color: tuple(np.round(np.array(color) * (1 - PADDING_ALPHA) + PADDING_COLOR * PADDING_ALPHA))
    for p, tokens in enumerate(kept):
        for token in tokens.tolist():
            assert at(p, token, 0, 0) == at(p, token, 13, 13) == at(p, token, 1, 7) == KEPT_COLOR
            assert np.abs(np.array(at(p, token, 7, 7)) - colors[p]).max() <= 1  # the inside is the picture
    # A dropped token is the bare picture, border included; a padding token is shaded.
    assert np.abs(np.array(at(0, 1, 0, 0)) - colors[0]).max() <= 1
    assert np.abs(np.array(at(1, 6 * 24 + 6, 0, 0)) - colors[1]).max() <= 1
    for p, padding_rows in [(1, range(6)), (2, range(6)), (3, range(18, 24)), (4, range(18, 24))]:
        for y in range(24):
            for x in (0, 11, 23):
                expected = shaded(colors[p]) if y in padding_rows else colors[p]
                assert np.abs(np.array(at(p, y * 24 + x, 7, 7)) - expected).max() <= 1, (p, y, x)
    # The full view has no padding.
    assert np.abs(np.array(at(0, 575, 7, 7)) - colors[0]).max() <= 1
    with pytest.raises(ValueError, match="partitions"):
        render(flat_pixels(colors[:4]), parts, kept[:4], MEAN, STD)


@pytest.mark.parametrize("size, grid", [((480, 640), (2, 2)), ((300, 900), (1, 3)), ((1000, 200), (3, 1))])
def test_render_prepared_has_one_panel_per_partition(tiny_next, size, grid):
    model, processor = tiny_next
    inputs = processor(images=[noise_image(*size)], text=[chat_prompt(processor, "hi")], return_tensors="pt")
    prepared = prepare_inputs(model, inputs, HiREDConfig(budget=0.2, strategy="uniform"))
    assert prepared.partitions[0].layout.grid == grid
    figure = render_prepared(prepared, inputs, processor, 0, "title")
    assert figure.size == figure_size(panel_boxes(1 + grid[0] * grid[1], grid, 336))
    # Every kept token's top-left corner is outlined.
    boxes = panel_boxes(1 + grid[0] * grid[1], grid, 336)
    array = np.asarray(figure)
    for p, kept in enumerate(prepared.kept_indices[0]):
        for token in kept.tolist():
            y, x = divmod(token, 24)
            assert tuple(array[boxes[p][1] + y * 14, boxes[p][0] + x * 14]) == KEPT_COLOR


def test_render_prepared_llava_15_is_one_panel(tiny_llava):
    model, processor = tiny_llava
    inputs = processor(images=[noise_image(480, 640)], text=[chat_prompt(processor, "hi")], return_tensors="pt")
    prepared = prepare_inputs(model, inputs, HiREDConfig(budget=0.2))
    assert render_prepared(prepared, inputs, processor).size == (12 + 336 + 12, 30 + 22 + 336 + 12)


def test_help_explains_every_flag(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("IMAGE", "--model", "--budget", "--alpha", "--strategy", "--seed", "--newlines", "--device", "--output"):
        assert flag in text
    for action in build_parser()._actions:
        assert action.help and len(action.help) > 10, action.dest


@pytest.mark.parametrize(
    "argv, message",
    [
        (["x.png", "--budget", "1.5"], r"\(0, 1\]"),
        (["x.png", "--strategy", "fastv"], "invalid choice"),
        (["x.png", "--alpha", "2"], "alpha"),
    ],
)
def test_bad_settings_are_usage_errors(capsys, argv, message):
    assert main(argv) == 2
    assert __import__("re").search(message, capsys.readouterr().err)


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "viz", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )


def test_cli_end_to_end(tmp_path):
    model = build_tiny_llava_next(tmp_path / "tiny")
    noise_image(480, 640).save(tmp_path / "photo.jpg")
    result = run_cli(tmp_path / "photo.jpg", "--budget", "0.2", "--model", model, "--strategy", "prumerge+",
                     "-o", tmp_path / "out.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "keeps 460 of 2304" in result.stdout
    with Image.open(tmp_path / "out.png") as png:
        png.verify()
    with Image.open(tmp_path / "out.png") as png:
        assert png.format == "PNG" and png.size == figure_size(panel_boxes(5, (2, 2), 336))
        assert np.asarray(png.convert("RGB")).std() > 10  # not a blank canvas


def test_cli_bad_image_path_is_a_clear_error(tmp_path):
    result = run_cli(tmp_path / "missing.jpg", "--model", tmp_path / "no-model", cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot read image" in result.stderr and "missing.jpg" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["notes.txt", "folder", "missing.png"])
def test_unreadable_images_exit_before_loading_a_model(tmp_path, capsys, name):
    (tmp_path / "notes.txt").write_text("not a picture")
    (tmp_path / "folder").mkdir()
    assert main([str(tmp_path / name), "--model", str(tmp_path / "no-model")]) == 2
    assert f"cannot read image '{tmp_path / name}'" in capsys.readouterr().err


def test_missing_model_folder_is_a_clear_error(tmp_path, capsys):
    noise_image(64, 64).save(tmp_path / "photo.png")
    assert main([str(tmp_path / "photo.png"), "--model", str(tmp_path / "no-model")]) == 2
    assert capsys.readouterr().err == f"error: --model {tmp_path / 'no-model'}: no such folder\n"


def test_without_a_model_it_draws_with_the_demos_tiny_one_and_says_so(tmp_path):
    """No network and no --model: a picture within seconds, from the demo's locally built model."""
    noise_image(480, 640).save(tmp_path / "photo.jpg")
    result = run_cli(tmp_path / "photo.jpg", "-o", tmp_path / "kept.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no --model given: using the demo's tiny random-weight model at "
                                    f"{tmp_path / 'demo_output' / 'tiny-llava-next'}")
    assert "keeps 460 of 2304" in result.stdout and (tmp_path / "kept.png").exists()


def test_a_hub_id_not_cached_offline_is_one_line_at_once(tmp_path):
    noise_image(64, 64).save(tmp_path / "photo.png")
    result = run_cli(tmp_path / "photo.png", "--model", "llava-hf/llava-v1.6-vicuna-7b-hf", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: --model llava-hf/llava-v1.6-vicuna-7b-hf: not a local folder, and as a hub id not in the local cache "
        "(HF_HUB_OFFLINE is set): download it first or give a local folder"]


def test_quantized_in_8_bits_it_keeps_the_same_count(tmp_path, tiny_next_path, capsys):
    noise_image(480, 640).save(tmp_path / "photo.jpg")
    status = main([str(tmp_path / "photo.jpg"), "--model", str(tiny_next_path), "--quantization", "8bit",
                   "-o", str(tmp_path / "out.png")])
    assert status == 0 and "keeps 460 of 2304" in capsys.readouterr().out
    with Image.open(tmp_path / "out.png") as png:
        assert png.size == figure_size(panel_boxes(5, (2, 2), 336))
