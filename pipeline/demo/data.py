"""The built-in demo dataset: procedural pictures with caption prompts and VQA questions.

Nothing is downloaded and no image is committed: every picture is drawn from a seed with
PIL (a sky, the sun or the moon, clouds, hills or mountains, houses, trees, a road with or
without a car, water with or without a boat), encoded as JPEG, PNG or WebP, and written to
Parquet shards together with a caption prompt and a question whose ten "human" answers are
derived from what was drawn. The same seed gives the same bytes, so runs are comparable.

The shards look like a real image dataset to the pipeline: different sizes and aspect ratios,
three encodings, some rows without a prompt (meaning "use the default"), and one row whose
image bytes are deliberately broken so that the pipeline's error handling shows up.
"""

from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

# Sizes a real collection would hold: landscape and portrait photos, a square, a 16:9 frame
# and a very wide banner, so that LLaVA-Next picks different anyres grids.
DEMO_SIZES = ((640, 480), (1024, 768), (300, 900), (1920, 1080), (512, 512), (800, 200))
DEMO_FORMATS = ("JPEG", "PNG", "WEBP")

# None means "no prompt given": the pipeline substitutes its default caption prompt.
CAPTION_PROMPTS = (
    "Describe the image.",
    "Write a one-sentence caption for this picture.",
    None,
    "What is in this scene? Describe it in detail.",
)

ANSWERS_PER_QUESTION = 10
TIMES_OF_DAY = ("day", "sunset", "night")
CAR_COLORS = {
    "red": (200, 35, 35),
    "blue": (35, 75, 190),
    "yellow": (235, 200, 45),
    "white": (238, 238, 238),
    "black": (28, 28, 30),
    "green": (40, 140, 60),
}
# What annotators who did not give the majority answer said instead.
CAR_COLOR_ALTERNATIVES = {
    "red": ("dark red", "maroon", "orange"),
    "blue": ("dark blue", "navy", "purple"),
    "yellow": ("gold", "orange", "yellow and black"),
    "white": ("silver", "gray", "white and black"),
    "black": ("dark gray", "gray", "dark"),
    "green": ("dark green", "teal", "blue"),
}
TIME_OF_DAY_ANSWERS = {
    "day": ("daytime", ("day", "afternoon", "morning", "noon")),
    "sunset": ("sunset", ("evening", "dusk", "sunrise")),
    "night": ("night", ("nighttime", "evening", "midnight")),
}
NUMBER_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")

SKY_COLORS = {  # (top of the sky, at the horizon)
    "day": ((62, 120, 200), (178, 214, 240)),
    "sunset": ((58, 52, 118), (250, 162, 92)),
    "night": ((8, 12, 36), (38, 48, 88)),
}
# Everything below the sky is drawn in daylight colours and darkened by this much.
LIGHT_LEVEL = {"day": 1.0, "sunset": 0.8, "night": 0.42}


@dataclass(frozen=True)
class Scene:
    """What a demo picture shows: the facts the VQA answers are derived from."""

    width: int
    height: int
    time_of_day: str
    clouds: int
    mountains: bool  # mountains behind the horizon, otherwise rolling hills
    houses: int
    trees: int
    road: bool
    car_color: str | None  # None: no car (on the road, if there is one)
    water: bool
    boat: bool
    layout_seed: int  # positions, shapes and colours that no question asks about


@dataclass(frozen=True)
class DemoShards:
    """What write_demo_shards wrote."""

    directory: str
    paths: tuple[str, ...]
    num_rows: int
    corrupt_ids: tuple[str, ...]


# ----------------------------------------------------------------------------- the scene


def _object_slots(width: int, height: int) -> int:
    """How many houses and trees fit side by side at a sensible size for this aspect ratio."""
    return max(2, min(8, round(width / (0.18 * height))))


def plan_scene(width: int, height: int, seed: int) -> Scene:
    """Decide, from the seed, what the picture of this size will show."""
    rng = random.Random(seed)
    slots = _object_slots(width, height)
    houses = rng.randint(1, min(4, slots - 1))
    road = rng.random() < 0.7
    water = rng.random() < 0.5
    return Scene(
        width=width,
        height=height,
        time_of_day=rng.choice(TIMES_OF_DAY),
        clouds=rng.randint(0, 3),
        mountains=rng.random() < 0.5,
        houses=houses,
        trees=rng.randint(0, slots - houses),
        road=road,
        car_color=rng.choice(sorted(CAR_COLORS)) if road and rng.random() < 0.75 else None,
        water=water,
        boat=water and rng.random() < 0.6,
        layout_seed=rng.getrandbits(32),
    )


