"""A one-file HTML report of a pipeline output: ``python -m pipeline.report OUTPUT_URI -o report.html``.

``data`` reads the output in two passes whose memory does not grow with its rows, ``charts`` draws
the PNGs, ``html`` lays out the page with a Jinja2 template, ``cli`` is the command line.
"""

from .charts import draw_charts
from .cli import build_parser, main
from .data import (
    ChartData,
    FirstPass,
    Output,
    ReportError,
    first_ok_records,
    first_pass,
    generation_seconds_per_item,
    load_output,
    second_pass,
)
from .html import DEFAULT_ERROR_ROWS, DEFAULT_REPORT, DEFAULT_SAMPLE_ROWS, render_report, write_report

__all__ = [
    "DEFAULT_ERROR_ROWS",
    "DEFAULT_REPORT",
    "DEFAULT_SAMPLE_ROWS",
    "ChartData",
    "FirstPass",
    "Output",
    "ReportError",
    "build_parser",
    "draw_charts",
    "first_ok_records",
    "first_pass",
    "generation_seconds_per_item",
    "load_output",
    "main",
    "render_report",
    "second_pass",
    "write_report",
]
