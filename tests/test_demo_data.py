"""The generated demo dataset: shards, schema, encodings, the corrupt row, determinism."""

import io
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.demo.data import (
    DEMO_SIZES,
    Scene,
    demo_rows,
    demo_scene,
    draw_scene,
    plan_scene,
    render_scene,
    scene_questions,
    write_demo_shards,
)

MAGIC_BYTES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"RIFF": "WEBP"}


def sniff_format(data: bytes) -> str:
    return next(name for magic, name in MAGIC_BYTES.items() if data.startswith(magic))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    directory = tmp_path_factory.mktemp("demo")
    written = write_demo_shards(directory)
    rows = [row for path in written.paths for row in pq.read_table(path).to_pylist()]
    return written, rows


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_shards_and_row_counts(demo):
    written, rows = demo
    assert [Path(p).name for p in written.paths] == [f"shard-0000{i}.parquet" for i in range(3)]
    assert [pq.read_metadata(p).num_rows for p in written.paths] == [8, 8, 8]
    assert written.num_rows == len(rows) == 24


def test_schema(demo):
    written, _ = demo
    schema = pq.read_schema(written.paths[0])
    assert schema.field("id").type == pa.string()
    assert schema.field("image").type == pa.binary()
    assert schema.field("prompt").type == pa.string()
    assert schema.field("question").type == pa.string()
    assert schema.field("answers").type == pa.list_(pa.string())
    assert schema.names == ["id", "image", "prompt", "question", "answers"]


def test_ids_unique_across_shards(demo):
    _, rows = demo
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids)
    assert ids[3] == "demo-0003"


def test_prompts_mix_text_and_null(demo):
    _, rows = demo
    prompts = [row["prompt"] for row in rows]
    assert None in prompts
    assert len({p for p in prompts if p is not None}) >= 2


def test_every_question_has_ten_answers(demo):
    _, rows = demo
    for row in rows:
        assert row["question"].endswith("?")
        assert len(row["answers"]) == 10
        assert all(isinstance(answer, str) and answer for answer in row["answers"])


def test_all_three_formats_present(demo):
    _, rows = demo
    formats = Counter(sniff_format(row["image"]) for row in rows)
    assert set(formats) == {"JPEG", "PNG", "WEBP"}


def test_images_decode_except_the_one_corrupt_row(demo):
    written, rows = demo
    assert len(written.corrupt_ids) == 1
    for row in rows:
        if row["id"] in written.corrupt_ids:
            continue
        image = decode(row["image"])
        assert image.mode == "RGB"
        assert image.format == sniff_format(row["image"])


def test_corrupt_row_is_a_truncated_jpeg_that_fails_to_load(demo):
    written, rows = demo
    (corrupt,) = [row for row in rows if row["id"] in written.corrupt_ids]
    assert sniff_format(corrupt["image"]) == "JPEG"
    # The header is intact, so opening succeeds; decoding the pixels does not.
    Image.open(io.BytesIO(corrupt["image"]))
    with pytest.raises(OSError):
        decode(corrupt["image"])
    assert len(corrupt["answers"]) == 10


def test_sizes_and_aspect_ratios_vary(demo):
    written, rows = demo
    sizes = {decode(row["image"]).size for row in rows if row["id"] not in written.corrupt_ids}
    assert sizes == set(DEMO_SIZES)


def test_same_seed_same_bytes(demo, tmp_path):
    written, _ = demo
    again = write_demo_shards(tmp_path)
    assert [Path(p).read_bytes() for p in again.paths] == [Path(p).read_bytes() for p in written.paths]


def test_other_seed_other_pictures():
    first = demo_rows(4, seed=0, include_corrupt=False)
    second = demo_rows(4, seed=1, include_corrupt=False)
    assert all(a["image"] != b["image"] for a, b in zip(first, second))


def test_without_corrupt_row_everything_decodes(tmp_path):
    written = write_demo_shards(tmp_path, num_shards=2, rows_per_shard=3, include_corrupt=False)
    assert written.num_rows == 6 and written.corrupt_ids == ()
    for path in written.paths:
        for row in pq.read_table(path).to_pylist():
            decode(row["image"])


def test_rejects_empty_dataset(tmp_path):
    with pytest.raises(ValueError):
        write_demo_shards(tmp_path, num_shards=0)


@pytest.mark.parametrize("width, height", DEMO_SIZES)
def test_draw_scene_size_and_determinism(width, height):
    image = draw_scene(width, height, seed=7)
    assert image.size == (width, height) and image.mode == "RGB"
    assert image.tobytes() == draw_scene(width, height, seed=7).tobytes()
    assert image.tobytes() != draw_scene(width, height, seed=8).tobytes()
    # A picture, not a flat fill: many distinct colours (getcolors gives None past maxcolors).
    colors = image.getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 20


def test_answers_follow_what_was_drawn():
    scene = Scene(
        width=640, height=480, time_of_day="night", clouds=1, mountains=False, houses=3, trees=0,
        road=True, car_color="red", water=True, boat=False, layout_seed=5,
    )
    truth = {question: majority for question, majority, _ in scene_questions(scene)}
    assert truth["Is there a car in the picture?"] == "yes"
    assert truth["What color is the car?"] == "red"
    assert truth["How many houses are there?"] == "3"
    assert truth["How many trees are in the picture?"] == "0"
    assert truth["Is there a boat on the water?"] == "no"
    assert truth["Are there mountains in the background?"] == "no"
    assert truth["What time of day is it?"] == "night"
    assert render_scene(scene).size == (640, 480)


def test_majority_answer_of_each_row_is_the_truth():
    for index, row in enumerate(demo_rows(12, seed=3, include_corrupt=False)):
        truth = {question: majority for question, majority, _ in scene_questions(demo_scene(index, seed=3))}
        top_answer, votes = Counter(row["answers"]).most_common(1)[0]
        assert top_answer == truth[row["question"]]
        assert votes >= 7, (index, row["answers"])


def test_plan_scene_counts_fit_the_picture():
    for seed in range(50):
        scene = plan_scene(300, 900, seed)
        assert 1 <= scene.houses and scene.houses + scene.trees <= 2
        assert not scene.boat or scene.water
        assert scene.car_color is None or scene.road