def draw_scene(width: int, height: int, seed: int) -> Image.Image:
    """A procedural landscape of the given size, an RGB picture that varies with the seed."""
    return render_scene(plan_scene(width, height, seed))


# ----------------------------------------------------------------------------- drawing

Color = tuple[int, int, int]


def _shade(color: Color, light: float) -> Color:
    return tuple(int(round(channel * light)) for channel in color)


def _jitter(rng: random.Random, color: Color, amount: int = 18) -> Color:
    return tuple(max(0, min(255, channel + rng.randint(-amount, amount))) for channel in color)


@dataclass(frozen=True)
class _Layout:
    """Where the horizontal bands of the picture lie, in pixels from the top."""

    horizon: int
    baseline: int  # where houses and trees stand
    road_top: int
    water_top: int  # == height when there is no water
    unit: int  # the size of a house wall; everything on the ground scales with it


def _layout(scene: Scene, rng: random.Random) -> _Layout:
    w, h = scene.width, scene.height
    water_top = int(h * 0.82) if scene.water else h
    road_top = water_top - int(h * 0.11) if scene.road else water_top
    baseline = road_top - max(2, int(h * 0.02)) if scene.road else water_top - int(h * 0.06)
    slot_width = w / _object_slots(w, h)
    unit = int(min(0.22 * h, 0.85 * slot_width / 1.2))
    return _Layout(int(h * rng.uniform(0.42, 0.55)), baseline, road_top, water_top, max(unit, 6))


def _draw_sky(scene: Scene) -> Image.Image:
    # A vertical gradient from the top of the sky to the horizon colour, built as one array
    # (a line per row would cost a Python call per row on a 1080-row picture).
    top, bottom = (np.array(c, dtype=np.float32) for c in SKY_COLORS[scene.time_of_day])
    t = np.linspace(0.0, 1.0, scene.height, dtype=np.float32)[:, None]
    rows = (top * (1 - t) + bottom * t).astype(np.uint8)
    pixels = np.broadcast_to(rows[:, None, :], (scene.height, scene.width, 3))
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def _draw_sun_or_moon(draw: ImageDraw.ImageDraw, scene: Scene, lay: _Layout, rng: random.Random) -> None:
    w, h = scene.width, scene.height
    radius = max(4, int(min(w, h) * rng.uniform(0.05, 0.08)))
    x = rng.uniform(0.1, 0.9) * w
    if scene.time_of_day == "sunset":
        # Low and large, partly behind the hills.
        y, radius, color = lay.horizon - radius * 0.4, int(radius * 1.4), (255, 190, 90)
    else:
        y = rng.uniform(0.1, 0.5) * lay.horizon
        color = (255, 236, 140) if scene.time_of_day == "day" else (235, 235, 215)
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color)
    if scene.time_of_day == "night":
        for _ in range(int(w * lay.horizon / 4000) + 10):
            sx, sy = rng.uniform(0, w), rng.uniform(0, lay.horizon * 0.9)
            draw.point((sx, sy), fill=(250, 250, 230))


def _draw_cloud(draw: ImageDraw.ImageDraw, scene: Scene, lay: _Layout, rng: random.Random) -> None:
    size = min(scene.width, scene.height) * rng.uniform(0.07, 0.13)
    cx = rng.uniform(0.05, 0.95) * scene.width
    cy = rng.uniform(0.12, 0.7) * lay.horizon
    color = {"day": (250, 250, 252), "sunset": (246, 196, 186), "night": (70, 76, 100)}[scene.time_of_day]
    # A cloud is a few overlapping puffs along a flat bottom.
    for dx, dy, scale in ((-1.1, 0.15, 0.7), (-0.4, -0.25, 0.95), (0.4, -0.1, 0.85), (1.1, 0.2, 0.65)):
        r = size * scale
        x, y = cx + dx * size, cy + dy * size
        draw.ellipse((x - r * 1.3, y - r, x + r * 1.3, y + r), fill=color)


