"""Side-by-side generation benchmark: stock transformers vs our predictor vs HiRED at 10/20/40%.

    python bench/bench_generation.py --mode cpu          # scaled-down LLaVA-Next, minutes on a laptop CPU
    python bench/bench_generation.py --mode gpu          # LLaVA-Next-7B architecture, random fp16 weights,
                                                         # 672x672 images, GPU capped at 24 GiB (--gpu-memory-gb)

What is compared, in one process, on the same images and prompts:

* ``stock``: what a transformers user writes: ``processor(images, prompts)`` then ``model.generate``;
* ``ours-full``: our pipeline's predictor with every visual token (``config=None``);
* ``hired-10/20/40``: the predictor with HiRED at those budgets (alpha 0.5).

at batch 1, batch 4 and "auto" (the predictor's memory-based micro-batches over all images).
Every run generates exactly ``--new-tokens`` tokens (``min_new_tokens`` = ``max_new_tokens``,
so EOS cannot make one configuration look faster). Times are wall-clock with a device
synchronisation before each reading, after a warm-up, the median of ``--repeats``, taken
round-robin over the configurations so that drift on the machine hits them all alike:

* TTFT: inputs on the device -> first generated token on the host (vision + HiRED + prefill);
* latency: inputs on the device -> last token (per batch, i.e. per image at batch 1);
* throughput: generated tokens / latency; images/s: images / latency;
* peak memory: ``torch.cuda.max_memory_allocated`` (GPU only).

Also timed: the vision stage alone (stock ``get_image_features`` vs our ``prepare_inputs``),
which shows HiRED's selection overhead; and the floors: FLOPs per image over the measured
matmul rate, and for decoding, weight bytes per step over the measured copy bandwidth.
Preprocessing (the processor on CPU) is excluded from every timing and reported separately.

Results: a table on stdout, ``bench/results/generation-<mode>-<device>.json`` and ``.png``.

The ``loops`` section (``--sections loops``) puts the decode loops side by side on the same pruned
inputs: transformers' ``generate`` against ``hired.Decoder`` with a dynamic cache, a static cache,
and (on a GPU, or with ``--loop-variants``) the compiled static step; see bench/generation_loops.py.
It writes ``bench/results/generation-loops-<mode>-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import hired  # noqa: E402
from common import build_model, copy_bandwidth, flops_per_image, matmul_rate, pictures, sync  # noqa: E402
from pipeline.memory import apply_memory_cap  # noqa: E402
from pipeline.settings import JobSettings  # noqa: E402
from pipeline.stages.generate import Predictor  # noqa: E402

GiB = 2**30

CONFIGS = {
    "stock": "stock",
    "ours-full": None,
    "hired-10": hired.HiREDConfig(budget=0.1),
    "hired-20": hired.HiREDConfig(budget=0.2),
    "hired-40": hired.HiREDConfig(budget=0.4),
}


def summarise(samples: list, peak: int | None) -> dict:
    """Medians of ``(ttft_s, total_s, new_tokens, images)`` samples."""
    ttft = statistics.median(s[0] for s in samples)
    total = statistics.median(s[1] for s in samples)
    tokens, images = samples[0][2], samples[0][3]
    return {"ttft_ms": 1e3 * ttft, "latency_ms": 1e3 * total, "tokens_per_s": tokens / total,
            "images_per_s": images / total, "peak_mem_bytes": peak, "new_tokens": tokens, "images": images,
            "samples": len(samples)}


class FirstTokenTimer:
    """A ``generate`` streamer that notes when the first new token reaches the host (``generate``
    hands it each step's tokens copied to the CPU, which waits for the GPU)."""

    def __init__(self):
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        if value.dim() == 1 and self.first_token_at is None:  # 2-D is the prompt, sent first
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def stock_run(model, processor, images, prompt, new_tokens, device):
    inputs = processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)

    def run():
        timer = FirstTokenTimer()
        sync(device)
        start = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, streamer=timer)
        sync(device)
        end = time.perf_counter()
        return timer.first_token_at - start, end - start, (out.shape[1] - inputs["input_ids"].shape[1]) * len(images), len(images)

    return run


def ours_run(predictor, items, micro_batches):
    """Our predictor over ``items`` in the given micro-batches (lists of indices)."""

    def run():
        ttfts, total, tokens = [], 0.0, 0
        for micro in micro_batches:
            rows, _, timing = predictor.generate([items[i] for i in micro])
            ttfts.append(timing.ttft_ms / 1e3)
            total += (timing.ttft_ms + timing.decode_ms) / 1e3
            tokens += sum(len(r.token_ids) for r in rows)
        return statistics.median(ttfts), total, tokens, len(items)

    return run


