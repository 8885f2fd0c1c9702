"""The run summary: what the output holds (all shards, this run's and earlier ones'),
and how fast this run went."""

from __future__ import annotations

import collections
import json
import math
import posixpath

import pyarrow as pa

from .io.storage import Storage


def _mean(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def error_reason(error: str) -> str:
    """The kind of an error row's reason: its text before the first colon."""
    return error.split(":", 1)[0].strip()


def summarize(
    table: pa.Table | None,
    *,
    processed_rows: int,
    processed_generated_tokens: int,
    wall_s: float,
    extra: dict,
) -> dict:
    """Counts and means over the output table, plus this run's throughput."""
    rows = table.to_pylist() if table is not None else []
    ok = [r for r in rows if r["error"] is None]
    errors = collections.Counter(error_reason(r["error"]) for r in rows if r["error"] is not None)
    ids = collections.Counter(r["id"] for r in rows)
    duplicates = sorted(i for i, count in ids.items() if count > 1)
    peak = [r["peak_gpu_mem_bytes"] for r in ok if r.get("peak_gpu_mem_bytes") is not None]
    mean_kept = _mean([r["visual_tokens_kept"] for r in ok])
    mean_full = _mean([r["visual_tokens_full"] for r in ok])
    summary = {
        **extra,
        "items": len(rows),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "errors_by_reason": dict(errors.most_common()),
        "duplicate_ids": len(duplicates),
        "duplicate_id_examples": duplicates[:20],
        "mean_visual_tokens_kept": mean_kept,
        "mean_visual_tokens_full": mean_full,
        "kept_fraction": (mean_kept / mean_full) if mean_kept is not None and mean_full else None,
        "mean_generated_tokens": _mean([r["generated_tokens"] for r in ok]),
        "mean_ttft_ms": _mean([r["ttft_ms"] for r in ok]),
        "mean_tokens_per_s_per_item": _mean([r["tokens_per_s"] for r in ok]),
        "peak_gpu_mem_bytes": max(peak) if peak else None,
        "this_run": {
            "rows_processed": processed_rows,
            "wall_s": round(wall_s, 3),
            "images_per_s": processed_rows / wall_s if wall_s > 0 else None,
            "generated_tokens_per_s": processed_generated_tokens / wall_s if wall_s > 0 else None,
        },
    }
    if rows and "vqa_accuracy" in rows[0]:
        scored = [r for r in ok if r["vqa_accuracy"] is not None]
        summary["vqa"] = {
            "scored": len(scored),
            "accuracy": _mean([r["vqa_accuracy"] for r in scored]),
            "exact_match": _mean([float(r["exact_match"]) for r in scored]),
        }
    return summary


def write_summary(output_uri: str, summary: dict) -> str:
    """``_summary.json`` beside the output (the latest run) and ``_runs/<run_id>.json`` (history)."""
    where = Storage.at(output_uri)
    fs, root = where.fs, where.path
    text = json.dumps(summary, indent=2, sort_keys=False, default=str)
    fs.makedirs(posixpath.join(root, "_runs"), exist_ok=True)
    with fs.open(posixpath.join(root, "_runs", f"{summary['run_id']}.json"), "w") as f:
        f.write(text)
    path = posixpath.join(root, "_summary.json")
    with fs.open(path, "w") as f:
        f.write(text)
    return fs.unstrip_protocol(path)


def format_summary(summary: dict) -> str:
    """A few readable lines for the end of a job's log."""

    def num(v, fmt="{:.1f}"):
        return "n/a" if v is None else fmt.format(v)

    run = summary["this_run"]
    lines = [
        f"items {summary['items']}  ok {summary['ok']}  errors {summary['errors']}"
        + (f"  ({', '.join(f'{k}: {v}' for k, v in summary['errors_by_reason'].items())})" if summary["errors"] else ""),
        f"this run: {run['rows_processed']} rows in {run['wall_s']:.1f} s = {num(run['images_per_s'], '{:.2f}')} images/s, "
        f"{num(run['generated_tokens_per_s'])} generated tokens/s",
        f"visual tokens: {num(summary['mean_visual_tokens_kept'])} kept of {num(summary['mean_visual_tokens_full'])} "
        f"({num(summary['kept_fraction'] and 100 * summary['kept_fraction'])}%)",
        f"mean time to first token {num(summary['mean_ttft_ms'])} ms; peak GPU memory "
        + ("n/a (CPU)" if summary["peak_gpu_mem_bytes"] is None else f"{summary['peak_gpu_mem_bytes'] / 2**30:.2f} GiB"),
    ]
    if summary.get("duplicate_ids"):
        lines.append(f"duplicate ids: {summary['duplicate_ids']} (kept, not merged), e.g. {summary['duplicate_id_examples'][:5]}")
    if summary.get("failed_shards"):
        lines.append(f"FAILED shards: {len(summary['failed_shards'])}")
        lines += [f"  {f['shard']}: {f['reason']}" for f in summary["failed_shards"]]
    if "vqa" in summary:
        vqa = summary["vqa"]
        lines.append(f"VQA accuracy {num(vqa['accuracy'] and 100 * vqa['accuracy'])}%  exact match "
                     f"{num(vqa['exact_match'] and 100 * vqa['exact_match'])}% over {vqa['scored']} scored items")
    return "\n".join(lines)
