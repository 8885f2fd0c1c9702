"""Sweeps: the same job under several token-dropping settings, compared in one table.

``jobs/vqa.py --strategy hired,uniform --budget 0.1,0.2,0.4`` runs every combination
(plus ``none``, the stock token count, if asked for) into its own output folder,
``<output>/<strategy>-<budget>/``, each resumable on its own, then writes
``<output>/sweep.json`` and ``<output>/sweep.md``: accuracy and efficiency per
setting, so that a user with real weights and labelled data can choose a budget. With
``--benchmark``, ``sweep.md`` opens with the paper's table shape (the benchmark's aggregates by
setting, the HiRED paper's LLaVA-Next-7B numbers beside them where it gives them) and each
setting's summary in ``sweep.json`` carries the paper's number for it (``sweep_point.paper``).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, replace

import hired

from ..benchmarks import BENCHMARKS, Benchmark, paper
from ..benchmarks.paper import paper_value
from ..io.location import Location
from ..settings import with_run_id


@dataclass(frozen=True)
class SweepPoint:
    strategy: str  # a HiRED strategy, or hired.strategies.STOCK for every token
    budget: float | int | None  # None with "none"
    alpha: float

    @property
    def name(self) -> str:
        return self.strategy if self.strategy == hired.strategies.STOCK else f"{self.strategy}-{self.budget:g}"

    def config(self) -> hired.HiREDConfig | None:
        if self.strategy == hired.strategies.STOCK:
            return None
        return hired.HiREDConfig(budget=self.budget, alpha=self.alpha, strategy=self.strategy)


def sweep_points(strategies: list[str], budgets: list[float | int], alpha: float) -> list[SweepPoint]:
    """Every (strategy, budget) pair; the stock token count once, whatever the budgets."""
    points = []
    for strategy in strategies:
        if strategy == hired.strategies.STOCK:
            points.append(SweepPoint(strategy, None, alpha))
        else:
            points.extend(SweepPoint(strategy, budget, alpha) for budget in budgets)
    for point in points:
        point.config()  # refuse a bad setting before anything runs
    return points


def run_sweep(settings, points: list[SweepPoint], run) -> list[dict]:
    """Run ``settings`` once per point (``run`` is ``run_job``), each into its own folder."""
    settings = with_run_id(settings)
    summaries = []
    for point in points:
        point_settings = replace(settings, output=settings.output.join(point.name), config=point.config(),
                                 run_id=f"{settings.run_id}-{point.name}")
        summary = run(point_settings)
        summary["sweep_point"] = {"name": point.name, "strategy": point.strategy, "budget": point.budget,
                                  "alpha": point.alpha if point.strategy != hired.strategies.STOCK else None}
        if settings.benchmark is not None:
            found = paper_value(settings.benchmark, point.strategy, point.budget, summary["sweep_point"]["alpha"])
            summary["sweep_point"]["paper"] = None if found is None else {"model": paper.MODEL, "key": found[0],
                                                                           "value": found[1]}
        summaries.append(summary)
    return summaries


COLUMNS = [
    ("setting", lambda s: s["sweep_point"]["name"], "{}"),
    ("VQA acc %", lambda s: _pct(s.get("vqa", {}).get("accuracy")), "{:.1f}"),
    ("exact %", lambda s: _pct(s.get("vqa", {}).get("exact_match")), "{:.1f}"),
    ("kept tokens", lambda s: s["mean_visual_tokens_kept"], "{:.0f}"),
    ("of", lambda s: s["mean_visual_tokens_full"], "{:.0f}"),
    ("images/s", lambda s: s["this_run"]["images_per_s"], "{:.2f}"),
    ("tokens/s", lambda s: s["this_run"]["generated_tokens_per_s"], "{:.1f}"),
    ("TTFT ms", lambda s: s["mean_ttft_ms"], "{:.0f}"),
    ("peak GiB", lambda s: None if s["peak_gpu_mem_bytes"] is None else s["peak_gpu_mem_bytes"] / 2**30, "{:.2f}"),
    ("items", lambda s: s["items"], "{}"),
    ("errors", lambda s: s["errors"], "{}"),
]


def _pct(value):
    return None if value is None else 100 * value


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"] + \
        ["| " + " | ".join(row) + " |" for row in rows]


def _benchmark_of(summaries: list[dict]) -> Benchmark | None:
    names = {s["benchmark"]["name"] for s in summaries if s.get("benchmark")}
    return BENCHMARKS.get(names.pop()) if len(names) == 1 else None


def _aggregate(summary: dict, key: str) -> float | None:
    return ((summary.get("benchmark") or {}).get("aggregates") or {}).get(key)


def settings_table(summaries: list[dict], benchmark: Benchmark | None = None) -> list[str]:
    """One row per setting: accuracy, visual tokens, throughput. Throughput is the run's own (a
    resumed run that did nothing has none); accuracy and token counts cover the whole output."""
    columns = list(COLUMNS)
    if benchmark is not None:  # the benchmark's own aggregates in place of the VQAv2-style ones
        unit, scale = (" %", 100) if benchmark.fractions else ("", 1)
        columns[1:3] = [(f"{key}{unit}", lambda s, key=key: None if _aggregate(s, key) is None else scale * _aggregate(s, key),
                         "{:.1f}") for key in benchmark.keys]
    rows = [["n/a" if get(s) is None else fmt.format(get(s)) for _, get, fmt in columns] for s in summaries]
    return _markdown([name for name, _, _ in columns], rows)


def benchmark_table(summaries: list[dict], benchmark: Benchmark) -> list[str]:
    """The paper's table shape: the benchmark's aggregates by (strategy, budget), a setting a
    column, each beside the paper's LLaVA-Next-7B number for that setting where it gives one."""
    header, cells = ["benchmark", "aggregate"], []
    for summary in summaries:
        header.append(summary["sweep_point"]["name"])
        cells.append(("ours", summary))
        if summary["sweep_point"].get("paper"):
            header.append("paper")
            cells.append(("paper", summary))
    rows = []
    for key in benchmark.keys:
        row = [benchmark.name, key]
        for kind, summary in cells:
            if kind == "ours":
                row.append(benchmark.shown(_aggregate(summary, key)).removesuffix("%"))
            else:
                reported = summary["sweep_point"]["paper"]
                row.append(benchmark.shown(reported["value"]).removesuffix("%") if reported["key"] == key else "")
        rows.append(row)
    note = f"{'Percent' if benchmark.fractions else 'Sums of category scores'}, scored as lmms-eval's {benchmark.task} task."
    if any(kind == "paper" for kind, _ in cells):
        note += (f" paper: the HiRED paper (AAAI 2025) for LLaVA-Next-7B ({paper.MODEL}), stock model and HiRED "
                 f"at alpha {paper.ALPHA}" + ("; its POPE number is set beside f1." if benchmark.name == "pope" else "."))
    return _markdown(header, rows) + ["", note]


def sweep_table(summaries: list[dict]) -> str:
    """The sweep as Markdown: for a benchmark, its aggregates by setting beside the paper's first;
    then one row per setting."""
    benchmark = _benchmark_of(summaries)
    lines = [] if benchmark is None else benchmark_table(summaries, benchmark) + [""]
    return "\n".join(lines + settings_table(summaries, benchmark))


def write_sweep(output: Location, summaries: list[dict]) -> str:
    fs, root = output.fs, output.path
    fs.makedirs(root, exist_ok=True)
    with fs.open(posixpath.join(root, "sweep.json"), "w") as f:
        json.dump(summaries, f, indent=2, default=str)
    path = posixpath.join(root, "sweep.md")
    with fs.open(path, "w") as f:
        f.write(sweep_table(summaries) + "\n")
    return fs.unstrip_protocol(path)