def vision_stage(model, processor, predictor_items, images, prompt, config, device, repeats):
    """Median time of the vision stage alone: stock get_image_features, or our prepare_inputs."""
    if config == "stock":
        inputs = processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True)
        pixel_values = inputs["pixel_values"].to(device, model.dtype)
        sizes = inputs["image_sizes"].to(device)

        def run():
            with torch.no_grad():
                model.model.get_image_features(pixel_values, sizes)
    else:
        batch = {
            "input_ids": [torch.as_tensor(it["input_ids"], dtype=torch.long) for it in predictor_items],
            "pixel_values": [torch.as_tensor(it["pixel_values"]) for it in predictor_items],
            "image_sizes": [it["image_sizes"].tolist() for it in predictor_items],
        }

        def run():
            hired.prepare_inputs(model, batch, config)

    run()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def floors(row: dict, flops: dict, rate: float, bandwidth: float, weights_bytes: int, new_tokens: int) -> dict:
    """How far a measurement is from what the device could do at best, per image.

    Vision and prefill are matmul-bound: FLOPs / measured matmul rate. Each decoding
    step must read every weight once whatever the batch, so decoding takes at least
    max(its FLOPs / rate, steps x weight bytes / bandwidth / images per batch)."""
    batches = len(row.get("micro_batches", [1]))
    images = row["images"]
    compute_s = flops["total"] / rate
    decode_bytes_s = batches * new_tokens * weights_bytes / bandwidth / images
    floor_s = (flops["vision"] + flops["prefill"]) / rate + max(flops["decode"] / rate, decode_bytes_s)
    measured_s = row["latency_ms"] / 1e3 / images  # latency covers all of the run's batches
    return {
        "compute_floor_ms_per_image": 1e3 * compute_s,
        "decode_bandwidth_floor_ms_per_image": 1e3 * decode_bytes_s,
        "floor_ms_per_image": 1e3 * floor_s,
        "measured_ms_per_image": 1e3 * measured_s,
        "measured_over_floor": measured_s / floor_s,
    }


def run_configs(args, model, processor, items, images, prompt, device, dtype, new_tokens, n_images, rate, bandwidth,
                weights_bytes, device_name, preprocess_ms, slug) -> None:
    """Stock transformers, our predictor and HiRED at each batch setting (``generation-<mode>-<device>``)."""
    # Build every (configuration, batch) run first, then time them round-robin: drift on the
    # machine (other processes, clocks) then falls on every configuration alike.
    planned = []  # (row, run)
    batches = args.batches.split(",")
    for name in args.configs.split(","):
        config = CONFIGS[name]
        predictor = None
        if config != "stock":
            settings = JobSettings(model=name, config=config, max_new_tokens=new_tokens,
                                   dtype=str(dtype).removeprefix("torch."),
                                   gpu_memory_gb=args.gpu_memory_gb if device.type == "cuda" else None)
            predictor = Predictor.with_model(settings, model, processor)
            predictor.min_new_tokens = new_tokens
        lengths = hired.expected_lengths(model, (args.image_size, args.image_size), len(items[0]["input_ids"]),
                                         None if config == "stock" else config)
        flops = flops_per_image(model, lengths.visual_tokens_llm, lengths.partitions,
                                lengths.prompt_tokens - lengths.visual_tokens_llm, new_tokens)
        try:
            vision_ms = vision_stage(model, processor, items[:4], images[:4], prompt, config, device, args.repeats)
        except torch.OutOfMemoryError:
            vision_ms = None
        for batch in batches:
            if batch == "auto" and config == "stock":
                continue  # stock transformers has no batch sizing of its own
            size = n_images if batch == "auto" else int(batch)
            row = {"config": name, "batch": batch, "visual_tokens_llm": lengths.visual_tokens_llm,
                   "prompt_tokens": lengths.prompt_tokens, "vision_stage_ms_4_images": vision_ms,
                   "flops_per_image": flops}
            if config == "stock":
                run = stock_run(model, processor, images[:size], prompt, new_tokens, device)
            else:
                micro = [list(range(size))]
                if batch == "auto" and predictor.batches.sizing:
                    micro = predictor.batches.micro_batches([lengths] * size)
                row["micro_batches"] = [len(m) for m in micro]
                run = ours_run(predictor, items[:size], micro)
            planned.append((row, run))

    samples = {id(row): [] for row, _ in planned}
    peaks = {id(row): None for row, _ in planned}
    for round_ in range(args.repeats + 1):  # round 0 is the warm-up
        for row, run in planned:
            if row.get("oom"):
                continue
            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                sample = run()
                if device.type == "cuda":
                    peaks[id(row)] = max(peaks[id(row)] or 0, torch.cuda.max_memory_allocated(device))
                if round_ > 0:
                    samples[id(row)].append(sample)
            except torch.OutOfMemoryError as e:
                row.update({"oom": True, "error": str(e).splitlines()[0]})
                del e
                torch.cuda.empty_cache()
    results = []
    for row, _ in planned:
        if not row.get("oom"):
            row.update(summarise(samples[id(row)], peaks[id(row)]))
            row.update(floors(row, row["flops_per_image"], rate, bandwidth, weights_bytes, new_tokens))
        results.append(row)
        print(_line(row), flush=True)

    report = {
        "device": device_name, "mode": args.mode, "dtype": str(dtype), "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "gpu_memory_cap_gb": args.gpu_memory_gb if device.type == "cuda" else None,
        "image_size": args.image_size, "new_tokens": new_tokens, "images": n_images, "repeats": args.repeats,
        "weights_bytes": weights_bytes, "matmul_flops_per_s": rate, "copy_bytes_per_s": bandwidth,
        "preprocess_ms_per_image_cpu": preprocess_ms, "results": results,
    }
    print("\n" + ratio_table(report))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"generation-{args.mode}-{slug}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    chart(report, stem.with_suffix(".png"))
    print(f"\nwrote {stem}.json and {stem}.png")


