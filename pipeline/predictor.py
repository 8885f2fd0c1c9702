"""The GPU stage: HiRED-pruned LLaVA-Next generation on batches of preprocessed rows.

``Predictor`` is a plain callable class. Ray Data runs one per GPU actor
(``map_batches(Predictor, compute=ActorPoolStrategy(...), num_gpus=1)``); tests,
benchmarks and notebooks call it directly on a dict of columns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

import hired
from hired.generation import eos_token_ids, trim_at_eos

from .preprocess import MODEL_INPUTS, PASSTHROUGH, column, decode_inputs, object_array

log = logging.getLogger("hired.pipeline")

RESULT_COLUMNS = (
    "text", "visual_tokens_full", "visual_tokens_kept", "prompt_tokens", "generated_tokens", "ttft_ms",
    "decode_ms", "tokens_per_s", "batch_size", "peak_gpu_mem_bytes", "device", "model", "strategy",
    "budget", "alpha", "run_id",
)


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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, dtype)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class BatchTiming:
    ttft_ms: float
    decode_ms: float
    peak_gpu_mem_bytes: int | None


class Predictor:
    """Loads the model once; each call generates for a batch of preprocessed rows."""

    def __init__(
        self,
        model: str,
        config: hired.HiREDConfig | None = hired.HiREDConfig(),
        max_new_tokens: int = 64,
        device: str = "auto",
        dtype: str = "auto",
        run_id: str = "",
    ):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        started = time.perf_counter()
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=self.dtype).to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(model)
        self.model_name = model
        self.config = config
        self.max_new_tokens = max_new_tokens
        self.run_id = run_id
        self.eos_ids = eos_token_ids(self.model)
        self.pad_token_id = self.model.generation_config.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.processor.tokenizer.pad_token_id
        log.info(
            "loaded %s on %s in %s in %.1f s; %s",
            model, self.device, str(self.dtype).removeprefix("torch."), time.perf_counter() - started,
            f"HiRED {config}" if config else "no token dropping",
        )

    # -- one batch of good rows -----------------------------------------------------------
    @torch.no_grad()
    def generate(self, items: list[dict]) -> tuple[list[list[int]], hired.PreparedInputs, BatchTiming]:
        """Generate for preprocessed items (``input_ids``, ``pixel_values``, ``image_sizes``)."""
        inputs = {
            "input_ids": [torch.as_tensor(np.asarray(it["input_ids"]), dtype=torch.long) for it in items],
            "pixel_values": [torch.as_tensor(np.asarray(it["pixel_values"])) for it in items],
            "image_sizes": [np.asarray(it["image_sizes"]).tolist() for it in items],
        }
        on_gpu = self.device.type == "cuda"
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(self.device)
        _synchronize(self.device)
        started = time.perf_counter()
        prepared = hired.prepare_inputs(self.model, inputs, self.config)
        timer = FirstTokenTimer()
        output = self.model.generate(
            **prepared.model_inputs(),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_token_id,
            streamer=timer,
        )
        _synchronize(self.device)
        finished = time.perf_counter()
        first = timer.first_token_at or finished
        timing = BatchTiming(
            ttft_ms=(first - started) * 1e3,
            decode_ms=(finished - first) * 1e3,
            peak_gpu_mem_bytes=int(torch.cuda.max_memory_allocated(self.device)) if on_gpu else None,
        )
        return [trim_at_eos(row, self.eos_ids) for row in output.tolist()], prepared, timing

    # -- Ray Data entry point -------------------------------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["id"])
        out = {c: column(batch, c) for c in PASSTHROUGH}
        out.update({c: [None] * n for c in RESULT_COLUMNS})
        inputs = column(batch, MODEL_INPUTS)
        for i in range(n):
            if out["error"][i] is None and inputs[i] is None:
                out["error"][i] = "internal: the row reached generation without model inputs"
        good = [i for i in range(n) if out["error"][i] is None]
        if good:
            items = [decode_inputs(inputs[i]) for i in good]
            token_ids, prepared, timing = self.generate(items)
            for k, i in enumerate(good):
                self._fill(out, i, token_ids[k], prepared, k, timing, len(good))
        config = self.config
        for i in range(n):
            out["device"][i] = str(self.device)
            out["model"][i] = self.model_name
            out["run_id"][i] = self.run_id
            out["strategy"][i] = "hired" if config else "none"
            out["budget"][i] = float(config.budget) if config else None
            out["alpha"][i] = float(config.alpha) if config else None
        return {k: object_array(v) for k, v in out.items()}

    def _fill(self, out, i, token_ids, prepared, k, timing: BatchTiming, batch_size: int) -> None:
        total_s = (timing.ttft_ms + timing.decode_ms) / 1e3
        out["text"][i] = self.processor.decode(token_ids, skip_special_tokens=True).strip()
        out["visual_tokens_full"][i] = prepared.visual_tokens_full[k]
        out["visual_tokens_kept"][i] = prepared.visual_tokens_kept[k]
        out["prompt_tokens"][i] = prepared.prompt_tokens[k]
        out["generated_tokens"][i] = len(token_ids)
        out["ttft_ms"][i] = timing.ttft_ms
        out["decode_ms"][i] = timing.decode_ms
        out["tokens_per_s"][i] = len(token_ids) / total_s if total_s > 0 else None
        out["batch_size"][i] = batch_size
        out["peak_gpu_mem_bytes"][i] = timing.peak_gpu_mem_bytes
