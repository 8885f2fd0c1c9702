"""A one-file HTML report of a pipeline output: ``hired report OUTPUT_URI -o report.html``.

``data`` reads the output in two passes whose memory does not grow with its rows, ``charts`` draws
the PNGs, ``html`` lays out the page with a Jinja2 template; the command is ``pipeline.cli.report``.
"""

from .charts import draw_charts
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
    "draw_charts",
    "first_ok_records",
    "first_pass",
    "generation_seconds_per_item",
    "load_output",
    "render_report",
    "second_pass",
    "write_report",
]