def run_loops(args, model, processor, items, images, prompt, device, dtype, new_tokens, n_images, rate, bandwidth,
              weights_bytes, device_name, preprocess_ms, slug) -> None:
    """transformers' generate against hired.Decoder's variants on the same pruned inputs
    (``generation-loops-<mode>-<device>``; bench/generation_loops.py)."""
    import generation_loops

    configs = {name: CONFIGS[name] for name in args.loop_configs.split(",")}
    variants = args.loop_variants.split(",") if args.loop_variants else (
        ["dynamic", "static", "static-compiled"] if device.type == "cuda" else ["dynamic", "static"])
    auto_batches = None
    if device.type == "cuda":
        def auto_batches(config):
            settings = JobSettings(model="bench", config=config, max_new_tokens=new_tokens, dtype=str(dtype).removeprefix("torch."),
                                   gpu_memory_gb=args.gpu_memory_gb)
            predictor = Predictor.with_model(settings, model, processor)
            lengths = hired.expected_lengths(model, (args.image_size, args.image_size), len(items[0]["input_ids"]), config)
            return predictor.batches.micro_batches([lengths] * len(items))
    print(f"\nloops: {', '.join(['generate', *variants])} on {', '.join(configs)}, batches {args.batches}", flush=True)
    results = generation_loops.compare(model, processor, items, configs, args.batches.split(","), new_tokens,
                                       args.repeats, variants, device, auto_batches)
    print(generation_loops.table(results))
    report = {"device": device_name, "mode": args.mode, "dtype": str(dtype), "torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "threads": torch.get_num_threads(),
              "image_size": args.image_size, "new_tokens": new_tokens, "images": n_images, "repeats": args.repeats,
              "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"generation-loops-{args.mode}-{slug}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path}")


