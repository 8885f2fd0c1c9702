"""The built-in demo: generated pictures in Parquet shards and a tiny local LLaVA-Next.

Everything is made on the spot (no download): two dozen pictures of coloured shapes in six sizes
and three formats, with prompts and VQA questions, one deliberately corrupt image to show an error
row, and a tiny random-weight model (its captions are random words: the demo shows the pipeline,
not the model).
"""

from __future__ import annotations

from pathlib import Path

from hired.tiny import build_tiny_llava_next

from .data import DEMO_SIZES, draw_scene, encode, write_demo_shards


def demo_model(root: str | Path) -> str:
    """Build (or reuse) the demo's tiny random-weight LLaVA-Next under ``root``; returns its folder."""
    model = Path(root).resolve() / "tiny-llava-next"
    if not (model / "config.json").exists():
        build_tiny_llava_next(model)
    return str(model)


def prepare_demo(root: str | Path) -> tuple[str, str]:
    """Build (or reuse) the demo shards and model under ``root``; returns (input URI, model path)."""
    shards = Path(root).resolve() / "input"
    if not list(shards.glob("*.parquet")):
        write_demo_shards(shards)
    return str(shards), demo_model(root)


def example_image(root: str | Path) -> Path:
    """One demo picture (1024x768) as ``root/example.jpg``, reused if present: a real file to try `viz` on."""
    path = Path(root).resolve() / "example.jpg"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")  # renamed when whole: a reader never sees half a file
        partial.write_bytes(encode(draw_scene(*DEMO_SIZES[1], seed="hired-demo/example"), "JPEG"))
        partial.replace(path)
    return path
