"""The built-in demo dataset: pictures of simple shapes, caption prompts and VQA questions.

A picture holds a few shapes of one colour and kind (the ones its questions ask about) and a few
others, one to a grid cell so none hides another. The shards look like a real image dataset: six
sizes and aspect ratios (so LLaVA-Next picks different anyres grids), JPEG, PNG and WebP, rows
without a prompt, one truncated JPEG (an error row), ten "human" answers to each question. The same
seed gives the same bytes.
"""

from __future__ import annotations

import io
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

# Landscape, a larger landscape, portrait, 16:9, square and a very wide banner.
DEMO_SIZES = ((640, 480), (1024, 768), (300, 900), (1920, 1080), (512, 512), (800, 200))
DEMO_FORMATS = ("JPEG", "PNG", "WEBP")
CAPTION_PROMPTS = ("Describe the image.", "Write a one-sentence caption for this picture.", None)  # None: the default
# Each colour's RGB and what annotators who disagree call it.
COLORS = {"red": ((220, 40, 40), ("dark red", "orange")), "green": ((40, 170, 60), ("dark green", "teal")),
          "blue": ((40, 80, 220), ("dark blue", "purple")), "yellow": ((240, 210, 40), ("gold", "orange")),
          "white": ((245, 245, 245), ("gray", "silver")), "purple": ((150, 60, 190), ("violet", "blue"))}
BACKGROUNDS = ((30, 35, 50), (60, 42, 30), (25, 58, 48), (72, 72, 72))  # far from every shape colour
KINDS = ("circle", "square", "triangle")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
DEMO_SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("image", pa.binary(), nullable=False),
                         pa.field("prompt", pa.string()),  # null: the pipeline's default prompt
                         pa.field("question", pa.string(), nullable=False),
                         pa.field("answers", pa.list_(pa.string()), nullable=False)])

Question = tuple[str, str, tuple[str, ...]]  # (question, true answer, what annotators who disagree say)


def draw_with_questions(width: int, height: int, seed: int | str) -> tuple[Image.Image, list[Question]]:
    """1-5 shapes of one colour and kind, 0-4 of other kinds and colours, and questions about the first."""
    rng = random.Random(seed)
    cell = min(width, height) // 3
    cells = [(x * cell, y * cell) for y in range(height // cell) for x in range(width // cell)]
    color, kind, count = rng.choice(sorted(COLORS)), rng.choice(KINDS), rng.randint(1, 5)
    others = [(k, c) for k in KINDS if k != kind for c in sorted(COLORS) if c != color]
    image = Image.new("RGB", (width, height), rng.choice(BACKGROUNDS))
    draw = ImageDraw.Draw(image)
    for (k, c), (x, y) in zip([(kind, color)] * count + rng.sample(others, rng.randint(0, 4)), rng.sample(cells, 9)):
        size, margin = int(cell * rng.uniform(0.5, 0.8)), cell // 10  # the margin keeps neighbours apart
        x0, y0 = x + rng.randint(margin, cell - size - margin), y + rng.randint(margin, cell - size - margin)
        x1, y1, fill = x0 + size, y0 + size, COLORS[c][0]
        if k == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif k == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([(x0, y1), ((x0 + x1) / 2, y0), (x1, y1)], fill=fill)
    counts = (NUMBER_WORDS[count], str(count + 1), str(count - 1))  # digits or words, miscounts by one
    are, s = ("are", "s") if count > 1 else ("is", "")
    return image, [(f"How many {color} shapes are there?", str(count), counts),
                   (f"How many {kind}s are in the picture?", str(count), counts),
                   (f"What color {are} the {kind}{s}?", color, COLORS[color][1])]


def draw_scene(width: int, height: int, seed: int | str) -> Image.Image:
    """A demo picture of the given size, an RGB image that varies with the seed."""
    return draw_with_questions(width, height, seed)[0]


def human_answers(truth: str, alternatives: tuple[str, ...], rng: random.Random) -> list[str]:
    """Ten answers as annotators give them: 7-10 say the truth, the rest something close."""
    agreeing = rng.randint(7, 10)
    answers = [truth] * agreeing + [rng.choice(alternatives) for _ in range(10 - agreeing)]
    rng.shuffle(answers)
    return answers


def encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **({} if image_format == "PNG" else {"quality": 90}))
    return buffer.getvalue()


def demo_rows(num_rows: int, seed: int = 0, include_corrupt: bool = True) -> list[dict]:
    """The rows, ``id``-ordered; with ``include_corrupt`` row ``num_rows // 2`` holds a truncated JPEG."""
    rows = []
    for index in range(num_rows):
        width, height = DEMO_SIZES[index % len(DEMO_SIZES)]
        picture, questions = draw_with_questions(width, height, f"hired-demo/{seed}/{index}")
        rng = random.Random(f"hired-demo-answers/{seed}/{index}")
        question, truth, alternatives = rng.choice(questions)
        # The format shifts by one each round of sizes, so every size meets every format.
        image = encode(picture, DEMO_FORMATS[(index + index // len(DEMO_SIZES)) % len(DEMO_FORMATS)])
        if include_corrupt and index == num_rows // 2:
            # Half a JPEG: PIL opens it (the header is whole) and fails to load it, like a half-uploaded file.
            whole = encode(picture, "JPEG")
            image = whole[: len(whole) // 2]
        rows.append({"id": f"demo-{index:04d}", "image": image, "prompt": CAPTION_PROMPTS[index % len(CAPTION_PROMPTS)],
                     "question": question, "answers": human_answers(truth, alternatives, rng)})
    return rows


def write_demo_shards(directory: str | os.PathLike, num_shards: int = 3, rows_per_shard: int = 8, seed: int = 0,
                      include_corrupt: bool = True) -> list[str]:
    """Write ``shard-00000.parquet``, ... (DEMO_SCHEMA) in ``directory``; returns their paths.

    With ``include_corrupt`` the middle row of the whole dataset (``demo-0012`` of the default 24) is
    undecodable. The same arguments write the same bytes.
    """
    if num_shards < 1 or rows_per_shard < 1:
        raise ValueError("num_shards and rows_per_shard must be at least 1")
    os.makedirs(directory, exist_ok=True)
    rows = demo_rows(num_shards * rows_per_shard, seed, include_corrupt)
    paths = [os.path.join(os.fspath(directory), f"shard-{shard:05d}.parquet") for shard in range(num_shards)]
    for shard, path in enumerate(paths):
        part = rows[shard * rows_per_shard : (shard + 1) * rows_per_shard]
        pq.write_table(pa.Table.from_pylist(part, schema=DEMO_SCHEMA), path)
    return paths