def _draw_mountains(draw: ImageDraw.ImageDraw, scene: Scene, lay: _Layout, rng: random.Random, light: float) -> None:
    w, h = scene.width, scene.height
    peaks = rng.randint(3, 5)
    rock, snow = _shade((112, 118, 138), light), _shade((240, 242, 248), light)
    outline = [(-0.1 * w, lay.horizon)]
    for i in range(peaks):
        x = (i + rng.uniform(0.25, 0.75)) / peaks * w
        y = lay.horizon - rng.uniform(0.12, 0.32) * h
        valley_x = (i + 1) / peaks * w
        outline += [(x, y), (valley_x, lay.horizon - rng.uniform(0.02, 0.08) * h)]
    outline.append((1.1 * w, lay.horizon))
    draw.polygon(outline, fill=rock)
    # Snow on each peak: the top quarter of the two slopes running down from it.
    for i in range(1, len(outline) - 1, 2):
        (lx, ly), (px, py), (rx, ry) = outline[i - 1], outline[i], outline[i + 1]
        f = 0.25
        left_edge = (px + (lx - px) * f, py + (ly - py) * f)
        right_edge = (px + (rx - px) * f, py + (ry - py) * f)
        draw.polygon([left_edge, (px, py), right_edge], fill=snow)


def _draw_hills(draw: ImageDraw.ImageDraw, scene: Scene, lay: _Layout, rng: random.Random, light: float) -> None:
    w, h = scene.width, scene.height
    for _ in range(rng.randint(2, 3)):
        cx, rx, ry = rng.uniform(0, w), rng.uniform(0.3, 0.6) * w, rng.uniform(0.06, 0.16) * h
        color = _shade(_jitter(rng, (70, 132, 62)), light)
        draw.ellipse((cx - rx, lay.horizon - ry, cx + rx, lay.horizon + ry), fill=color)


def _draw_house(
    draw: ImageDraw.ImageDraw, cx: float, lay: _Layout, scene: Scene, rng: random.Random, light: float
) -> None:
    wall_h = lay.unit * rng.uniform(0.8, 1.0)
    half = lay.unit * rng.uniform(0.5, 0.6)
    x0, x1, bottom, top = cx - half, cx + half, lay.baseline, lay.baseline - wall_h
    wall = _jitter(rng, rng.choice([(226, 208, 170), (200, 90, 70), (238, 238, 228), (170, 190, 210)]))
    roof = _jitter(rng, rng.choice([(150, 50, 40), (80, 70, 70), (110, 80, 60)]))
    draw.rectangle((x0, top, x1, bottom), fill=_shade(wall, light))
    eave = half * 0.2
    draw.polygon([(x0 - eave, top), (cx, top - wall_h * 0.6), (x1 + eave, top)], fill=_shade(roof, light))
    # Windows glow at night, reflect the sky by day.
    pane = (255, 214, 110) if scene.time_of_day == "night" else _shade((150, 195, 230), light)
    size = max(2, half * 0.32)
    for wx in (x0 + half * 0.45, x1 - half * 0.45):
        wy = top + wall_h * 0.3
        draw.rectangle((wx - size / 2, wy - size / 2, wx + size / 2, wy + size / 2), fill=pane)
    door_w = max(2, half * 0.3)
    draw.rectangle((cx - door_w / 2, bottom - wall_h * 0.42, cx + door_w / 2, bottom), fill=_shade((90, 60, 40), light))


def _draw_tree(draw: ImageDraw.ImageDraw, cx: float, lay: _Layout, rng: random.Random, light: float) -> None:
    size = lay.unit * rng.uniform(0.9, 1.3)
    trunk_w = max(2, size * 0.1)
    trunk_top = lay.baseline - size * 0.4
    draw.rectangle((cx - trunk_w / 2, trunk_top, cx + trunk_w / 2, lay.baseline), fill=_shade((100, 70, 45), light))
    leaves = _shade(_jitter(rng, (45, 120, 50)), light)
    if rng.random() < 0.5:  # a pine: stacked triangles
        for tier in range(3):
            base = trunk_top + size * 0.1 - tier * size * 0.25
            half = size * (0.35 - tier * 0.08)
            draw.polygon([(cx - half, base), (cx, base - size * 0.4), (cx + half, base)], fill=leaves)
    else:  # a broadleaf: a round crown
        r = size * 0.35
        draw.ellipse((cx - r, trunk_top - 1.6 * r, cx + r, trunk_top + 0.3 * r), fill=leaves)


