"""HiRED: high-resolution early dropping of visual tokens for LLaVA-Next, on stock transformers.

    import hired
    results = hired.generate(model, processor, images, prompts, hired.HiREDConfig(budget=0.2))

Other strategies for comparison at the same budget: ``HiREDConfig(strategy="uniform" | "random" | "prumerge+")``.

See README.md. The package needs torch and transformers only.
"""

from .budget import budget_kind, describe_budget, largest_remainder, parse_budget, split_budget, token_budget
from .config import NO_DROPPING, STRATEGIES, HiREDConfig
from .generation import GenerationResult, generate
from .prepare import ItemLengths, PreparedInputs, expected_lengths, prepare_inputs
from .vision import NoClsTokenError
from . import tiny  # noqa: E402  (tiny checkpoints for tests and the demo; imports transformers lazily)

__all__ = [
    "HiREDConfig",
    "NO_DROPPING",
    "STRATEGIES",
    "GenerationResult",
    "PreparedInputs",
    "NoClsTokenError",
    "generate",
    "prepare_inputs",
    "expected_lengths",
    "ItemLengths",
    "token_budget",
    "split_budget",
    "largest_remainder",
]
__version__ = "0.1.0"
