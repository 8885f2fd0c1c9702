"""Sweeps: the same job under several token-dropping settings, compared in one table.

``jobs/vqa.py --strategy hired,uniform --budget 0.1,0.2,0.4`` runs every combination
(plus ``none``, the stock token count, if asked for) into its own output folder,
``<output>/<strategy>-<budget>/``, each resumable on its own, then writes
``<output>/sweep.json`` and ``<output>/sweep.md``: accuracy and efficiency per
setting, so that a user with real weights and labelled data can choose a budget.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, replace

import hired

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


def sweep_table(summaries: list[dict]) -> str:
    """A Markdown table, one row per setting. Throughput is the run's own (a resumed run that did
    nothing has none); accuracy and token counts cover the whole output."""
    header = "| " + " | ".join(name for name, _, _ in COLUMNS) + " |"
    lines = [header, "|" + "|".join(" --- " for _ in COLUMNS) + "|"]
    for summary in summaries:
        cells = []
        for _, get, fmt in COLUMNS:
            value = get(summary)
            cells.append("n/a" if value is None else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_sweep(output: Location, summaries: list[dict]) -> str:
    fs, root = output.fs, output.path
    fs.makedirs(root, exist_ok=True)
    with fs.open(posixpath.join(root, "sweep.json"), "w") as f:
        json.dump(summaries, f, indent=2, default=str)
    path = posixpath.join(root, "sweep.md")
    with fs.open(path, "w") as f:
        f.write(sweep_table(summaries) + "\n")
    return fs.unstrip_protocol(path)
