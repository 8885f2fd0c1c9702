"""Device memory this process can still use, a cap that makes a big GPU act like a smaller card,
and freeing what an aborted batch left behind."""

from __future__ import annotations

import gc

import torch

from .shape import GiB


def _cuda_device(device) -> torch.device:
    device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"expected a CUDA device, got {device}")
    return device


def free_device_bytes(
    device: torch.device | int | str | None = None, gpu_memory_gb: float | None = None
) -> int | None:
    """Bytes this process can still allocate on the CUDA ``device``; ``None`` without CUDA.

    The device's free memory (other processes' use already taken out) plus the
    blocks PyTorch's caching allocator holds but is not using, capped by the
    per-process memory fraction if one is set (:func:`apply_memory_cap`) and by
    ``gpu_memory_gb`` GiB for this process in all if given.

    We ask CUDA through torch rather than NVML: NVML numbers GPUs physically and
    ignores ``CUDA_VISIBLE_DEVICES``, which Ray sets per actor, so NVML's
    device 0 is not necessarily this actor's GPU.
    """
    if not torch.cuda.is_available():
        return None
    device = _cuda_device(device)
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    cached_unused = torch.cuda.memory_reserved(device) - allocated
    available = free + cached_unused
    get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # torch >= 2.6
    fraction = get_fraction(device) if get_fraction else 1.0
    limits = [int(fraction * total)] if fraction < 1.0 else []
    if gpu_memory_gb is not None:
        limits.append(_cap_bytes(gpu_memory_gb))
    for limit in limits:
        available = min(available, limit - allocated)
    return max(0, available)


def _cap_bytes(gpu_memory_gb: float) -> int:
    if gpu_memory_gb <= 0:
        raise ValueError(f"gpu_memory_gb must be positive, got {gpu_memory_gb}")
    return int(gpu_memory_gb * GiB)


def apply_memory_cap(gpu_memory_gb: float | None, device: torch.device | int | str | None = None) -> int | None:
    """Make a large GPU behave like a ``gpu_memory_gb`` GiB card for this process; returns the free bytes.

    Sets ``torch.cuda.set_per_process_memory_fraction`` so PyTorch's allocator
    refuses to hold more than ``gpu_memory_gb`` GiB, and returns
    :func:`free_device_bytes` under that cap (call it before loading the model
    and subtract :func:`weights_bytes`, or after and use it as is). Give the
    memory a real card exposes (a T4 about 15 GiB, an A10G about 22 GiB); the
    CUDA context lies outside the allocator and is left to :class:`Margin`.
    ``None`` sets no cap. Returns ``None`` without CUDA.
    """
    if not torch.cuda.is_available():
        return None
    device = _cuda_device(device)
    if gpu_memory_gb is not None:
        _, total = torch.cuda.mem_get_info(device)
        torch.cuda.set_per_process_memory_fraction(min(1.0, _cap_bytes(gpu_memory_gb) / total), device)
    return free_device_bytes(device)


def release_device_memory() -> None:
    """Free what an aborted batch left behind: unreachable tensors, then the allocator's cached blocks."""
    gc.collect()  # tensors held in reference cycles (e.g. by a traceback's frames)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
