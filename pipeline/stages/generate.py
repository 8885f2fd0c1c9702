"""The GPU stage: HiRED-pruned LLaVA-Next generation on batches of preprocessed rows.

``Predictor`` is a plain callable class. Ray Data runs one per GPU actor
(``map_batches(Predictor, compute=ActorPoolStrategy(...), num_gpus=1)``); tests,
benchmarks and notebooks call it directly on a dict of columns, or build it around a model
already in memory (:meth:`Predictor.with_model`).

Decoding is :class:`hired.Decoder`'s, the library's one loop: a static KV cache, the step
compiled on CUDA, sampling, stop strings and constrained choices, per row.

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

With ``--prompts`` each input row becomes one output row per prompt (``prompt_name``,
``prompt_index``); a picture's prompts share one micro-batch, so its vision pass and HiRED's
selection run once for all of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

import hired

from ..columns import (
    ALPHA, BATCH_SIZE, BUDGET_FRACTION, BUDGET_TOKENS, CHOICES, DECODE_MS, DEVICE, GENERATED, GENERATED_TOKENS, ID,
    MODEL, MODEL_INPUTS, PEAK_GPU_MEM_BYTES, PREPROCESSED, PROMPT_INDEX, PROMPT_NAME, PROMPT_TOKENS, READ_COLUMNS,
    RUN_ID, SAMPLING, STRATEGY, TEXT, TOKENS_PER_S, TTFT_MS, VISUAL_TOKENS_FULL, VISUAL_TOKENS_KEPT,
)
from ..faults import failpoint
from ..memory import BatchSizer, Margin, MemoryModel, apply_memory_cap, free_device_bytes, run_with_oom_backoff, shares_of
from ..row_errors import ErrorKind, RowError
from ..settings import JobSettings
from ..wire import decode_inputs
from .base import Rows
from .devices import cpu_threads, model_devices, placement, ray_gpu_ids, resolve_device, resolve_dtype, synchronize

log = logging.getLogger("hired.pipeline")

NEEDS = {**PREPROCESSED, **{name: READ_COLUMNS[name] for name in (ID, SAMPLING, CHOICES)}}


@dataclass
class BatchTiming:
    ttft_ms: float
    decode_ms: float
    peak_gpu_mem_bytes: int | None


@dataclass
class ItemResult:
    row: hired.DecodedRow | None = None
    error: RowError | None = None
    lengths: dict | None = None  # visual_tokens_full/kept, prompt_tokens
    timing: BatchTiming | None = None
    batch_size: int | None = None


def row_seed(job_seed: int, row_id, prompt_index: int) -> int:
    """A row's own seed from the job's: the same for the row in any batch and on any rerun, and
    different for each row and prompt (one seed for all would draw the same noise for every row)."""
    digest = hashlib.sha256(f"{job_seed}\x1f{row_id}\x1f{prompt_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # in [0, 2**63)


class Predictor:
    """Loads the model once; each call generates for a batch of preprocessed rows."""

    def __init__(self, settings: JobSettings, device: str = "auto", margin: Margin = Margin()):
        """Loads ``settings.model`` (a hub id or folder) on ``device``."""
        device = resolve_device(device)
        dtype = resolve_dtype(settings.dtype, device, settings.quantization)
        devices = model_devices(device, settings.gpus_per_model)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            for each in devices:
                apply_memory_cap(settings.gpu_memory_gb, each)  # a big GPU acting as a commodity card
        else:
            torch.set_num_threads(cpu_threads(settings.cpu_threads))
            assigned = ray_gpu_ids()
            if assigned:
                log.warning("Ray gave this actor GPUs %s, but torch finds no CUDA: generating on the CPU", assigned)
        started = time.perf_counter()
        from transformers import AutoConfig

        device_map = placement(settings, AutoConfig.from_pretrained(settings.model), dtype, devices)
        model, processor = hired.load_model(settings.model, device, dtype, settings.quantization, device_map)
        log.info(
            "loaded %s on %s in %s%s in %.1f s; %s",
            settings.model, ", ".join(str(d) for d in devices), str(dtype).removeprefix("torch."),
            f", linear layers in {settings.quantization}" if settings.quantization else "",
            time.perf_counter() - started, f"HiRED {settings.config}" if settings.config else "no token dropping",
        )
        self._start(settings, model, processor, device, dtype, devices, margin)

    @classmethod
    def with_model(cls, settings: JobSettings, model, processor, margin: Margin = Margin()) -> "Predictor":
        """A predictor around a model already in memory (benchmarks build random full-size models on the GPU)."""
        self = cls.__new__(cls)
        if model.device.type == "cuda":
            apply_memory_cap(settings.gpu_memory_gb, model.device)
        self._start(settings, model, processor, model.device, model.dtype, [model.device], margin)
        return self

    def _start(self, settings, model, processor, device, dtype, devices, margin) -> None:
        self.settings = settings
        self.model, self.processor = model, processor
        self.device, self.dtype, self.devices = device, dtype, devices
        self.model_name = settings.model
        self.config = settings.config
        self.max_new_tokens = settings.max_new_tokens
        self.min_new_tokens = 0  # benchmarks fix the length
        self.run_id = settings.run_id
        self.decoder = hired.Decoder(model, processor, settings.decode_options)
        self.sampling = settings.sampling
        self.choices = None
        if settings.choices:
            from hired.choices import build_trie

            self.choices = build_trie(processor.tokenizer, settings.choices, self.max_new_tokens)  # the driver checked it
        text_config = getattr(model.config, "text_config", model.config)
        self.context_tokens = int(getattr(text_config, "max_position_embeddings", 1 << 30))
        self.memory = MemoryModel(model.config, dtype, model=model)  # the loaded weights, measured
        shares = None
        if device.type == "cuda":
            device_map = getattr(model, "hf_device_map", None) or {"": str(devices[0])}
            free = {str(d): free_device_bytes(d, settings.gpu_memory_gb) for d in devices}
            shares = shares_of(device_map, free, self.memory.shape)
        options = self.decoder.options
        padded = options.pad_to_buckets
        self.batches = BatchSizer(self.memory, self.max_new_tokens, shares, margin, fixed_batch_size=settings.batch_size,
                                  hired_config=self.config, row_buckets=options.batch_buckets if padded else None,
                                  cache_multiple=options.cache_multiple if padded else 1)
        log.info("decoding: %s cache%s, host check every %d steps%s", options.cache,
                 ", compiled step" if options.compile else "", options.sync_every,
                 "" if self.sampling.greedy and not self.sampling.stop else f"; {self.sampling.describe()}")
        if self.batches.sizing:  # quote the costliest picture the model takes, with a longish text prompt
            worst = self.memory.worst_case_item_bytes(self.config, text_tokens=96, max_new_tokens=self.max_new_tokens)
            level = logging.INFO if self.batches.items_that_fit(worst) else logging.WARNING
            log.log(level, "%s (the largest picture, 96 text tokens; shorter prompts pack more)",
                    self.batches.describe(worst))
        else:
            log.info("%s", self.batches.describe(None))

    # -- one micro-batch ------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, items: list[dict]) -> tuple[list[hired.DecodedRow], hired.PreparedInputs, BatchTiming]:
        """Decode preprocessed items (``input_ids``, ``pixel_values``, ``image_sizes``) as one batch.
        Items with the same ``picture`` tag share its vision pass (the first one's pixels are used);
        an item's ``sampling`` and ``choices`` apply to it alone (default: the job's)."""
        pictures: dict = {}
        image_index = [pictures.setdefault(it.get("picture", k), len(pictures)) for k, it in enumerate(items)]
        first = {}
        for k, picture in enumerate(image_index):
            first.setdefault(picture, items[k])
        inputs = {
            "input_ids": [torch.as_tensor(np.asarray(it["input_ids"]), dtype=torch.long) for it in items],
            "pixel_values": [torch.as_tensor(np.asarray(first[p]["pixel_values"])) for p in range(len(first))],
            "image_sizes": [np.asarray(first[p]["image_sizes"]).tolist() for p in range(len(first))],
        }
        failpoint("generate")
        on_gpu = self.device.type == "cuda"
        if on_gpu:
            for device in self.devices:
                torch.cuda.reset_peak_memory_stats(device)
        synchronize(self.devices)
        started = time.perf_counter()
        prepared = hired.prepare_inputs(self.model, inputs, self.config, image_index)
        try:
            decoded = self.decoder(
                prepared, self.max_new_tokens, min_new_tokens=self.min_new_tokens, started=started,
                sampling=[it.get("sampling", self.sampling) for it in items],
                choices=[it.get("choices", self.choices) for it in items],
            )
        finally:
            if not self.decoder.options.compile:
                self.decoder.release()  # a compiled step keeps its cache; eager batches free theirs for the next
        synchronize(self.devices)
        timing = decoded.timing
        batch_timing = BatchTiming(
            ttft_ms=timing.ttft_s * 1e3,
            decode_ms=(timing.finished - timing.first_token) * 1e3,
            # Each device's own peak, summed over the model's devices.
            peak_gpu_mem_bytes=sum(int(torch.cuda.max_memory_allocated(d)) for d in self.devices) if on_gpu else None,
        )
        return decoded.rows, prepared, batch_timing

    def _run(self, chunk: list[tuple[dict, hired.ItemLengths]]) -> list[ItemResult]:
        baseline = sum(torch.cuda.memory_allocated(d) for d in self.devices) if self.device.type == "cuda" else 0
        rows, prepared, timing = self.generate([item for item, _ in chunk])
        note = self.batches.learn_from_peak([lengths for _, lengths in chunk], timing.peak_gpu_mem_bytes, baseline)
        if note:
            log.warning("%s", note)
        return [
            ItemResult(
                row=rows[k],
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

    # -- per-row settings -----------------------------------------------------------------
    def row_sampling(self, overrides, row_id, prompt_index: int) -> hired.Sampling:
        """The row's sampling: the job's with the row's own overrides (``--sampling-column``) and,
        when sampling with a job seed, the row's own seed. ValueError for overrides that do not hold."""
        sampling = self.sampling
        if overrides is not None:
            try:
                fields = json.loads(overrides) if isinstance(overrides, str) else overrides
            except json.JSONDecodeError as error:
                raise ValueError(f"not a JSON object: {error}") from None
            if not isinstance(fields, dict):
                raise ValueError(f"expected an object of sampling fields, got {type(fields).__name__}")
            if fields.get("temperature") == 0 and fields.get("top_p") is None and fields.get("top_k") is None:
                sampling = dataclasses.replace(sampling, temperature=0.0, top_p=None, top_k=None)  # greedy, whole
            sampling = sampling.with_overrides(fields)
            if fields.get("seed") is not None:
                return sampling  # the row's own seed, as given
        if sampling.seed is not None and not sampling.greedy:
            sampling = sampling.with_overrides({"seed": row_seed(sampling.seed, row_id, prompt_index)})
        return sampling

    def row_choices(self, choices):
        if choices is None:
            return self.choices
        from hired.choices import build_trie

        return build_trie(self.processor.tokenizer, [str(c) for c in choices], self.max_new_tokens)

    # -- Ray Data entry point -------------------------------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompt_set = self.settings.prompts
        rows = Rows(batch, NEEDS, "generate")
        per_row = max(1, len(prompt_set))
        if prompt_set:
            rows = rows.repeated(per_row)  # one row per (input row, prompt), each input row's together
        encoded, ids = rows.column(MODEL_INPUTS), rows.column(ID)
        samplings, choice_lists = rows.column(SAMPLING), rows.column(CHOICES)
        out = {name: rows.add(name) for name in GENERATED}
        work, lengths, slots, groups = [], [], [], {}
        decoded: dict[int, dict] = {}
        for i in rows.ok():
            source, prompt = divmod(i, per_row)
            if encoded[i] is None:
                rows.fail(i, RowError(ErrorKind.INTERNAL, "the row reached generation without model inputs"))
                continue
            if source not in decoded:
                decoded[source] = decode_inputs(encoded[i])
            inputs = decoded[source]
            item = {"picture": source, "pixel_values": inputs["pixel_values"], "image_sizes": inputs["image_sizes"],
                    "input_ids": prompt_ids(inputs, prompt)}
            try:
                item["sampling"] = self.row_sampling(samplings[i], ids[i], prompt)
            except ValueError as error:
                rows.fail(i, RowError(ErrorKind.BAD_SAMPLING, str(error)))
                continue
            try:
                item["choices"] = self.row_choices(choice_lists[i])
            except ValueError as error:
                rows.fail(i, RowError(ErrorKind.BAD_CHOICES, str(error)))
                continue
            length = hired.expected_lengths(
                self.model, tuple(inputs["image_sizes"].tolist()), len(item["input_ids"]), self.config
            )
            if length.prompt_tokens + self.max_new_tokens > self.context_tokens:
                rows.fail(i, RowError(ErrorKind.PROMPT_TOO_LONG, (
                    f"{length.prompt_tokens} tokens + {self.max_new_tokens} new tokens exceed "
                    f"the model's context of {self.context_tokens}")))
                continue
            groups.setdefault(source, []).append(len(work))
            slots.append(i)
            work.append(item)
            lengths.append(length)
        for micro in self.batches.micro_batches(lengths, list(groups.values())):
            chunk = [(work[k], lengths[k]) for k in micro]
            for k, result in zip(micro, self._run_isolating_failures(chunk)):
                if result.error is not None:
                    rows.fail(slots[k], result.error)
                else:
                    self._fill(out, slots[k], result)
        history = self.batches.sizes.history
        for line in history:
            log.warning("OOM back-off: %s", line)
        history.clear()
        self._describe_run(out, rows.size)
        if prompt_set:
            for i in range(rows.size):
                out[PROMPT_INDEX][i] = i % per_row
                out[PROMPT_NAME][i] = prompt_set[i % per_row][0]
        rows.drop(MODEL_INPUTS, SAMPLING, CHOICES)
        return rows.result()

    def _describe_run(self, out: dict[str, list], size: int) -> None:
        config = self.config
        fraction, tokens = hired.budget_kind(config.budget) if config else (None, None)
        device = ",".join(str(d) for d in self.devices) if len(self.devices) > 1 else str(self.device)
        for i in range(size):
            out[DEVICE][i] = device
            out[MODEL][i] = self.model_name
            out[RUN_ID][i] = self.run_id
            out[STRATEGY][i] = config.strategy if config else hired.strategies.STOCK
            out[BUDGET_FRACTION][i] = fraction
            out[BUDGET_TOKENS][i] = tokens
            out[ALPHA][i] = float(config.alpha) if config else None

    def _fill(self, out: dict[str, list], i: int, result: ItemResult) -> None:
        timing, row = result.timing, result.row
        total_s = (timing.ttft_ms + timing.decode_ms) / 1e3
        out[TEXT][i] = row.text
        for key, value in result.lengths.items():
            out[key][i] = value
        out[GENERATED_TOKENS][i] = len(row.token_ids)
        out[TTFT_MS][i] = timing.ttft_ms
        out[DECODE_MS][i] = timing.decode_ms
        out[TOKENS_PER_S][i] = len(row.token_ids) / total_s if total_s > 0 else None
        out[BATCH_SIZE][i] = result.batch_size
        out[PEAK_GPU_MEM_BYTES][i] = timing.peak_gpu_mem_bytes


def prompt_ids(inputs: dict[str, np.ndarray], prompt: int) -> np.ndarray:
    """Prompt ``prompt``'s token ids from a row's model inputs (several prompts travel concatenated)."""
    if "prompt_lengths" not in inputs:
        return inputs["input_ids"]
    ends = np.cumsum(inputs["prompt_lengths"])
    return inputs["input_ids"][ends[prompt] - inputs["prompt_lengths"][prompt] : ends[prompt]]