# -- main -------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["cpu", "gpu"], default="gpu" if torch.cuda.is_available() else "cpu",
                        help="gpu: the 7B architecture in fp16; cpu: a scaled-down model in fp32")
    parser.add_argument("--images", type=int, default=None, help="images for the auto-batch run (default: 16 gpu, 8 cpu)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens generated per image (default: 128 gpu, 16 cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up (median)")
    parser.add_argument("--gpu-memory-gb", type=float, default=24.0, help="cap the GPU at this size (a commodity card)")
    parser.add_argument("--image-size", type=int, default=672, help="square images of this size (672: a 2x2 grid)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS))
    parser.add_argument("--batches", default="1,4,auto", help="batch settings to run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--sections", default="configs,loops",
                        help="configs: stock vs predictor vs HiRED; loops: generate vs hired.Decoder's variants")
    parser.add_argument("--loop-configs", default="ours-full,hired-20", help="configs the loops section runs")
    parser.add_argument("--loop-variants", default=None,
                        help="comma-separated of dynamic, static, static-compiled (default: cpu dynamic,static; gpu all)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.mode == "gpu" else "cpu")
    dtype = torch.float16 if args.mode == "gpu" else torch.float32
    n_images = args.images or (16 if args.mode == "gpu" else 8)
    new_tokens = args.new_tokens or (128 if args.mode == "gpu" else 16)
    if device.type == "cuda":
        apply_memory_cap(args.gpu_memory_gb, device)
        device_name = torch.cuda.get_device_name(device)
    else:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        device_name = platform.processor() or platform.machine()
    print(f"building the {args.mode} model on {device_name} ...", flush=True)
    model, processor = build_model(args.mode, device, dtype)
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image in detail."}]}],
        add_generation_prompt=True,
    )
    images = pictures(n_images, args.image_size)
    started = time.perf_counter()
    items = []
    for picture in images:
        inputs = processor(images=[picture], text=[prompt], return_tensors="np")
        items.append({"input_ids": inputs["input_ids"][0], "pixel_values": inputs["pixel_values"][0].astype(np.float32),
                      "image_sizes": inputs["image_sizes"][0]})
    preprocess_ms = 1e3 * (time.perf_counter() - started) / n_images

    rate, bandwidth = matmul_rate(device, dtype), copy_bandwidth(device)
    print(f"matmul {rate / 1e12:.2f} TFLOP/s, copy {bandwidth / 1e9:.1f} GB/s, weights {weights_bytes / GiB:.2f} GiB", flush=True)

    sections = args.sections.split(",")
    slug = "".join(c if c.isalnum() else "-" for c in device_name.lower()).strip("-")
    context = dict(args=args, model=model, processor=processor, items=items, images=images, prompt=prompt, device=device,
                   dtype=dtype, new_tokens=new_tokens, n_images=n_images, rate=rate, bandwidth=bandwidth,
                   weights_bytes=weights_bytes, device_name=device_name, preprocess_ms=preprocess_ms, slug=slug)
    if "configs" in sections:
        run_configs(**context)
    if "loops" in sections:
        run_loops(**context)
    return 0


def _line(row: dict) -> str:
    if row.get("oom"):
        return f"{row['config']:>10} batch {row['batch']:>4}: OUT OF MEMORY"
    mem = "" if row["peak_mem_bytes"] is None else f", peak {row['peak_mem_bytes'] / GiB:.2f} GiB"
    return (f"{row['config']:>10} batch {row['batch']:>4}: TTFT {row['ttft_ms']:8.1f} ms, latency {row['latency_ms']:8.1f} ms, "
            f"{row['tokens_per_s']:7.1f} tok/s, {row['images_per_s']:6.2f} img/s{mem}")


def ratio_table(report: dict) -> str:
    """Each configuration against stock (or ours-full where stock has no such batch), same batch setting."""
    rows = report["results"]
    by = {(r["config"], r["batch"]): r for r in rows}
    lines = [f"{report['device']} ({report['mode']} mode), {report['image_size']}px, {report['new_tokens']} new tokens",
             f"{'config':>10} {'batch':>5} | {'tok/s':>8} {'x base':>7} | {'TTFT ms':>8} {'x base':>7} | "
             f"{'latency':>8} {'x base':>7} | {'peak GiB':>8} {'x base':>7} | {'vis tok':>7} | floor x"]
    for r in rows:
        base = by.get(("stock", r["batch"])) or by.get(("ours-full", r["batch"]))
        if r.get("oom"):
            lines.append(f"{r['config']:>10} {r['batch']:>5} | OUT OF MEMORY")
            continue

        def ratio(key, row=r, ref=base):
            if not ref or ref.get("oom") or ref.get(key) in (None, 0) or row.get(key) is None:
                return "     -"
            return f"{row[key] / ref[key]:6.2f}x"

        peak = "-" if r["peak_mem_bytes"] is None else f"{r['peak_mem_bytes'] / GiB:8.2f}"
        lines.append(
            f"{r['config']:>10} {r['batch']:>5} | {r['tokens_per_s']:8.1f} {ratio('tokens_per_s')} | {r['ttft_ms']:8.1f} "
            f"{ratio('ttft_ms')} | {r['latency_ms']:8.1f} {ratio('latency_ms')} | {peak:>8} {ratio('peak_mem_bytes')} | "
            f"{r['visual_tokens_llm']:7d} | {r['measured_over_floor']:6.1f}"
        )
    return "\n".join(lines)


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if not r.get("oom")]
    metrics = [("tokens_per_s", "generated tokens/s"), ("ttft_ms", "time to first token (ms)"),
               ("latency_ms", "latency per batch (ms)"), ("peak_mem_bytes", "peak GPU memory (GiB)")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4))
    batches = list(dict.fromkeys(r["batch"] for r in report["results"]))
    configs = list(dict.fromkeys(r["config"] for r in report["results"]))
    width = 0.8 / max(1, len(configs))
    for ax, (key, title) in zip(axes, metrics):
        if all(r.get(key) is None for r in rows):
            ax.text(0.5, 0.5, "n/a on CPU" if report["mode"] == "cpu" else "n/a", ha="center", va="center")
            ax.set_title(title)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for k, config in enumerate(configs):
            values = []
            for batch in batches:
                match = [r for r in rows if r["config"] == config and r["batch"] == batch]
                value = match[0].get(key) if match else None
                values.append(0 if value is None else (value / GiB if key == "peak_mem_bytes" else value))
            ax.bar(np.arange(len(batches)) + k * width, values, width, label=config)
        ax.set_xticks(np.arange(len(batches)) + width * (len(configs) - 1) / 2, [f"batch {b}" for b in batches])
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{report['device']}: {report['mode']} mode, {report['image_size']} px, {report['new_tokens']} new tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
