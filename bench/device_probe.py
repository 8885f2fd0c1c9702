"""One run on a lent GPU that measures where HiRED's generation time goes, in at most 7 minutes.

    python bench/device_probe.py               # a CUDA device: the LLaVA-Next-7B architecture, random bf16 weights
    python bench/device_probe.py --smoke       # seconds on a CPU: a toy model with the real geometry

No Ray, no downloads: the model is built on the device from its config (bench/common.py). Phases,
each written to ``$OUT/device_probe.json`` (or ``--out``) as soon as it is done, so a run stopped
at its time limit keeps what it measured:

1. ``ceilings``: a large bf16 matmul (FLOP/s) and a device-to-device copy (bytes/s);
2. ``build``: the model, timed;
3. ``runs``: for every token (``full``) and HiRED-20%, at batch 1, 16, 64 and the largest batch the
   free memory holds: the vision tower alone, ``prepare_inputs`` (vision + selection + splice;
   selection = the difference), then per decode loop (``hired.Decoder``: DynamicCache eager, static
   cache eager, static cache compiled) the prefill and the time per decode step, and peak memory.
   A run that does not fit is recorded as out of memory; work that would not finish before the
   deadline is recorded as skipped;
4. ``summary``: end-to-end images/s per (config, batch) with its fastest loop, against the floor
   the measured ceilings allow (compute for vision and prefill; for decoding the larger of its
   FLOPs and reading the weights and the KV cache once a step).

One table on stdout at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import hired  # noqa: E402
from common import build_model, copy_bandwidth, flops_per_image, matmul_rate, sync  # noqa: E402
from hired import DecodeOptions  # noqa: E402
from hired.decode import BATCH_BUCKETS  # noqa: E402
from hired.models import adapter_for  # noqa: E402
from hired.vision import encode  # noqa: E402

LOOPS = {
    "dynamic": DecodeOptions(cache="dynamic", compile=False),
    "static": DecodeOptions(cache="static", compile=False, sync_every=8),
    "static-compiled": DecodeOptions(cache="static", compile=True, sync_every=8),
}
CONFIGS = {"hired-20": hired.HiREDConfig(budget=0.2), "full": None}
COMPILE_RESERVE_S = 120  # a compiled step for the 7B model takes up to about this long to build
RUN_RESERVE_S = 25  # the least time left at which another (config, batch) is started


class Probe:
    """The report, saved after every phase."""

    def __init__(self, out: Path, budget_s: float):
        self.started = time.perf_counter()
        self.deadline = self.started + budget_s
        self.path = out / "device_probe.json"
        out.mkdir(parents=True, exist_ok=True)
        self.report: dict = {"phases_done": [], "runs": []}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def save(self, phase: str | None = None) -> None:
        if phase:
            self.report["phases_done"].append(phase)
        self.report["elapsed_s"] = time.perf_counter() - self.started
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.report, indent=1, default=str))
        tmp.replace(self.path)


def peak_bytes(device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def items_for(processor, count: int, size: int) -> list[dict]:
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image in detail."}]}],
        add_generation_prompt=True,
    )
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        picture = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        inputs = processor(images=[picture], text=[prompt], return_tensors="np")
        out.append({k: inputs[k][0] for k in ("input_ids", "pixel_values", "image_sizes")})
    return out


def batch_inputs(items: list[dict], batch: int, dtype) -> dict:
    chosen = [items[i % len(items)] for i in range(batch)]
    return {"input_ids": [torch.as_tensor(it["input_ids"], dtype=torch.long) for it in chosen],
            "pixel_values": [torch.as_tensor(it["pixel_values"]).to(dtype) for it in chosen],
            "image_sizes": [it["image_sizes"].tolist() for it in chosen]}


def item_bytes(model, lengths: hired.ItemLengths, new_tokens: int, dtype_bytes: int) -> int:
    """What one more row costs on the device: its KV cache and its share of prefill's activations."""
    t = model.config.text_config
    head_dim = t.hidden_size // t.num_attention_heads
    kv = 2 * t.num_hidden_layers * t.num_key_value_heads * head_dim * dtype_bytes * (lengths.prompt_tokens + new_tokens)
    prefill = lengths.prompt_tokens * (4 * t.hidden_size + 3 * t.intermediate_size) * dtype_bytes
    return kv + prefill


