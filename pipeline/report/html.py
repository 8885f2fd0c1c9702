"""The report as one HTML page, laid out by ``templates/report.html.j2``.

Jinja2 escapes every value from the data (autoescape on): this module hands the template plain
values and text, never markup. Charts are embedded as base64 PNGs, so the page is one file that can
be mailed, archived next to the output, or opened from object storage.
"""

from __future__ import annotations

import base64
import datetime
import functools

import fsspec
import jinja2
import numpy as np

from hired.budget import describe_budget

from ..benchmarks import BENCHMARKS
from .charts import draw_charts
from .data import Output, ReportError, first_ok_records, first_pass, load_output, second_pass

DEFAULT_REPORT = "report.html"
DEFAULT_ERROR_ROWS = 50
DEFAULT_SAMPLE_ROWS = 10
TEXT_PREVIEW_CHARS = 300
LISTED_VALUES = 5  # settings listed by value; more are counted


def number(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def percent(fraction) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.1f}%"


def gib(value) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f} GiB"


def listing(values: list) -> str:
    if not values:
        return "n/a"
    shown = ", ".join("n/a" if v is None else str(v) for v in values[:LISTED_VALUES])
    return shown + (f" and {len(values) - LISTED_VALUES} more" if len(values) > LISTED_VALUES else "")


def preview(text: str | None) -> str | None:
    return text if text is None or len(text) <= TEXT_PREVIEW_CHARS else text[:TEXT_PREVIEW_CHARS] + "…"


@functools.cache
def environment() -> jinja2.Environment:
    """The template engine: autoescaping, strict about names the template misspells, ``None`` shown as n/a."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.report", "templates"),
        autoescape=jinja2.select_autoescape(("html", "html.j2"), default=True),
        undefined=jinja2.StrictUndefined,
        finalize=lambda value: "n/a" if value is None else value,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(number=number, percent=percent, gib=gib, listing=listing, describe_budget=describe_budget)
    return env


def sample_table(output: Output, limit: int) -> tuple[list[str], list[list]]:
    """The headers and rows of the first ``limit`` ok items' captions or answers."""
    records = first_ok_records(output, limit)
    if output.is_benchmark:
        headers = ["id", "question", "answer", "score"]
        rows = [[r["id"], preview(r.get("question")), preview(r.get("text")), number(r.get("score"), 2)] for r in records]
    elif output.is_vqa:
        headers = ["id", "question", "answer", "references", "VQA accuracy", "exact match"]
        rows = [[r["id"], preview(r.get("question")), preview(r.get("text")),
                 preview(", ".join(r.get("answers") or [])), number(r.get("vqa_accuracy"), 2), r.get("exact_match")]
                for r in records]
    else:
        headers = ["id", "caption", "visual tokens kept / full"]
        rows = [[r["id"], preview(r.get("text")), f"{r.get('visual_tokens_kept')} / {r.get('visual_tokens_full')}"]
                for r in records]
    return headers, rows


def benchmark_section(result: dict | None) -> dict | None:
    """The benchmark's aggregates as the page shows them (keys as ``pipeline.score`` prints them)."""
    if result is None:
        return None
    known = BENCHMARKS.get(result["name"])
    shown = [[key, known.shown(value)] for key, value in (result["aggregates"] or {}).items()] if known else []
    return {**result, "rows": shown, "metric": known.metric if known else None}


def render_report(output: Output, *, error_rows: int = DEFAULT_ERROR_ROWS, sample_rows: int = DEFAULT_SAMPLE_ROWS) -> str:
    """The report as one HTML document."""
    first = first_pass(output, error_rows)
    facts = first.facts
    data = second_pass(output, first)
    charts = {key: None if png is None else base64.b64encode(png).decode("ascii")
              for key, png in draw_charts(facts, data, vqa=output.is_vqa).items()}
    failed = facts["failed_shards"] or []
    return environment().get_template("report.html.j2").render(
        output=output,
        facts=facts,
        first=first,
        charts=charts,
        plotted=int(data.position.size),
        failed_shard_rows=[[f.get("shard"), f.get("reason")] for f in failed if isinstance(f, dict)],
        vqa=(facts.get("vqa") or {"scored": 0, "accuracy": None, "exact_match": None}) if output.is_vqa else None,
        benchmark=benchmark_section(facts.get("benchmark")),
        samples=sample_table(output, sample_rows) if sample_rows > 0 else None,
        made=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


def write_report(output_uri: str, report_path: str = DEFAULT_REPORT, **options) -> str:
    """Read the output at ``output_uri`` and write its report to ``report_path`` (any fsspec URI)."""
    page = render_report(load_output(output_uri), **options)
    try:
        with fsspec.open(report_path, "w", encoding="utf-8") as f:
            f.write(page)
    except Exception as e:
        raise ReportError(f"cannot write {report_path}: {type(e).__name__}: {e}") from None
    return report_path
