"""How many items fit on the GPU at once, and what to do when the answer was wrong.

A LLaVA-Next / LLaVA config and a dtype become bytes, and bytes become micro-batches:

* :mod:`.shape`: the sizes that decide memory, read from a transformers config;
* :mod:`.weights`: the weights, counted from the config (full precision, or 8-bit and 4-bit
  as bitsandbytes stores them) or measured on a loaded model;
* :mod:`.estimate`: what one item adds to a batch (:class:`MemoryModel`: KV cache, prefill,
  vision phase);
* :mod:`.device`: the memory this process can still allocate on its GPU, and caps;
* :mod:`.placement`: one model over several GPUs (:func:`split_model`, the device map) and each
  device's part of every item (:class:`DeviceShare`);
* :mod:`.sizer`: :class:`BatchSizer`, what a generation actor runs: each call's items, longest
  prompt first, cut into micro-batches that fit after a :class:`Margin` (on every device);
* :mod:`.backoff`: :func:`run_with_oom_backoff`, for a batch that runs out of memory anyway;
* :mod:`.checkpoints`: the released llava-hf checkpoints' configs, built locally;
* :mod:`.cards`: the plan before a run: a model on a card (:data:`CARDS`), the batch per budget,
  and whether it fits (what ``hired plan`` prints).

Plain Python and torch; nothing imports Ray, and nothing needs CUDA to count.
"""

from .backoff import AdaptiveBatchSize, is_out_of_memory, run_with_oom_backoff
from .device import apply_memory_cap, free_device_bytes, release_device_memory
from .estimate import ImageTokens, ItemBytes, MemoryModel
from .placement import DeviceShare, Split, shares_of, split_model
from .shape import GiB, LlavaShape, dtype_bytes
from .sizer import CPU_BATCH_SIZE, MAX_BATCH_SIZE, BatchSizer, Margin
from .weights import (
    QUANTIZATIONS,
    Quantization,
    WeightBytes,
    count_weight_bytes,
    linear_layers,
    measure_weight_bytes,
    parameter_count,
    weights_bytes,
)

__all__ = [
    "CPU_BATCH_SIZE",
    "MAX_BATCH_SIZE",
    "QUANTIZATIONS",
    "Split",
    "AdaptiveBatchSize",
    "BatchSizer",
    "DeviceShare",
    "GiB",
    "ImageTokens",
    "ItemBytes",
    "LlavaShape",
    "Margin",
    "MemoryModel",
    "Quantization",
    "WeightBytes",
    "apply_memory_cap",
    "count_weight_bytes",
    "dtype_bytes",
    "free_device_bytes",
    "is_out_of_memory",
    "linear_layers",
    "measure_weight_bytes",
    "parameter_count",
    "release_device_memory",
    "run_with_oom_backoff",
    "shares_of",
    "split_model",
    "weights_bytes",
]