def largest_batch(model, lengths, new_tokens, dtype_bytes, device, cap: int) -> int:
    if device.type != "cuda":
        return cap
    free, _ = torch.cuda.mem_get_info(device)
    fits = int(0.85 * free // item_bytes(model, lengths, new_tokens, dtype_bytes))
    buckets = [b for b in BATCH_BUCKETS if b <= min(fits, cap)]
    return buckets[-1] if buckets else max(1, min(fits, cap))


def timed(device, fn):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def measure_loop(probe, model, processor, prepared, loop: str, new_tokens: int, device) -> dict:
    options = LOOPS[loop]
    if options.compile and device.type != "cuda":
        return {"skipped": "compiling is off on a CPU (a minute or more a shape)"}
    if options.compile and probe.left() < COMPILE_RESERVE_S:
        return {"skipped": f"{probe.left():.0f} s left, under the {COMPILE_RESERVE_S} s a compile may take"}
    reset_peak(device)
    decoder = hired.Decoder(model, processor, options)
    row = {}
    try:
        if options.compile:  # the first call compiles (and captures the CUDA graph)
            _, row["compile_s"] = timed(device, lambda: decoder(prepared, new_tokens, min_new_tokens=new_tokens))
        started = time.perf_counter()
        decoded = decoder(prepared, new_tokens, min_new_tokens=new_tokens, started=started)
        sync(device)
    except torch.OutOfMemoryError as error:
        return {"oom": str(error).splitlines()[0]}
    except Exception as error:  # a compile that fails is a finding, not the end of the probe
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
    finally:
        if options.compile:  # let the compiled graphs (and the cache they hold) go before the next shape
            del decoder
            torch._dynamo.reset()
            decoder = None
    timing = decoded.timing
    steps = max(timing.steps - 1, 1)
    row.update(prefill_ms=1e3 * timing.ttft_s, step_ms=1e3 * (timing.finished - timing.first_token) / steps,
               steps=timing.steps, cache_length=timing.cache_length, rows_computed=timing.batch,
               peak_bytes=peak_bytes(device))
    return row


def measure(probe, model, processor, items, config_name, batch, new_tokens, device, vision_dtype) -> dict:
    config = CONFIGS[config_name]
    row = {"config": config_name, "batch": batch}
    inputs = batch_inputs(items, batch, vision_dtype)
    try:
        reset_peak(device)
        adapter = adapter_for(model)
        pixels = torch.cat([p for p in inputs["pixel_values"]]).to(device)
        needs = [0, adapter.tower.num_layers - 2] if config is not None else []
        _, vision_s = timed(device, lambda: encode(adapter.tower, pixels, [-2], needs))
        pixels = None  # the tower's input is not held while the rest runs
        prepared, prepare_s = timed(device, lambda: hired.prepare_inputs(model, inputs, config))
    except torch.OutOfMemoryError as error:
        row["oom"] = str(error).splitlines()[0]
        return row
    row.update(vision_ms=1e3 * vision_s, prepare_ms=1e3 * prepare_s, selection_ms=1e3 * max(prepare_s - vision_s, 0.0),
               prompt_tokens=max(prepared.prompt_tokens), visual_tokens_llm=prepared.visual_tokens_llm[0])
    row["loops"] = {}
    for loop in LOOPS:
        row["loops"][loop] = measure_loop(probe, model, processor, prepared, loop, new_tokens, device)
        probe.save()
    del prepared
    return row


def floor_per_image(model, row, lengths, rate, bandwidth, weights_bytes, new_tokens, dtype_bytes) -> float:
    """Seconds an image needs at best on this device at this batch size."""
    flops = flops_per_image(model, lengths.visual_tokens_llm, lengths.partitions,
                            lengths.prompt_tokens - lengths.visual_tokens_llm, new_tokens)
    t = model.config.text_config
    kv_token = 2 * t.num_hidden_layers * t.num_key_value_heads * (t.hidden_size // t.num_attention_heads) * dtype_bytes
    read = new_tokens * (weights_bytes / row["batch"] + kv_token * (lengths.prompt_tokens + new_tokens / 2))
    return (flops["vision"] + flops["prefill"]) / rate + max(flops["decode"] / rate, read / bandwidth)


def summarise(probe, model, items, rate, bandwidth, weights_bytes, new_tokens, dtype_bytes) -> list[dict]:
    lines = []
    for row in probe.report["runs"]:
        done = {k: v for k, v in row.get("loops", {}).items() if "step_ms" in v}
        if not done:
            continue
        best = min(done, key=lambda k: done[k]["prefill_ms"] + new_tokens * done[k]["step_ms"])
        seconds = (row["prepare_ms"] + done[best]["prefill_ms"] + new_tokens * done[best]["step_ms"]) / 1e3
        lengths = hired.expected_lengths(model, tuple(items[0]["image_sizes"].tolist()), len(items[0]["input_ids"]),
                                         CONFIGS[row["config"]])
        floor = floor_per_image(model, row, lengths, rate, bandwidth, weights_bytes, new_tokens, dtype_bytes)
        lines.append({"config": row["config"], "batch": row["batch"], "best_loop": best,
                      "images_per_s": row["batch"] / seconds, "floor_images_per_s": 1 / floor,
                      "of_floor": (row["batch"] / seconds) * floor})
    return lines


def table(probe) -> str:
    head = (f"{'config':>8} {'batch':>5} | {'vision':>8} {'select':>7} | {'loop':>15} {'prefill':>9} {'step':>8} "
            f"{'peak GiB':>8} | {'img/s':>7} {'floor':>7} {'of floor':>8}")
    lines = [head, "-" * len(head)]
    summary = {(s["config"], s["batch"]): s for s in probe.report.get("summary", [])}
    for row in sorted(probe.report["runs"], key=lambda r: (r["config"], r["batch"])):
        if "oom" in row or "skipped" in row:
            lines.append(f"{row['config']:>8} {row['batch']:>5} | {row.get('oom') and 'OUT OF MEMORY' or row.get('skipped')}")
            continue
        s = summary.get((row["config"], row["batch"]))
        for k, (loop, m) in enumerate(row["loops"].items()):
            first = k == 0
            left = (f"{row['config']:>8} {row['batch']:>5} | {row['vision_ms']:6.1f}ms {row['selection_ms']:5.1f}ms"
                    if first else f"{'':>8} {'':>5} | {'':>8} {'':>7}")
            if "step_ms" in m:
                peak = "-" if m["peak_bytes"] is None else f"{m['peak_bytes'] / 2**30:8.2f}"
                mid = f"{loop:>15} {m['prefill_ms']:7.1f}ms {m['step_ms']:6.2f}ms {peak:>8}"
            else:
                mid = f"{loop:>15} {(m.get('skipped') or m.get('oom') or m.get('error', ''))[:40]}"
            right = ""
            if first and s:
                right = f" | {s['images_per_s']:7.2f} {s['floor_images_per_s']:7.2f} {s['of_floor']:7.0%}"
            lines.append(f"{left} | {mid}{right}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a toy model on the CPU, in seconds (the test suite runs it)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "bench" / "results" / "probe"),
                        help="folder for device_probe.json (default: $OUT)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no work after this many seconds (default 360, so the run ends within 7 minutes; smoke 120)")
    parser.add_argument("--new-tokens", type=int, default=None, help="decode steps a run (default 64; smoke 4)")
    parser.add_argument("--batches", default=None, help="batch sizes; 'max' = the largest that fits (default 16,64,1,max)")
    parser.add_argument("--image-size", type=int, default=672, help="square pictures of this size (672: a 2x2 grid)")
    args = parser.parse_args(argv)

    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype_bytes = torch.finfo(dtype).bits // 8
    new_tokens = args.new_tokens or (4 if args.smoke else 64)
    batches = (args.batches or ("1,2,max" if args.smoke else "16,64,1,max")).split(",")
    probe = Probe(args.out, args.budget_s or (120 if args.smoke else 360))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    probe.report["env"] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "python": platform.python_version(), "smoke": args.smoke, "dtype": str(dtype), "new_tokens": new_tokens,
        "image_size": args.image_size, "memory_bytes": torch.cuda.mem_get_info(device)[1] if device.type == "cuda" else None,
    }
    probe.save("env")
    print(f"device probe on {probe.report['env']['device']} ({'smoke' if args.smoke else 'LLaVA-Next-7B, bf16'})", flush=True)

    rate, bandwidth = matmul_rate(device, dtype), copy_bandwidth(device)
    probe.report["ceilings"] = {"matmul_flops_per_s": rate, "copy_bytes_per_s": bandwidth}
    probe.save("ceilings")
    print(f"matmul {rate / 1e12:.1f} TFLOP/s, copy {bandwidth / 1e9:.0f} GB/s", flush=True)

    (model, processor), build_s = timed(device, lambda: build_model("tiny" if args.smoke else "gpu", device, dtype))
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    probe.report["build"] = {"seconds": build_s, "weights_bytes": weights_bytes}
    probe.save("build")
    print(f"built in {build_s:.1f} s, weights {weights_bytes / 2**30:.2f} GiB", flush=True)

    items = items_for(processor, 4, args.image_size)
    vision_dtype = next(model.model.vision_tower.parameters()).dtype
    size = tuple(items[0]["image_sizes"].tolist())
    with torch.no_grad():
        for config_name in CONFIGS:
            lengths = hired.expected_lengths(model, size, len(items[0]["input_ids"]), CONFIGS[config_name])
            largest = largest_batch(model, lengths, new_tokens, dtype_bytes, device, cap=4 if args.smoke else 1024)
            wanted = list(dict.fromkeys(largest if b == "max" else int(b) for b in batches))
            for batch in wanted:
                if probe.left() < RUN_RESERVE_S:
                    probe.report["runs"].append({"config": config_name, "batch": batch, "skipped": "out of time"})
                    continue
                if batch > largest:
                    probe.report["runs"].append({"config": config_name, "batch": batch,
                                                 "oom": f"does not fit (largest estimated: {largest})"})
                    continue
                row = measure(probe, model, processor, items, config_name, batch, new_tokens, device, vision_dtype)
                probe.report["runs"].append(row)
                probe.save()
                print(f"  {config_name} batch {batch}: done, {probe.left():.0f} s left", flush=True)
    probe.save("runs")
    probe.report["summary"] = summarise(probe, model, items, rate, bandwidth, weights_bytes, new_tokens, dtype_bytes)
    probe.save("summary")
    print()
    print(table(probe))
    print(f"\nwrote {probe.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
