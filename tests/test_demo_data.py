"""The generated demo dataset: shards, schema, sizes and encodings, the one broken row, determinism,
and answers that agree with what the pictures show (read back from their pixels)."""

import io
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from pipeline.demo import example_image
from pipeline.demo.data import COLORS, demo_rows, draw_scene, write_demo_shards

MAGIC_BYTES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"RIFF": "WEBP"}


def sniff_format(data: bytes) -> str:
    return next(name for magic, name in MAGIC_BYTES.items() if data.startswith(magic))


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def regions(mask: np.ndarray) -> list[tuple[int, int]]:
    """(area, bounding-box area) of each 4-connected region of True pixels."""
    seen, found = np.zeros_like(mask), []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start], stack, ys, xs = True, [start], [], []
        while stack:
            y, x = stack.pop()
            ys.append(y), xs.append(x)
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        found.append((len(ys), (max(ys) - min(ys) + 1) * (max(xs) - min(xs) + 1)))
    return found


def shapes_seen(image: Image.Image) -> list[tuple[str, str]]:
    """(colour, kind) of each shape in ``image``, from its pixels alone: a region of one palette colour,
    its kind from how much of its bounding box it fills (triangle 1/2, circle pi/4, square 1)."""
    step = max(1, min(image.size) // 150)  # a ~150-pixel short side is plenty to tell shapes apart
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)[::step, ::step]
    shapes = []
    for name, (rgb, _) in COLORS.items():
        for area, box in regions(np.abs(pixels - rgb).max(axis=2) < 50):  # within lossy-codec error
            if area >= 50:  # smaller: compression ringing, not a shape
                fill = area / box
                shapes.append((name, "triangle" if fill < 0.65 else "circle" if fill < 0.9 else "square"))
    return sorted(shapes)


def check_answers(row: dict) -> str:
    """Assert the annotators' majority answer is what the picture shows; returns the question's form."""
    shapes = shapes_seen(decode(row["image"]))
    majority, votes = Counter(row["answers"]).most_common(1)[0]
    assert votes >= 7, row["answers"]
    question = row["question"]
    if m := re.fullmatch(r"How many (\w+) shapes are there\?", question):
        assert majority == str(sum(color == m[1] for color, _ in shapes)), (question, shapes)
        return "count by colour"
    if m := re.fullmatch(r"How many (\w+)s are in the picture\?", question):
        assert majority == str(sum(kind == m[1] for _, kind in shapes)), (question, shapes)
        return "count by kind"
    m = re.fullmatch(r"What color (?:is|are) the (\w+?)s?\?", question)
    assert m, question
    assert {color for color, kind in shapes if kind == m[1]} == {majority}, (question, shapes)
    return "colour"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    paths = write_demo_shards(tmp_path_factory.mktemp("demo"))
    return paths, [row for path in paths for row in pq.read_table(path).to_pylist()]


def decodable(rows):
    return [row for row in rows if row["id"] != "demo-0012"]


def test_shards_and_row_counts(demo):
    paths, rows = demo
    assert [Path(p).name for p in paths] == [f"shard-0000{i}.parquet" for i in range(3)]
    assert [pq.read_metadata(p).num_rows for p in paths] == [8, 8, 8]
    assert [row["id"] for row in rows] == [f"demo-{i:04d}" for i in range(24)]


def test_schema(demo):
    paths, _ = demo
    schema = pq.read_schema(paths[0])
    assert schema.names == ["id", "image", "prompt", "question", "answers"]
    assert [schema.field(n).type for n in schema.names] == [pa.string(), pa.binary(), pa.string(), pa.string(),
                                                            pa.list_(pa.string())]
    assert [schema.field(n).nullable for n in schema.names] == [False, False, True, False, False]


def test_prompts_mix_text_and_null(demo):
    _, rows = demo
    prompts = [row["prompt"] for row in rows]
    assert 0 < prompts.count(None) < len(prompts)
    assert len({p for p in prompts if p is not None}) >= 2


def test_every_question_has_ten_answers(demo):
    _, rows = demo
    for row in rows:
        assert row["question"].endswith("?") and len(row["answers"]) == 10
        assert all(isinstance(answer, str) and answer for answer in row["answers"])


