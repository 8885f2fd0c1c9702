"""The tables in bench/README.md, made from the results files: nobody copies a number by hand.

    python bench/tables.py            # rewrite the tables in bench/README.md from bench/results/*.json
    python bench/tables.py --check    # exit 1 if a table differs from its results (tests/test_bench_tables.py)

bench/README.md is hand-written around the tables. Each table sits between two markers that name
how to draw it and from which results files, e.g.

    <!-- table pipeline results/pipeline-cpu-x86-64.json -->
    ...made by this script...
    <!-- end table -->

Only the text between the markers is rewritten. Every table says the command that produced its
results, the machine they were measured on and the results file. Every results file must appear
in some table, so a result added without a table is noticed. Plain Python: no torch, no Ray.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Callable

BENCH = Path(__file__).resolve().parent
MARKER = re.compile(r"(<!-- table (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


def number(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine(d: dict) -> str:
    """What a results file records of the machine it ran on, in a few words."""
    box = d["machine"] if isinstance(d.get("machine"), dict) else {}
    cores = d.get("cpus") or box.get("cores") or box.get("cpus")
    arch = (d.get("machine") if isinstance(d.get("machine"), str) else None) or box.get("cpu") or d.get("device")
    words = [f"{cores}-core {arch or ''}".strip() if cores else (arch or "machine not recorded")]
    for key, label in (("torch", "torch"), ("transformers", "transformers"), ("python", "Python")):
        if d.get(key) or box.get(key):
            words.append(f"{label} {d.get(key) or box.get(key)}")
    if "load_average_before" in d:
        words.append(f"load average {d['load_average_before'][0]:.1f} before, {d['load_average_after'][0]:.1f} after")
    elif "load_average" in d:
        words.append(f"load average {d['load_average'][0]:.1f}")
    elif "load_average_at_end" in box:
        words.append(f"load average {box['load_average_at_end'][0]:.1f} at the end")
    elif "load_average_1m" in box:
        words.append(f"load average {box['load_average_1m']:.1f}")
    if d.get("when"):
        words.append(d["when"][:10])
    return ", ".join(words)


def command(script: str, options: list[tuple[str, object]]) -> str:
    parts = ["python", f"bench/{script}"]
    for flag, value in options:
        parts += [flag] if value is True else [flag, str(value)]
    return shlex.join(parts)


def provenance(runs: list[tuple[str, dict, str]]) -> str:
    """One line per results file: the command, the machine, the file."""
    lines = []
    for name, d, cmd in runs:
        lines.append(f"* `{d.get('command') or cmd}`; {machine(d)}; [{name}]({name})")
    return "\n".join(lines)


# --- one renderer per benchmark: (results files) -> markdown --------------------------------------

GENERATION_LABELS = {"stock": "stock transformers", "ours-full": "ours, every token"}


def generation(runs: list[tuple[str, dict]]) -> str:
    out = []
    for name, d in runs:
        cpu = d["mode"] == "cpu"
        options = [("--mode", d["mode"])]
        if d["images"] != (8 if cpu else 16):
            options.append(("--images", d["images"]))
        if d["new_tokens"] != (16 if cpu else 128):
            options.append(("--new-tokens", d["new_tokens"]))
        if d["repeats"] != 3:
            options.append(("--repeats", d["repeats"]))
        if d["image_size"] != 672:
            options.append(("--image-size", d["image_size"]))
        if not cpu and d.get("gpu_memory_cap_gb") not in (None, 24.0):
            options.append(("--gpu-memory-gb", d["gpu_memory_cap_gb"]))
        rows, by = [], {(r["config"], r["batch"]): r for r in d["results"]}
        for r in d["results"]:
            label = GENERATION_LABELS.get(r["config"]) or f"HiRED-{r['config'].removeprefix('hired-')}%"
            batch = r["batch"] if r["batch"] != "auto" else f"auto ({', '.join(map(str, r.get('micro_batches', [])))})"
            if r.get("oom"):
                rows.append([label, batch] + ["out of memory"] + [""] * 8)
                continue
            base = by.get(("stock", r["batch"])) or by.get(("ours-full", r["batch"]))

            def ratio(key, row=r, ref=base):
                if not ref or ref.get("oom") or not ref.get(key) or row.get(key) is None:
                    return "n/a"
                return f"{row[key] / ref[key]:.2f}x"

            peak = "n/a" if r["peak_mem_bytes"] is None else f"{r['peak_mem_bytes'] / 2**30:.2f} GiB"
            rows.append([label, batch, number(r["tokens_per_s"], 1), ratio("tokens_per_s"), f"{r['ttft_ms']:,.0f} ms",
                         ratio("ttft_ms"), f"{r['latency_ms']:,.0f} ms", ratio("latency_ms"), peak,
                         r["visual_tokens_llm"], f"{r['measured_over_floor']:.1f}x"])
        facts = (f"{d['image_size']}x{d['image_size']} pictures, {d['new_tokens']} new tokens an image, median of "
                 f"{d['repeats']} after a warm-up; matmul {d['matmul_flops_per_s'] / 1e9:,.0f} GFLOP/s measured; "
                 f"preprocessing {d['preprocess_ms_per_image_cpu']:.0f} ms an image on the CPU, not timed. "
                 "Ratios are against stock transformers at the same batch (auto: against ours, every token).")
        out += [provenance([(name, d, command("bench_generation.py", options))]), "", facts, "",
                table(["config", "batch", "tokens/s", "x base", "TTFT", "x base", "latency", "x base", "peak memory",
                       "visual tokens", "over floor"], rows)]
    return "\n".join(out)


def pipeline_table(d: dict) -> str:
    """One row per variant and repeat, the bare predictor timed beside it on the same line."""
    rows = []
    for variant in d["settings"]["variants"]:
        for k, repeat in enumerate(d["repeats"]):
            v = repeat["variants"][variant]
            job, bare = v["large_job"], v["bare"]
            rows.append([variant, k, number(bare["images_per_s"]), number(v["images_per_s_difference"]),
                         f"**{number(v['ratio_difference'])}**", number(v["images_per_s_between_blocks"]),
                         f"{number(job['actor_generation_s_per_row'])} / {bare['seconds'] / bare['rows']:.2f}",
                         number(v.get("load_average"))])
    return table(["variant", "repeat", "bare images/s", "steady state images/s (difference)", "ratio",
                  "between blocks images/s", "actor's generation s a row / bare's", "load average"], rows)


def pipeline(runs: list[tuple[str, dict]]) -> str:
    out = []
    for name, d in runs:
        s = d["settings"]
        variants = ",".join(v + (":" + ";".join(f"{k}={x}" for k, x in env.items()) if env else "")
                            for v, env in s["variants"].items())
        options = [("--rows", s["rows"]), ("--shard-rows", s["shard_rows"]), ("--new-tokens", s["new_tokens"]),
                   ("--budget", s["budget"]), ("--repeats", s["repeats"]), ("--variants", variants)]
        medians = "; ".join(f"`{v}` {number((d['variants'][v]['ratio_difference'] or {}).get('median'))}"
                            for v in s["variants"])
        out += [provenance([(name, d, command("bench_pipeline.py", options))]), "", pipeline_table(d), "",
                f"Median ratio of the job's steady state to the bare predictor: {medians}."]
    return "\n".join(out)


def plan(runs: list[tuple[str, dict]]) -> str:
    out = []
    for name, d in runs:
        options = [("--shards", d["shards"]), ("--repeats", d["repeats"])]
        if d.get("baseline"):
            options.append(("--baseline", d["baseline"]))
        fastest = d["seconds"]["parallel"]
        rows = [[config, f"{seconds:.1f} s", f"{d['cpu_s'][config]['planner_cpu_s']:.1f} s",
                 f"{d['cpu_s'][config]['s3_server_cpu_s']:.1f} s", f"{seconds / fastest:.2f}"]
                for config, seconds in d["seconds"].items()]
        out += [provenance([(name, d, command("bench_plan.py", options))]), "",
                f"{d['shards']:,} input shards, complete outputs for {d['outputs']:,} of them, {d['threads']} threads; "
                f"target {d['target_s']:g} s ({'met' if d['meets_target'] else 'missed'}).", "",
                table(["planner", "wall", "planner CPU", "S3 server CPU", "x parallel"], rows)]
    return "\n".join(out)


def driver(runs: list[tuple[str, dict]]) -> str:
    rows, lines = [], []
    for name, d in runs:
        (min_shard, max_shard), (min_block, max_block) = d["shard_rows"], d["block_rows"]
        options = [("--min-shard", min_shard), ("--max-shard", max_shard), ("--min-block", min_block),
                   ("--max-block", max_block), ("--repeats", d["repeats"])]
        if d.get("baseline"):
            options.append(("--baseline", d["baseline"]))
        lines.append((name, d, command("bench_driver.py", options)))
        for collector, per_s in d["rows_per_s"].items():
            per_cpu_s = d["rows_per_cpu_s"][collector]
            rows.append([f"{min_block}-{max_block}", f"{d['rows']:,} in {d['blocks']:,} blocks, {d['shards']} shards",
                         collector, f"{per_s:,.0f}", f"{1e6 / per_cpu_s:.1f}",
                         f"{per_s / d['target_rows_per_s']:.1f}x"])
    return "\n".join([provenance(lines), "", table(
        ["block rows", "result rows", "collector", "rows/s", "CPU us a row", "x the target"], rows)])


def summary(runs: list[tuple[str, dict]]) -> str:
    rows, lines = [], []
    for name, d in runs:
        measured = d["measured"]
        options = [("--rows", d["rows"]), ("--small-rows", d["small_rows"]), ("--files", d["files"])]
        if any(key.startswith("row_by_row") for key in measured):
            options.append(("--row-by-row", True))
        lines.append((name, d, command("bench_summary.py", options)))
        for key, figures in measured.items():
            tool, count = key.split("@")
            verdict = d["verdicts"].get(tool) if int(count) == d["rows"] else None
            target = "" if verdict is None else ", ".join(
                f"{v['target']} {'s' if key == 'wall_s' else 'MiB'} ({'met' if v['ok'] else 'missed'})"
                for key, v in verdict.items())
            rows.append([{"row_by_row_summary": "row by row (every row in Python)"}.get(tool, f"`hired {tool}`"),
                         f"{int(count):,}", d["files"], f"{figures['wall_s']:.1f} s",
                         f"{figures['peak_rss_mib']:,.0f} MiB", target])
        growth = d["verdicts"]["summary_memory_growth_mib"]
        rows.append([f"summary's growth, {d['small_rows']:,} to {d['rows']:,} rows", "", "", "",
                     f"{growth['measured']:.0f} MiB", f"{growth['target']} MiB ({'met' if growth['ok'] else 'missed'})"])
    return "\n".join([provenance(lines), "", table(["command", "rows", "files", "wall", "peak RSS", "target"], rows)])


def read_memory(runs: list[tuple[str, dict]]) -> str:
    rows, lines = [], []
    for name, d in runs:
        lines.append((name, d, command("bench_read_memory.py", [("--rows", d["rows"]), ("--row-bytes", d["row_bytes"]),
                                                               ("--out", f"bench/{name}")])))
        for r in d["results"]:
            rows.append([f"{d['shard_bytes'] / 2**30:.2f} GiB, {d['rows']:,} rows of {d['row_bytes'] / 1000:.0f} kB, "
                         f"{d['row_groups']} row group", r["reader"], r["slices"], f"{r['seconds']:.1f} s",
                         f"{r['peak_rss_growth_mb']:,.0f} MB"])
    return "\n".join([provenance(lines), "", table(["shard", "reader", "slices", "time", "peak memory growth"], rows)])


def tar_inspect(runs: list[tuple[str, dict]]) -> str:
    out = []
    for name, d in runs:
        rows = [[p, f"{d['median_s'][p]:.2f} s", f"{d['ratio_to_download'][p]:.2f}", d["ranged_gets"][p],
                 f"{d['tar_bytes'] / 2**20 / d['median_s'][p]:.0f}"] for p in d["median_s"]]
        out += [provenance([(name, d, command("bench_tar_inspect.py", [("--samples", d["samples"]),
                                                                       ("--repeats", d["repeats"])]))]), "",
                f"A tar of {d['samples']:,} samples, {d['tar_bytes'] / 2**20:.1f} MiB, read in "
                f"{d['read_block_bytes'] / 2**20:.0f} MiB ranges; median of {d['repeats']}.", "",
                table(["pass", "median", "x download", "ranged GETs", "MiB/s"], rows)]
    return "\n".join(out)


LOOP_CONFIGS = {"ours-full": "every token"}


def loops(runs: list[tuple[str, dict]]) -> str:
    """The decode loops side by side: each row against transformers' generate at the same config and batch."""
    out = []
    for name, d in runs:
        variants = list(dict.fromkeys(r["variant"] for r in d["results"]))
        configs = list(dict.fromkeys(r["config"] for r in d["results"]))
        options = [("--mode", d["mode"]), ("--sections", "loops")]
        if configs != ["ours-full", "hired-20"]:
            options.append(("--loop-configs", ",".join(configs)))
        if [v for v in variants if v != "generate"] != ["dynamic", "static"]:
            options.append(("--loop-variants", ",".join(v for v in variants if v != "generate")))
        by = {(r["config"], r["batch"], r["variant"]): r for r in d["results"]}
        rows = []
        for r in d["results"]:
            base = by.get((r["config"], r["batch"], "generate"))
            batch = r["batch"] if r["batch"] != "auto" else f"auto ({', '.join(map(str, r.get('micro_batches', [])))})"
            label = LOOP_CONFIGS.get(r["config"]) or f"HiRED-{r['config'].removeprefix('hired-')}%"
            rows.append([label, batch, r["variant"], number(r["decode_ms"], 1), number(r["tokens_per_s"], 1),
                         number(r["tokens_per_s"] / base["tokens_per_s"]), number(r["total_ms"], 1),
                         number(r["images_per_s"]), number(r["images_per_s"] / base["images_per_s"])])
        facts = (f"{d['images']} pictures of {d['image_size']}x{d['image_size']}, {d['new_tokens']} new tokens a row, "
                 f"median of {d['repeats']} after a warm-up; ratios against transformers' `generate` at the same "
                 "config and batch.")
        out += [provenance([(name, d, command("bench_generation.py", options))]), "", facts, "",
                table(["config", "batch", "loop", "decode ms", "tokens/s", "x generate", "total ms", "images/s",
                       "x generate"], rows)]
    return "\n".join(out)


