"""Loading a LLaVA-Next / LLaVA checkpoint as HiRED runs it: in full precision, or with its linear
layers in 8-bit or 4-bit (bitsandbytes), on one device or spread over several.

    model, processor = hired.load_model("llava-hf/llava-v1.6-vicuna-13b-hf", quantization="8bit", device="cuda")

Quantized weights go through transformers' own ``BitsAndBytesConfig`` (:func:`bitsandbytes_config`);
bitsandbytes places weights with accelerate, so a quantized model always gets a ``device_map``
(``{"": device}`` for one device). Needs ``pip install bitsandbytes accelerate``
(``hired[quant]``) for ``quantization`` or ``device_map``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

import logging
import warnings

# torch loads on first use, not on import: the job's driver reads QUANTIZATIONS to check a command line.
QUANTIZATIONS = ("8bit", "4bit")


class _Once(logging.Filter):
    """Lets a repeated log line through the first time only (bitsandbytes logs one per matmul)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


def _check_quantization(quantization: str | None) -> None:
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)} or None, got {quantization!r}")


def default_dtype(device: torch.device | str, quantization: str | None = None) -> torch.dtype:
    """What a model computes in when no dtype is given.

    float32 on a CPU; on a GPU bfloat16 where the card has it (not a T4), else float16. 8-bit
    layers compute in float16 whatever the input (bitsandbytes casts to it), so 8-bit models
    compute in float16 everywhere; 4-bit layers compute in the model's dtype.
    """
    import torch

    _check_quantization(quantization)
    if quantization == "8bit":
        return torch.float16
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def bitsandbytes_config(quantization: str, compute_dtype: torch.dtype):
    """transformers' ``BitsAndBytesConfig`` for ``"8bit"`` (LLM.int8) or ``"4bit"`` (nf4, computing
    in ``compute_dtype``: float16 or bfloat16 on a GPU)."""
    from transformers import BitsAndBytesConfig

    _check_quantization(quantization)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)


def load_model(
    name: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    quantization: str | None = None,
    device_map: dict | str | None = None,
):
    """``(model, processor)`` for the checkpoint ``name`` (a hub id or a local folder), in eval mode.

    ``quantization`` (``None``, ``"8bit"``, ``"4bit"``) stores the linear layers as bitsandbytes
    does (the output embeddings stay in ``dtype``). ``device_map`` (accelerate's: a dict of
    module name -> device, or ``"balanced"``) spreads the model over several devices, and
    ``device`` is then ignored; otherwise the whole model goes to ``device``. ``dtype`` defaults
    to :func:`default_dtype`.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    _check_quantization(quantization)
    dtype = dtype or default_dtype(device, quantization)
    options: dict = {"dtype": dtype}
    if quantization is not None:
        options["quantization_config"] = bitsandbytes_config(quantization, dtype)
        # One "inputs will be cast to float16" line per matmul otherwise, when dtype is not float16.
        cast_log = logging.getLogger("bitsandbytes.autograd._functions")
        if not any(isinstance(f, _Once) for f in cast_log.filters):
            cast_log.addFilter(_Once())
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device_map is None and quantization is not None:
        device_map = {"": str(device)}  # bitsandbytes places weights through accelerate
    if device_map is not None:
        options["device_map"] = device_map
    with warnings.catch_warnings():
        # A device map names LLaVA-Next's image_newline, a parameter, which accelerate expects to be a module.
        warnings.filterwarnings("ignore", message="The following device_map keys do not match any submodules")
        model = AutoModelForImageTextToText.from_pretrained(name, **options)
    if device_map is None:
        model = model.to(device)
    return model.eval(), AutoProcessor.from_pretrained(name)