def test_exactly_one_row_is_undecodable_a_truncated_jpeg(demo):
    _, rows = demo
    broken = []
    for row in rows:
        try:
            assert decode(row["image"]).mode == "RGB"
        except OSError:
            broken.append(row)
    assert [row["id"] for row in broken] == ["demo-0012"]
    assert sniff_format(broken[0]["image"]) == "JPEG"
    Image.open(io.BytesIO(broken[0]["image"]))  # the header is whole: it opens, and fails only on load
    assert len(broken[0]["answers"]) == 10


def test_sizes_aspect_ratios_and_encodings(demo):
    _, rows = demo
    pictures = [(decode(row["image"]).size, sniff_format(row["image"])) for row in decodable(rows)]
    sizes = {size for size, _ in pictures}
    assert any(h > w for w, h in sizes), "a portrait"
    assert any(w * 9 == h * 16 for w, h in sizes), "a 16:9 frame"
    assert any(w >= 4 * h for w, h in sizes), "a very wide banner"
    assert len({w / h for w, h in sizes}) >= 4
    assert set(Counter(fmt for _, fmt in pictures)) == {"JPEG", "PNG", "WEBP"}
    for size in sizes:  # every size comes in more than one encoding
        assert len({fmt for s, fmt in pictures if s == size}) >= 2, size


def test_majority_answers_match_the_pixels(demo):
    _, rows = demo
    forms = [check_answers(row) for row in decodable(rows)]
    forms += [check_answers(row) for row in demo_rows(24, seed=1, include_corrupt=False)]
    assert set(forms) == {"count by colour", "count by kind", "colour"}


def test_pixel_reader_reads_a_hand_drawn_picture():
    """The reader the answers are checked with, on a picture drawn here: it finds what was drawn."""
    image = Image.new("RGB", (600, 300), (30, 35, 50))
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 20, 120, 120), fill=COLORS["red"][0])
    draw.ellipse((300, 150, 380, 230), fill=COLORS["red"][0])
    draw.polygon([(150, 250), (200, 150), (250, 250)], fill=COLORS["blue"][0])
    draw.rectangle((450, 30, 560, 140), fill=COLORS["white"][0])
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    assert shapes_seen(decode(buffer.getvalue())) == [("blue", "triangle"), ("red", "circle"), ("red", "circle"),
                                                      ("white", "square")]


def test_same_seed_same_bytes_other_seed_other_pictures(demo, tmp_path):
    paths, _ = demo
    again = write_demo_shards(tmp_path / "again")
    assert [Path(p).read_bytes() for p in again] == [Path(p).read_bytes() for p in paths]
    first, second = demo_rows(6, seed=0, include_corrupt=False), demo_rows(6, seed=1, include_corrupt=False)
    assert all(a["image"] != b["image"] for a, b in zip(first, second))


def test_without_corrupt_row_everything_decodes(tmp_path):
    paths = write_demo_shards(tmp_path, num_shards=2, rows_per_shard=3, include_corrupt=False)
    rows = [row for path in paths for row in pq.read_table(path).to_pylist()]
    assert len(rows) == 6
    for row in rows:
        decode(row["image"])


def test_rejects_empty_dataset(tmp_path):
    with pytest.raises(ValueError):
        write_demo_shards(tmp_path, num_shards=0)


def test_draw_scene_any_size_deterministic():
    image = draw_scene(672, 672, seed=7)  # the benchmarks' pictures
    assert image.size == (672, 672) and image.mode == "RGB"
    assert image.tobytes() == draw_scene(672, 672, seed=7).tobytes()
    assert image.tobytes() != draw_scene(672, 672, seed=8).tobytes()
    assert 1 <= len(shapes_seen(image)) <= 9


def test_example_image_is_a_jpeg_written_once(tmp_path):
    path = example_image(tmp_path / "demo")
    assert path == (tmp_path / "demo" / "example.jpg").resolve()
    image = decode(path.read_bytes())
    assert image.format == "JPEG" and image.size == (1024, 768) and shapes_seen(image)
    path.write_bytes(b"kept")
    assert example_image(tmp_path / "demo") == path and path.read_bytes() == b"kept"
    assert [p.name for p in path.parent.iterdir()] == ["example.jpg"]