RENDERERS: dict[str, Callable[[list[tuple[str, dict]]], str]] = {
    "generation": generation,
    "loops": loops,
    "pipeline": pipeline,
    "plan": plan,
    "driver": driver,
    "summary": summary,
    "read-memory": read_memory,
    "tar-inspect": tar_inspect,
}


def render(spec: str, bench: Path = BENCH) -> str:
    kind, *names = spec.split()
    if kind not in RENDERERS:
        raise ValueError(f"unknown table kind {kind!r} (known: {', '.join(RENDERERS)})")
    if not names:
        raise ValueError(f"table {kind!r} names no results file")
    return RENDERERS[kind]([(name, json.loads((bench / name).read_text())) for name in names]) + "\n"


def regenerate(text: str, bench: Path = BENCH) -> str:
    """``text`` with every table drawn again from its results files."""
    return MARKER.sub(lambda m: m.group(1) + render(m.group("spec"), bench) + m.group(4), text)


def unshown(text: str, bench: Path = BENCH) -> list[str]:
    """Results files that no table names."""
    named = {name for m in MARKER.finditer(text) for name in m.group("spec").split()[1:]}
    return sorted(str(p.relative_to(bench)) for p in (bench / "results").glob("*.json")
                  if str(p.relative_to(bench)) not in named)


def problems(bench: Path = BENCH) -> list[str]:
    """Why bench/README.md does not match its results files (empty when it does)."""
    text = (bench / "README.md").read_text()
    found = [f"{name}: shown in no table of bench/README.md" for name in unshown(text, bench)]
    fresh = regenerate(text, bench)
    current = {m.group("spec"): m.group("body") for m in MARKER.finditer(text)}
    for m in MARKER.finditer(fresh):
        if current.get(m.group("spec")) != m.group("body"):
            found.append(f"table '{m.group('spec')}' differs from its results (run python bench/tables.py)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report stale tables and exit 1 instead of rewriting")
    parser.add_argument("--bench", type=Path, default=BENCH, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    readme = args.bench / "README.md"
    if args.check:
        found = problems(args.bench)
        for line in found:
            print(line, file=sys.stderr)
        return 1 if found else 0
    text = readme.read_text()
    readme.write_text(regenerate(text, args.bench))
    missing = unshown(text, args.bench)
    for name in missing:
        print(f"{name}: shown in no table; add a marker for it to {readme}", file=sys.stderr)
    print(f"{readme}: {len(MARKER.findall(text))} tables written")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
