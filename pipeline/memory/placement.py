"""One model over several GPUs: which device holds which part, and what each device then holds of
every item in a batch.

A LLaVA-Next model splits as a pipeline: the vision tower, the projector and the input embeddings
run first, on the first device; the decoder layers follow in order, a contiguous run on each
device; the final norm and ``lm_head`` end the last one. :func:`split_model` cuts the decoder
layers so that every device holds about the same bytes of weights, counted from the config
(quantized too), and returns the device map that ``from_pretrained(device_map=...)`` takes;
accelerate then moves each layer's activations to the next device. The planner and the
generation actor use the same split, so what ``hired plan`` prints is what the actor loads.

Each device then holds, of every item: the KV cache of its own decoder layers, the working set of
the layer it runs (prefill), and, on the first, the vision phase (:class:`DeviceShare`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .estimate import ItemBytes
from .shape import GiB, LlavaShape
from .weights import LAYER, VISION, count_weight_bytes_by_module

LAYERS_PREFIX = LAYER.format("")  # "model.language_model.layers."


@dataclass(frozen=True)
class Split:
    """A model's parts assigned to ``devices`` devices (0 .. devices - 1)."""

    device_map: dict[str, int]  # part name -> device index, in the model's order
    weights_bytes: tuple[int, ...]  # per device, bitsandbytes' state included

    @property
    def devices(self) -> int:
        return len(self.weights_bytes)

    def layers_on(self, device: int) -> int:
        return sum(1 for part, d in self.device_map.items() if d == device and part.startswith(LAYERS_PREFIX))

    def describe(self) -> str:
        return ", ".join(
            f"GPU {d}: {self.weights_bytes[d] / GiB:.2f} GiB ({self.layers_on(d)} layers"
            + (", vision" if self.device_map[VISION] == d else "") + ")"
            for d in range(self.devices)
        )


def _cut_layers(head: int, layers: Sequence[int], tail: int, devices: int) -> list[int]:
    """How many consecutive layers each device takes (each at least one), so that the fullest
    device (the first also holds ``head`` bytes, the last ``tail``) holds as little as possible."""
    n = len(layers)
    prefix = [0]
    for size in layers:
        prefix.append(prefix[-1] + size)

    def load(device: int, start: int, end: int) -> int:
        return (head if device == 0 else 0) + prefix[end] - prefix[start] + (tail if device == devices - 1 else 0)

    # best[d][i]: the smallest possible fullest device, layers i.. on devices d..; cut[d][i]: where d stops.
    best = [[math.inf] * (n + 1) for _ in range(devices + 1)]
    cut = [[0] * (n + 1) for _ in range(devices + 1)]
    best[devices][n] = 0
    for d in range(devices - 1, -1, -1):
        for i in range(n - (devices - d) + 1):
            for end in range(i + 1, n - (devices - d - 1) + 1):
                fullest = max(load(d, i, end), best[d + 1][end])
                if fullest < best[d][i]:
                    best[d][i], cut[d][i] = fullest, end
    counts, start = [], 0
    for d in range(devices):
        counts.append(cut[d][start] - start)
        start = cut[d][start]
    return counts


def split_model(config, dtype: torch.dtype | str, devices: int, quantization=None) -> Split:
    """Assign the model's parts to ``devices`` devices, weights balanced; ``devices=1`` puts all on one."""
    parts = {name: w.total_bytes for name, w in count_weight_bytes_by_module(config, dtype, quantization).items()}
    names = list(parts)
    layers = [name for name in names if name.startswith(LAYERS_PREFIX)]
    if not 1 <= devices <= len(layers):
        raise ValueError(f"a model of {len(layers)} decoder layers splits over 1 to {len(layers)} GPUs, not {devices}")
    first, last = names.index(layers[0]), names.index(layers[-1])
    head, tail = sum(parts[n] for n in names[:first]), sum(parts[n] for n in names[last + 1:])
    counts = _cut_layers(head, [parts[n] for n in layers], tail, devices)
    device_map = {name: 0 for name in names[:first]}
    for device, count in enumerate(counts):
        start = sum(counts[:device])
        device_map.update({name: device for name in layers[start : start + count]})
    device_map.update({name: devices - 1 for name in names[last + 1:]})
    weights = [0] * devices
    for name, device in device_map.items():
        weights[device] += parts[name]
    return Split(device_map, tuple(weights))


@dataclass(frozen=True)
class DeviceShare:
    """One device's room for items and its part in each: ``free_bytes`` it can still allocate once
    the weights are loaded, ``layers`` of the ``total_layers`` decoder layers (and so that share
    of every item's KV cache), and whether the vision tower runs there."""

    device: str
    free_bytes: int
    layers: int
    total_layers: int
    vision: bool

    def item_bytes(self, item: ItemBytes) -> int:
        """What one item needs on this device. Each device holds its layers' KV cache; prefill's
        working set is that of one layer, on whichever device runs it, counted on every device
        (with the input embeddings and logits, which live on the first and last only: it errs high)."""
        kv = math.ceil(item.kv_cache_bytes * self.layers / self.total_layers)
        return kv + item.prefill_bytes + (item.vision_bytes if self.vision else 0)


def whole_model(device: str, free_bytes: int, shape: LlavaShape) -> DeviceShare:
    """The share of a device that holds the whole model."""
    return DeviceShare(device, free_bytes, shape.text_layers, shape.text_layers, vision=True)


def shares_of(device_map: dict[str, int | str], free_bytes: dict[str, int], shape: LlavaShape) -> list[DeviceShare]:
    """Each device's share, from a device map (``model.hf_device_map``, or :attr:`Split.device_map`:
    module name -> device, ``""`` for the whole model) and each device's free bytes, keyed by
    ``str(torch.device(...))`` (``"cuda:0"``)."""

    def name(device) -> str:
        return str(torch.device("cuda", device) if isinstance(device, int) else torch.device(device))

    def device_of(module: str) -> str | None:  # the most specific entry that holds ``module``
        holders = [k for k in device_map if k == "" or module == k or module.startswith(k + ".")]
        return name(device_map[max(holders, key=len)]) if holders else None

    devices = list(dict.fromkeys(name(d) for d in device_map.values()))
    layer_devices = [device_of(LAYER.format(i)) for i in range(shape.text_layers)]
    tower = device_of(VISION)
    # A tower split over devices (accelerate may cut it between CLIP layers): each of them runs part of it.
    vision = {tower} if tower else {name(d) for k, d in device_map.items() if k.startswith(VISION + ".")}
    return [
        DeviceShare(d, free_bytes[d], layer_devices.count(d), shape.text_layers, vision=d in vision)
        for d in devices
    ]
