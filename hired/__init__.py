"""HiRED: high-resolution early dropping of visual tokens for LLaVA-Next, on stock transformers.

    import hired
    results = hired.generate(model, processor, images, prompts, hired.HiREDConfig(budget=0.2))

Other strategies for comparison at the same budget: ``HiREDConfig(strategy="uniform" | "random" | "prumerge+")``.
Decoding is greedy unless ``sampling=hired.Sampling(...)`` says otherwise; ``choices=["yes", "no"]``
constrains the answer; ``image_index`` lets several prompts share a picture; ``hired.Decoder`` is the
one decode loop (``hired.DecodeOptions``: static cache, compiled step, host reads every k steps).
``hired.load_model(name, device="cuda", quantization="8bit" | "4bit")`` loads a checkpoint in 8 or 4 bits.

See README.md and docs/hired.md. The package needs torch and transformers only.

The budget and the config are plain Python and load at once; what runs the model (``generate``,
``prepare_inputs`` and the rest) loads torch and transformers on first use. So a process that only
reads settings, such as the job's driver checking a command line, starts in a second, not in the
seconds those two take to import.
"""

from __future__ import annotations

import importlib

from .budget import budget_kind, describe_budget, largest_remainder, parse_budget, split_budget, token_budget
from .config import NO_DROPPING, HiREDConfig
from .sampling import Sampling
from .strategies import NAMES as STRATEGIES

# name -> the submodule that defines it, imported on first access (PEP 562)
_LAZY = {
    "GenerationResult": "generation",
    "DecodeOptions": "decode",
    "Decoder": "decode",
    "Decoded": "decode",
    "DecodedRow": "decode",
    "decode": "decode",
    "ChoiceError": "choices",
    "generate": "generation",
    "ItemLengths": "prepare",
    "PreparedInputs": "prepare",
    "expected_lengths": "prepare",
    "prepare_inputs": "prepare",
    "NoClsTokenError": "vision",
    "load_model": "loading",
    "bitsandbytes_config": "loading",
    "default_dtype": "loading",
    "QUANTIZATIONS": "loading",
    "tiny": None,  # the submodule itself: tiny checkpoints for tests and the demo
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'hired' has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    value = module if _LAZY[name] is None else getattr(module, name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "HiREDConfig",
    "NO_DROPPING",
    "STRATEGIES",
    "GenerationResult",
    "Sampling",
    "DecodeOptions",
    "Decoder",
    "Decoded",
    "DecodedRow",
    "decode",
    "ChoiceError",
    "PreparedInputs",
    "NoClsTokenError",
    "generate",
    "prepare_inputs",
    "expected_lengths",
    "ItemLengths",
    "token_budget",
    "split_budget",
    "largest_remainder",
    "parse_budget",
    "budget_kind",
    "describe_budget",
    "load_model",
    "bitsandbytes_config",
    "default_dtype",
    "QUANTIZATIONS",
]
__version__ = "0.1.0"