def _draw_road(draw: ImageDraw.ImageDraw, scene: Scene, lay: _Layout, light: float) -> None:
    draw.rectangle((0, lay.road_top, scene.width, lay.water_top), fill=_shade((88, 88, 92), light))
    middle = (lay.road_top + lay.water_top) / 2
    dash, thickness = max(8, scene.width / 24), max(1, (lay.water_top - lay.road_top) / 18)
    for x in np.arange(0, scene.width, dash * 2):
        draw.rectangle((x, middle - thickness, x + dash, middle + thickness), fill=_shade((235, 230, 200), light))


def _draw_car(draw: ImageDraw.ImageDraw, scene: Scene, lay: _Layout, rng: random.Random, light: float) -> None:
    road_h = lay.water_top - lay.road_top
    length = min(road_h * 1.9, scene.width * 0.4)
    x0 = rng.uniform(0.05, 0.95) * (scene.width - length)
    wheel_r = length * 0.1
    body_bottom = lay.water_top - road_h * 0.15 - wheel_r
    body_top = body_bottom - length * 0.2
    body = _shade(CAR_COLORS[scene.car_color], light)
    draw.rectangle((x0, body_top, x0 + length, body_bottom), fill=body)
    roof = body_top - length * 0.18
    def along(fraction: float) -> float:
        return x0 + length * fraction

    draw.polygon([(along(0.2), body_top), (along(0.32), roof), (along(0.68), roof), (along(0.8), body_top)], fill=body)
    glass = _shade((170, 205, 230), light)
    inset = length * 0.03
    window_top = roof + inset
    window = [(along(0.25), body_top), (along(0.34), window_top), (along(0.66), window_top), (along(0.75), body_top)]
    draw.polygon(window, fill=glass)
    for wx in (along(0.22), along(0.78)):
        draw.ellipse((wx - wheel_r, body_bottom - wheel_r, wx + wheel_r, body_bottom + wheel_r), fill=(20, 20, 20))


