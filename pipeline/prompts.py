"""A prompt set (``--prompts FILE``): several named instructions, each generated for every picture.

A text file holds one prompt a line (blank lines skipped), named by their place: ``1``, ``2``, ...
A ``.json`` file holds a list of strings (named the same way), an object ``{name: prompt}``, or a
list of ``{"name": ..., "prompt": ...}``. Names are the output's ``prompt_name``: unique, non-empty.
"""

from __future__ import annotations

import json
from pathlib import Path

MAX_PROMPTS = 64  # every prompt of a picture is decoded in one batch with the others


def read_prompts(path: str) -> tuple[tuple[str, str], ...]:
    """``((name, prompt), ...)`` from a prompts file; ValueError with the reason for anything else."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    if file.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
        pairs = _pairs_from_json(data, path)
    else:
        lines = [line.strip() for line in text.splitlines()]
        pairs = [(str(k), line) for k, line in enumerate((x for x in lines if x), start=1)]
    return checked(pairs, path)


def _pairs_from_json(data, path: str) -> list[tuple[str, str]]:
    if isinstance(data, dict):
        return [(str(name), prompt) for name, prompt in data.items()]
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        return [(str(k), prompt) for k, prompt in enumerate(data, start=1)]
    if isinstance(data, list) and all(isinstance(x, dict) for x in data):
        try:
            return [(str(x["name"]), x["prompt"]) for x in data]
        except KeyError as missing:
            raise ValueError(f"{path}: every entry needs 'name' and 'prompt' (one lacks {missing})") from None
    raise ValueError(f"{path}: expected a list of prompts, an object {{name: prompt}}, or a list of "
                     "{{\"name\": ..., \"prompt\": ...}}")


def checked(pairs: list[tuple[str, str]], where: str) -> tuple[tuple[str, str], ...]:
    if not pairs:
        raise ValueError(f"{where} holds no prompt")
    if len(pairs) > MAX_PROMPTS:
        raise ValueError(f"{where} holds {len(pairs)} prompts; at most {MAX_PROMPTS}")
    names = [name for name, _ in pairs]
    for name, prompt in pairs:
        if not name.strip():
            raise ValueError(f"{where}: a prompt has an empty name")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: prompt {name!r} is empty or not a string")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"{where}: prompt names must be unique; repeated: {', '.join(duplicated)}")
    return tuple((name, prompt.strip()) for name, prompt in pairs)
