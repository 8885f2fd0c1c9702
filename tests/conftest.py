"""Shared fixtures: tiny checkpoints built once per session and loaded with from_pretrained."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hired.tiny import build_tiny_llava, build_tiny_llava_next


@pytest.fixture(scope="session")
def tiny_next_path(tmp_path_factory):
    return build_tiny_llava_next(tmp_path_factory.mktemp("tiny-llava-next"))


@pytest.fixture(scope="session")
def tiny_llava_path(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


def _load(path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.set_num_threads(2)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(path)


@pytest.fixture(scope="session")
def tiny_next(tiny_next_path):
    return _load(tiny_next_path)


@pytest.fixture(scope="session")
def tiny_llava(tiny_llava_path):
    return _load(tiny_llava_path)


def noise_image(height: int, width: int, seed: int = 0) -> Image.Image:
    """A random RGB picture: varied content so CLS attention is not uniform."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def chat_prompt(processor, text: str) -> str:
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)