def _draw_water(draw: ImageDraw.ImageDraw, scene: Scene, lay: _Layout, rng: random.Random, light: float) -> None:
    draw.rectangle((0, lay.water_top, scene.width, scene.height), fill=_shade((48, 106, 170), light))
    band = scene.height - lay.water_top
    for _ in range(8):  # short light ripples
        x, y = rng.uniform(0, scene.width), lay.water_top + rng.uniform(0.15, 0.95) * band
        x_end = x + scene.width * rng.uniform(0.03, 0.08)
        draw.line((x, y, x_end, y), fill=_shade((120, 170, 215), light), width=max(1, band // 40))


def _draw_boat(draw: ImageDraw.ImageDraw, scene: Scene, lay: _Layout, rng: random.Random, light: float) -> None:
    band = scene.height - lay.water_top
    length = min(band * 1.6, scene.width * 0.3)
    x0 = rng.uniform(0.05, 0.95) * (scene.width - length)
    waterline = lay.water_top + band * 0.75
    hull = _shade(rng.choice([(120, 70, 40), (235, 235, 235), (180, 40, 40)]), light)
    deck = waterline - length * 0.14
    keel = [(x0 + length * 0.82, waterline), (x0 + length * 0.15, waterline)]
    draw.polygon([(x0, deck), (x0 + length, deck), *keel], fill=hull)
    mast_x = x0 + length * 0.45
    # The mast stops short of the shore so the sail never covers the road behind the water.
    mast_top = max(deck - length * 0.6, lay.water_top + band * 0.08)
    draw.line((mast_x, deck, mast_x, mast_top), fill=_shade((60, 40, 30), light), width=max(1, int(length / 40)))
    sail = [(mast_x + 2, mast_top), (mast_x + 2, deck - 2), (mast_x + length * 0.4, deck - 2)]
    draw.polygon(sail, fill=_shade((248, 248, 240), light))


def render_scene(scene: Scene) -> Image.Image:
    """Draw ``scene``: back to front, so that nearer things cover farther ones."""
    rng = random.Random(scene.layout_seed)
    lay = _layout(scene, rng)
    light = LIGHT_LEVEL[scene.time_of_day]
    image = _draw_sky(scene)
    draw = ImageDraw.Draw(image)
    _draw_sun_or_moon(draw, scene, lay, rng)
    for _ in range(scene.clouds):
        _draw_cloud(draw, scene, lay, rng)
    if scene.mountains:
        _draw_mountains(draw, scene, lay, rng, light)
    else:
        _draw_hills(draw, scene, lay, rng, light)
    draw.rectangle((0, lay.horizon, scene.width, scene.height), fill=_shade((92, 164, 74), light))
    _draw_houses_and_trees(draw, scene, lay, rng, light)
    if scene.road:
        _draw_road(draw, scene, lay, light)
        if scene.car_color is not None:
            _draw_car(draw, scene, lay, rng, light)
    if scene.water:
        _draw_water(draw, scene, lay, rng, light)
        if scene.boat:
            _draw_boat(draw, scene, lay, rng, light)
    return image


def _draw_houses_and_trees(
    draw: ImageDraw.ImageDraw, scene: Scene, lay: _Layout, rng: random.Random, light: float
) -> None:
    # One object per slot along the baseline, so that none hides another and the counts the
    # questions ask about are the counts a viewer sees.
    slots = _object_slots(scene.width, scene.height)
    things = ["house"] * scene.houses + ["tree"] * scene.trees + [None] * (slots - scene.houses - scene.trees)
    rng.shuffle(things)
    slot_width = scene.width / slots
    for i, thing in enumerate(things):
        cx = (i + 0.5 + rng.uniform(-0.08, 0.08)) * slot_width
        if thing == "house":
            _draw_house(draw, cx, lay, scene, rng, light)
        elif thing == "tree":
            _draw_tree(draw, cx, lay, rng, light)


# ----------------------------------------------------------------------------- questions


def _yes_no(truth: bool) -> tuple[str, tuple[str, ...]]:
    return ("yes", ("no",)) if truth else ("no", ("yes",))


def _count(n: int) -> tuple[str, tuple[str, ...]]:
    # Annotators write numbers as digits or words and sometimes miscount by one.
    alternatives = [NUMBER_NAMES[n], str(n + 1)] + ([str(n - 1)] if n > 0 else ["none"])
    return str(n), tuple(alternatives)


def scene_questions(scene: Scene) -> list[tuple[str, str, tuple[str, ...]]]:
    """The questions this picture can answer: (question, majority answer, other answers)."""
    questions = [
        ("Is there a car in the picture?", *_yes_no(scene.car_color is not None)),
        ("How many houses are there?", *_count(scene.houses)),
        ("How many trees are in the picture?", *_count(scene.trees)),
        ("What time of day is it?", *TIME_OF_DAY_ANSWERS[scene.time_of_day]),
        ("Are there mountains in the background?", *_yes_no(scene.mountains)),
    ]
    if scene.car_color is not None:
        questions.append(("What color is the car?", scene.car_color, CAR_COLOR_ALTERNATIVES[scene.car_color]))
    if scene.water:
        questions.append(("Is there a boat on the water?", *_yes_no(scene.boat)))
    return questions


def human_answers(majority: str, alternatives: tuple[str, ...], rng: random.Random) -> list[str]:
    """Ten answers as annotators give them: mostly the true one, a few others, in any order."""
    agreeing = rng.randint(7, ANSWERS_PER_QUESTION)
    answers = [majority] * agreeing + [rng.choice(alternatives) for _ in range(ANSWERS_PER_QUESTION - agreeing)]
    rng.shuffle(answers)
    return answers


# ----------------------------------------------------------------------------- rows and shards


def _row_seed(seed: int, index: int) -> int:
    # Seeding random.Random with a string hashes it with SHA-512: stable across runs and
    # platforms (unlike hash()), and distinct for every (seed, row) pair.
    return random.Random(f"hired-demo/{seed}/{index}").getrandbits(63)


def _encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    options = {"JPEG": {"quality": 90}, "PNG": {"compress_level": 6}, "WEBP": {"quality": 85, "method": 4}}
    image.save(buffer, format=image_format, **options[image_format])
    return buffer.getvalue()


def truncate_jpeg(data: bytes) -> bytes:
    """Cut a JPEG in half: the header survives, the compressed scan does not.

    PIL opens such a file without complaint (it decodes lazily) and fails only when the pixels
    are loaded, with ``OSError: image file is truncated`` - the way a half-uploaded file breaks
    a real job. (Unless ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is set, which pads with grey.)
    """
    return data[: len(data) // 2]


def demo_scene(index: int, seed: int = 0) -> Scene:
    """The scene of demo row ``index``: its size cycles through DEMO_SIZES."""
    width, height = DEMO_SIZES[index % len(DEMO_SIZES)]
    return plan_scene(width, height, _row_seed(seed, index))


def demo_rows(num_rows: int, seed: int = 0, include_corrupt: bool = True) -> list[dict]:
    """The demo rows in memory, ``id``-ordered; see write_demo_shards for the columns.

    With ``include_corrupt`` the middle row (index ``num_rows // 2``) is a truncated JPEG.
    """
    corrupt_index = num_rows // 2 if include_corrupt else None
    rows = []
    for index in range(num_rows):
        # Shift the format by one every full round of sizes so each size meets every format.
        image_format = DEMO_FORMATS[(index + index // len(DEMO_SIZES)) % len(DEMO_FORMATS)]
        scene = demo_scene(index, seed)
        question_rng = random.Random(f"questions/{_row_seed(seed, index)}")
        question, majority, alternatives = question_rng.choice(scene_questions(scene))
        image = render_scene(scene)
        if index == corrupt_index:
            image_bytes = truncate_jpeg(_encode(image, "JPEG"))
        else:
            image_bytes = _encode(image, image_format)
        rows.append(
            {
                "id": f"demo-{index:04d}",
                "image": image_bytes,
                "prompt": CAPTION_PROMPTS[index % len(CAPTION_PROMPTS)],
                "question": question,
                "answers": human_answers(majority, alternatives, question_rng),
            }
        )
    return rows


def demo_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("image", pa.binary(), nullable=False),
            pa.field("prompt", pa.string()),  # null: use the pipeline's default prompt
            pa.field("question", pa.string(), nullable=False),
            pa.field("answers", pa.list_(pa.string()), nullable=False),
        ]
    )


def write_demo_shards(
    directory: str | os.PathLike,
    num_shards: int = 3,
    rows_per_shard: int = 8,
    seed: int = 0,
    include_corrupt: bool = True,
) -> DemoShards:
    """Write the demo dataset as ``shard-00000.parquet``, ``shard-00001.parquet``, ... in ``directory``.

    Columns: ``id`` (string, "demo-0000", unique across shards), ``image`` (the encoded JPEG,
    PNG or WebP file), ``prompt`` (a caption prompt, or null for the pipeline's default),
    ``question`` (a question about the picture) and ``answers`` (ten reference answers).
    Pictures come in six sizes, from 300x900 to 1920x1080.

    With ``include_corrupt`` exactly one row, the middle one of the whole dataset, holds a JPEG
    cut in half (see truncate_jpeg): it opens but cannot be decoded, so a pipeline run over the
    demo shows one error row. Its question and answers are intact.

    The same arguments write byte-identical files.
    """
    if num_shards < 1 or rows_per_shard < 1:
        raise ValueError("num_shards and rows_per_shard must be at least 1")

    os.makedirs(directory, exist_ok=True)
    rows = demo_rows(num_shards * rows_per_shard, seed=seed, include_corrupt=include_corrupt)
    schema = demo_schema()
    paths = []
    for shard in range(num_shards):
        path = os.path.join(os.fspath(directory), f"shard-{shard:05d}.parquet")
        shard_rows = rows[shard * rows_per_shard : (shard + 1) * rows_per_shard]
        pq.write_table(pa.Table.from_pylist(shard_rows, schema=schema), path)
        paths.append(path)
    corrupt_ids = (rows[len(rows) // 2]["id"],) if include_corrupt else ()
    return DemoShards(os.fspath(directory), tuple(paths), len(rows), corrupt_ids)
