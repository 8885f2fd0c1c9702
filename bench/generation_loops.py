"""The decode loop side by side: transformers' ``generate`` (the loop hired used to hand its inputs
to) against ``hired.Decoder`` with each piece switched on, on the same pruned inputs.

Used by ``bench/bench_generation.py`` (its ``loops`` section). Variants:

* ``generate``: ``model.generate(**prepared.model_inputs(), do_sample=False)``, DynamicCache, eager;
* ``dynamic``: ``hired.Decoder`` with ``DecodeOptions(cache="dynamic")``;
* ``static``: ``DecodeOptions(cache="static", compile=False)``;
* ``static-compiled``: ``DecodeOptions(cache="static", compile=True)`` (padded buckets), when asked for
  (on a CPU the compile takes about a minute a bucket).

Each run generates exactly ``new_tokens`` tokens a row (EOS barred before, so no variant stops
early). Per (config, batch): ``decode_ms`` is the loop alone, from pruned inputs to tokens on the
host; ``total_ms`` adds ``prepare_inputs`` (vision tower, selection, splice), the same code for
every variant. tokens/s = generated tokens / decode; images/s = images / total. Medians of
``repeats`` after a warm-up round (which also compiles), variants taken round-robin (the fastest
decode is kept too: on a machine shared with other work it is the steadier figure).
"""

from __future__ import annotations

import statistics
import time

import torch

import hired
from hired import DecodeOptions

VARIANTS = {
    "dynamic": DecodeOptions(cache="dynamic", compile=False),
    "static": DecodeOptions(cache="static", compile=False),
    "static-compiled": DecodeOptions(cache="static", compile=True),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(items: list[dict]) -> dict:
    return {
        "input_ids": [torch.as_tensor(it["input_ids"], dtype=torch.long) for it in items],
        "pixel_values": [torch.as_tensor(it["pixel_values"]) for it in items],
        "image_sizes": [it["image_sizes"].tolist() for it in items],
    }


def _runner(model, processor, variant: str, decoder, new_tokens: int, device):
    pad = model.generation_config.pad_token_id

    def run(batches):
        """(prepare seconds, decode seconds, tokens) over ``batches`` of items, one after another."""
        prepare_s = decode_s = 0.0
        tokens = 0
        for items in batches:
            _sync(device)
            start = time.perf_counter()
            prepared = hired.prepare_inputs(model, _inputs(items), batches.config)
            _sync(device)
            mid = time.perf_counter()
            if decoder is None:
                out = model.generate(**prepared.model_inputs(), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     do_sample=False, pad_token_id=pad)
                tokens += out.shape[0] * out.shape[1]
            else:
                rows = decoder(prepared, new_tokens, min_new_tokens=new_tokens).rows
                tokens += sum(len(r.token_ids) for r in rows)
            _sync(device)
            prepare_s += mid - start
            decode_s += time.perf_counter() - mid
        return prepare_s, decode_s, tokens

    return run


class _Batches(list):
    """Micro-batches of items, with the config they are prepared under."""

    def __init__(self, batches, config):
        super().__init__(batches)
        self.config = config


def compare(model, processor, items: list[dict], configs: dict, batches: list[str], new_tokens: int,
            repeats: int, variants: list[str], device: torch.device, auto_batches=None) -> list[dict]:
    """Rows of measurements, one per (config, batch, variant). ``auto_batches(config)``: the micro-batches
    (lists of item indices) "auto" means; default: all items at once."""
    decoders = {v: hired.Decoder(model, processor, VARIANTS[v]) for v in variants}
    planned = []
    for config_name, config in configs.items():
        for batch in batches:
            if batch == "auto":
                groups = auto_batches(config) if auto_batches else [list(range(len(items)))]
            else:
                groups = [list(range(int(batch)))]
            work = _Batches([[items[i] for i in g] for g in groups], config)
            for variant in ["generate", *variants]:
                run = _runner(model, processor, variant, decoders.get(variant), new_tokens, device)
                row = {"config": config_name, "batch": batch, "variant": variant, "images": sum(map(len, groups)),
                       "micro_batches": [len(g) for g in groups]}
                planned.append((row, run, work))
    samples = {id(row): [] for row, _, _ in planned}
    for round_ in range(repeats + 1):  # round 0 warms up (and compiles)
        for row, run, work in planned:
            if row.get("error"):
                continue
            try:
                sample = run(work)
            except Exception as error:  # a compile failure, out of memory: recorded, the rest goes on
                row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                continue
            if round_:
                samples[id(row)].append(sample)
    results = []
    for row, _, _ in planned:
        if not row.get("error"):
            prepare = statistics.median(s[0] for s in samples[id(row)])
            decode = statistics.median(s[1] for s in samples[id(row)])
            tokens = samples[id(row)][0][2]
            row.update({"prepare_ms": 1e3 * prepare, "decode_ms": 1e3 * decode, "total_ms": 1e3 * (prepare + decode),
                        "decode_ms_min": 1e3 * min(s[1] for s in samples[id(row)]),
                        "new_tokens": tokens, "tokens_per_s": tokens / decode, "images_per_s": row["images"] / (prepare + decode),
                        "samples": len(samples[id(row)])})
        results.append(row)
    return results


def table(results: list[dict]) -> str:
    """Each variant against ``generate`` at the same config and batch."""
    base = {(r["config"], r["batch"]): r for r in results if r["variant"] == "generate"}
    lines = [f"{'config':>9} {'batch':>5} {'loop':>15} | {'decode ms':>9} {'tok/s':>8} {'x gen':>6} | "
             f"{'total ms':>9} {'img/s':>6} {'x gen':>6}"]
    for r in results:
        if r.get("error"):
            lines.append(f"{r['config']:>9} {r['batch']:>5} {r['variant']:>15} | {r['error']}")
            continue
        ref = base.get((r["config"], r["batch"]))
        ok = ref is not None and not ref.get("error")
        tok_ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:5.2f}x" if ok else "     -"
        img_ratio = f"{r['images_per_s'] / ref['images_per_s']:5.2f}x" if ok else "     -"
        lines.append(f"{r['config']:>9} {r['batch']:>5} {r['variant']:>15} | {r['decode_ms']:9.1f} {r['tokens_per_s']:8.1f} "
                     f"{tok_ratio} | {r['total_ms']:9.1f} {r['images_per_s']:6.2f} {img_ratio}")
    return "\n".join(lines)
