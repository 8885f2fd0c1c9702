"""The GPU stage: HiRED-pruned LLaVA-Next generation on batches of preprocessed rows.

``Predictor`` is a plain callable class. Ray Data runs one per GPU actor
(``map_batches(Predictor, compute=ActorPoolStrategy(...), num_gpus=1)``); tests,
benchmarks and notebooks call it directly on a dict of columns.

Batch sizes come from calculation, not luck. HiRED fixes each item's visual-token
count before the GPU sees it, so every item's prompt length, and with it its KV
cache, prefill and vision memory, is known in advance (``hired.expected_lengths``).
``pipeline.memory.BatchSizer`` (``Predictor.batches``) sorts each call's
rows longest first and cuts them into micro-batches that fit the free device
memory at the length of their longest member (the batch is left-padded to it).
After each micro-batch the measured peak corrects the estimate upwards if the
model under-counted. Should a micro-batch still run out of memory,
``run_with_oom_backoff`` splits it and lowers the size for later ones; an item
that fails alone becomes an error row. On a CPU there is no memory figure: a
fixed batch size applies.

``settings.quantization`` loads the linear layers in 8 or 4 bits (``hired.load_model``);
``settings.gpus_per_model`` spreads one model over that many GPUs (Ray gives the actor them), its
decoder layers split as ``pipeline.memory.split_model`` says, and batches fit every device.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

import hired

from ..columns import (
    ALPHA, BATCH_SIZE, BUDGET_FRACTION, BUDGET_TOKENS, DECODE_MS, DEVICE, GENERATED, GENERATED_TOKENS, MODEL,
    MODEL_INPUTS, PEAK_GPU_MEM_BYTES, PREPROCESSED, PROMPT_TOKENS, RUN_ID, STRATEGY, TEXT, TOKENS_PER_S, TTFT_MS,
    VISUAL_TOKENS_FULL, VISUAL_TOKENS_KEPT,
)
from ..faults import failpoint
from ..row_errors import ErrorKind, RowError
from ..settings import JobSettings
from ..memory import (
    BatchSizer, Margin, MemoryModel, apply_memory_cap, free_device_bytes, run_with_oom_backoff, shares_of, split_model,
)
from ..wire import decode_inputs
from .base import Rows

log = logging.getLogger("hired.pipeline")

NEEDS = PREPROCESSED


class FirstTokenTimer:
    """A ``generate`` streamer that notes when the first new token reaches the host.

    ``generate`` hands the streamer each step's tokens copied to the CPU, which
    waits for the GPU, so the time noted is when the token really exists.
    """

    def __init__(self):
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        if value.dim() == 1 and self.first_token_at is None:  # 2-D is the prompt, sent first
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


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


def _synchronize(devices: list[torch.device]) -> None:
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def _ray_gpu_ids() -> list:
    """The GPUs Ray gave this actor ([] outside Ray)."""
    try:
        import ray

        return list(ray.get_gpu_ids()) if ray.is_initialized() else []
    except ImportError:
        return []


@dataclass
class BatchTiming:
    ttft_ms: float
    decode_ms: float
    peak_gpu_mem_bytes: int | None


@dataclass
class ItemResult:
    token_ids: list[int] | None = None
    error: RowError | None = None
    lengths: dict | None = None  # visual_tokens_full/kept, prompt_tokens
    timing: BatchTiming | None = None
    batch_size: int | None = None


class Predictor:
    """Loads the model once; each call generates for a batch of preprocessed rows."""

    def __init__(self, settings: JobSettings, device: str = "auto", margin: Margin = Margin(), loaded: tuple | None = None):
        """Loads ``settings.model`` (a hub id or folder) on ``device``; or pass ``loaded=(model, processor)``
        to use objects already in memory (benchmarks build random full-size models on the GPU)."""
        model, config, max_new_tokens = settings.model, settings.config, settings.max_new_tokens
        batch_size, gpu_memory_gb = settings.batch_size, settings.gpu_memory_gb
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(settings.dtype, self.device, settings.quantization)
        self.devices = model_devices(self.device, settings.gpus_per_model)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            for each in self.devices:
                apply_memory_cap(gpu_memory_gb, each)  # a big GPU acting as a commodity card
        else:
            torch.set_num_threads(cpu_threads(settings.cpu_threads))
            assigned = _ray_gpu_ids()
            if assigned:
                log.warning("Ray gave this actor GPUs %s, but torch finds no CUDA: generating on the CPU", assigned)
        started = time.perf_counter()
        if loaded is None:
            from transformers import AutoConfig

            device_map = placement(settings, AutoConfig.from_pretrained(model), self.dtype, self.devices)
            loaded = hired.load_model(model, self.device, self.dtype, settings.quantization, device_map)
        self.model, self.processor = loaded
        self.model_name = model
        self.config = config
        self.max_new_tokens = max_new_tokens
        self.run_id = settings.run_id
        self.generate_kwargs: dict = {}  # extra model.generate arguments (benchmarks fix the length)
        from hired.generation import eos_token_ids  # transformers: imported in the actor, never by the driver

        self.eos_ids = eos_token_ids(self.model)
        self.pad_token_id = self.model.generation_config.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.processor.tokenizer.pad_token_id
        where = ", ".join(str(d) for d in self.devices)
        log.info(
            "loaded %s on %s in %s%s in %.1f s; %s",
            model, where, str(self.dtype).removeprefix("torch."),
            f", linear layers in {settings.quantization}" if settings.quantization else "",
            time.perf_counter() - started, f"HiRED {config}" if config else "no token dropping",
        )

        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.context_tokens = int(getattr(text_config, "max_position_embeddings", 1 << 30))
        self.memory = MemoryModel(self.model.config, self.dtype, model=self.model)  # the loaded weights, measured
        shares = None
        if self.device.type == "cuda":
            device_map = getattr(self.model, "hf_device_map", None) or {"": str(self.devices[0])}
            free = {str(d): free_device_bytes(d, gpu_memory_gb) for d in self.devices}
            shares = shares_of(device_map, free, self.memory.shape)
        self.batches = BatchSizer(self.memory, max_new_tokens, shares, margin, fixed_batch_size=batch_size,
                                  hired_config=config)
        if self.batches.sizing:  # quote the costliest picture the model takes, with a longish text prompt
            worst = self.memory.worst_case_item_bytes(config, text_tokens=96, max_new_tokens=max_new_tokens)
            level = logging.INFO if self.batches.items_that_fit(worst) else logging.WARNING
            log.log(level, "%s (the largest picture, 96 text tokens; shorter prompts pack more)",
                    self.batches.describe(worst))
        else:
            log.info("%s", self.batches.describe(None))

    # -- one micro-batch ------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, items: list[dict]) -> tuple[list[list[int]], hired.PreparedInputs, BatchTiming]:
        """Generate for preprocessed items (``input_ids``, ``pixel_values``, ``image_sizes``) as one batch."""
        inputs = {
            "input_ids": [torch.as_tensor(np.asarray(it["input_ids"]), dtype=torch.long) for it in items],
            "pixel_values": [torch.as_tensor(np.asarray(it["pixel_values"])) for it in items],
            "image_sizes": [np.asarray(it["image_sizes"]).tolist() for it in items],
        }
        failpoint("generate")
        on_gpu = self.device.type == "cuda"
        if on_gpu:
            for device in self.devices:
                torch.cuda.reset_peak_memory_stats(device)
        _synchronize(self.devices)
        started = time.perf_counter()
        prepared = hired.prepare_inputs(self.model, inputs, self.config)
        timer = FirstTokenTimer()
        output = self.model.generate(
            **prepared.model_inputs(),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_token_id,
            streamer=timer,
            **self.generate_kwargs,
        )
        _synchronize(self.devices)
        finished = time.perf_counter()
        first = timer.first_token_at or finished
        timing = BatchTiming(
            ttft_ms=(first - started) * 1e3,
            decode_ms=(finished - first) * 1e3,
            # Each device's own peak, summed over the model's devices.
            peak_gpu_mem_bytes=sum(int(torch.cuda.max_memory_allocated(d)) for d in self.devices) if on_gpu else None,
        )
        from hired.generation import trim_at_eos  # already loaded by __init__

        return [trim_at_eos(row, self.eos_ids) for row in output.tolist()], prepared, timing

    def _run(self, chunk: list[tuple[dict, hired.ItemLengths]]) -> list[ItemResult]:
        baseline = sum(torch.cuda.memory_allocated(d) for d in self.devices) if self.device.type == "cuda" else 0
        token_ids, prepared, timing = self.generate([item for item, _ in chunk])
        note = self.batches.learn_from_peak([lengths for _, lengths in chunk], timing.peak_gpu_mem_bytes, baseline)
        if note:
            log.warning("%s", note)
        return [
            ItemResult(
                token_ids=token_ids[k],
                lengths={
                    VISUAL_TOKENS_FULL: prepared.visual_tokens_full[k],
                    VISUAL_TOKENS_KEPT: prepared.visual_tokens_kept[k],
                    PROMPT_TOKENS: prepared.prompt_tokens[k],
                },
                timing=timing,
                batch_size=len(chunk),
            )
            for k in range(len(chunk))
        ]

    def _run_isolating_failures(self, chunk: list[tuple[dict, hired.ItemLengths]]) -> list[ItemResult]:
        """Results for a micro-batch; out-of-memory is backed off, and any other failure is
        pinned on its item(s) by running them one at a time, so one bad item costs one row."""
        def make_error(item, reason: str) -> ItemResult:
            return ItemResult(error=RowError(ErrorKind.OUT_OF_MEMORY, reason.removeprefix("out of memory: ")))

        try:
            return run_with_oom_backoff(chunk, self._run, self.batches.sizes, make_error=make_error)
        except Exception as error:
            log.warning("a batch of %d failed (%s: %s); running its items one by one", len(chunk),
                        type(error).__name__, error)
        results = []
        for pair in chunk:
            try:
                results.extend(run_with_oom_backoff([pair], self._run, self.batches.sizes, make_error=make_error))
            except Exception as error:
                log.exception("an item failed alone")
                results.append(ItemResult(error=RowError(ErrorKind.GENERATION_FAILED, f"{type(error).__name__}: {error}")))
        return results

    # -- Ray Data entry point -------------------------------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = Rows(batch, NEEDS, "generate")
        encoded = rows.column(MODEL_INPUTS)
        out = {name: rows.add(name) for name in GENERATED}
        good, items, lengths = [], [], []
        for i in rows.ok():
            if encoded[i] is None:
                rows.fail(i, RowError(ErrorKind.INTERNAL, "the row reached generation without model inputs"))
                continue
            item = decode_inputs(encoded[i])
            length = hired.expected_lengths(
                self.model, tuple(item["image_sizes"].tolist()), len(item["input_ids"]), self.config
            )
            if length.prompt_tokens + self.max_new_tokens > self.context_tokens:
                rows.fail(i, RowError(ErrorKind.PROMPT_TOO_LONG, (
                    f"{length.prompt_tokens} tokens + {self.max_new_tokens} new tokens exceed "
                    f"the model's context of {self.context_tokens}")))
                continue
            good.append(i)
            items.append(item)
            lengths.append(length)
        for micro in self.batches.micro_batches(lengths):
            chunk = [(items[k], lengths[k]) for k in micro]
            for k, result in zip(micro, self._run_isolating_failures(chunk)):
                if result.error is not None:
                    rows.fail(good[k], result.error)
                else:
                    self._fill(out, good[k], result)
        history = self.batches.sizes.history
        for line in history:
            log.warning("OOM back-off: %s", line)
        history.clear()
        config = self.config
        fraction, tokens = hired.budget_kind(config.budget) if config else (None, None)
        device = ",".join(str(d) for d in self.devices) if len(self.devices) > 1 else str(self.device)
        for i in range(rows.size):
            out[DEVICE][i] = device
            out[MODEL][i] = self.model_name
            out[RUN_ID][i] = self.run_id
            out[STRATEGY][i] = config.strategy if config else hired.strategies.STOCK
            out[BUDGET_FRACTION][i] = fraction
            out[BUDGET_TOKENS][i] = tokens
            out[ALPHA][i] = float(config.alpha) if config else None
        rows.drop(MODEL_INPUTS)
        return rows.result()

    def _fill(self, out: dict[str, list], i: int, result: ItemResult) -> None:
        timing = result.timing
        total_s = (timing.ttft_ms + timing.decode_ms) / 1e3
        out[TEXT][i] = self.processor.decode(result.token_ids, skip_special_tokens=True).strip()
        for key, value in result.lengths.items():
            out[key][i] = value
        out[GENERATED_TOKENS][i] = len(result.token_ids)
        out[TTFT_MS][i] = timing.ttft_ms
        out[DECODE_MS][i] = timing.decode_ms
        out[TOKENS_PER_S][i] = len(result.token_ids) / total_s if total_s > 0 else None
        out[BATCH_SIZE][i] = result.batch_size
        out[PEAK_GPU_MEM_BYTES][i] = timing.peak_gpu_mem_bytes
