"""Where the generation actor's model runs: its device(s), precision, threads and placement.

Kept apart from the stage so that what the stage does with rows reads on its own.
"""

from __future__ import annotations

import logging
import os

import torch

import hired

from ..memory import split_model
from ..settings import JobSettings

log = logging.getLogger("hired.pipeline")


def cpu_threads(configured: int | None) -> int:
    """Threads for generating on a CPU: ``configured`` (settings.cpu_threads), else every core this
    process may use. Ray starts a worker with OMP_NUM_THREADS at the floor of its ``num_cpus`` (1
    for the generation actor's 0.5), leaving cores idle; on a CPU the actor is the job's compute."""
    if configured:
        return configured
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS)
        return os.cpu_count() or 1


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device, quantization: str | None = None) -> torch.dtype:
    if dtype == "auto":
        return hired.default_dtype(device, quantization)
    return getattr(torch, dtype)


def model_devices(device: torch.device, gpus_per_model: int) -> list[torch.device]:
    """The devices one model spreads over: ``gpus_per_model`` GPUs from ``device`` on (Ray numbers
    an actor's GPUs from 0), or the CPU."""
    if device.type != "cuda":
        return [device]
    first = device.index or 0
    if torch.cuda.device_count() < first + gpus_per_model:
        raise RuntimeError(f"--gpus-per-model {gpus_per_model}: this process sees {torch.cuda.device_count()} GPUs "
                           f"from cuda:{first}")
    return [torch.device("cuda", first + k) for k in range(gpus_per_model)]


def placement(settings: JobSettings, config, dtype: torch.dtype, devices: list[torch.device]) -> dict | str | None:
    """The ``device_map`` for ``devices``: None for one device (the whole model goes there), else
    the decoder layers split with balanced weights, or accelerate's ``"balanced"`` for a model
    whose weights are not counted from its config."""
    if len(devices) == 1:
        return None
    try:
        split = split_model(config, dtype, len(devices), settings.quantization)
    except ValueError as error:
        log.warning("%s; accelerate places the model instead (device_map='balanced')", error)
        return "balanced"
    return {part: str(devices[index]) for part, index in split.device_map.items()}


def synchronize(devices: list[torch.device]) -> None:
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def ray_gpu_ids() -> list:
    """The GPUs Ray gave this actor ([] outside Ray)."""
    try:
        import ray

        return list(ray.get_gpu_ids()) if ray.is_initialized() else []
    except ImportError:
        return []
