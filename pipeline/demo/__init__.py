"""The built-in demo: generated pictures in Parquet shards and a tiny local LLaVA-Next.

Everything is made on the spot (no download): a few dozen procedurally drawn scenes of
different sizes and formats, with prompts and VQA questions, one deliberately corrupt
image to show an error row, and a tiny random-weight model (its captions are random words:
the demo shows the pipeline, not the model).
"""

from __future__ import annotations

from pathlib import Path

from hired.tiny import build_tiny_llava_next

from .data import write_demo_shards


def prepare_demo(root: str | Path) -> tuple[str, str]:
    """Build (or reuse) the demo shards and model under ``root``; returns (input URI, model path)."""
    root = Path(root).resolve()
    shards = root / "input"
    if not list(shards.glob("*.parquet")):
        write_demo_shards(shards)
    model = root / "tiny-llava-next"
    if not (model / "config.json").exists():
        build_tiny_llava_next(model)
    return str(shards), str(model)
