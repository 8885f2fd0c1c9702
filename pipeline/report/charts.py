"""The report's charts: PNG bytes drawn with matplotlib's Agg renderer, so the page embeds them.

Each chart function returns ``None`` when there is nothing to draw; the page then says why instead
of showing a broken image.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from .data import ChartData

MAX_SHARD_LINES = 60  # shard boundaries drawn on the timeline; more would hide the data
MAX_REASON_BARS = 20


def draw_charts(facts: dict, data: ChartData, *, vqa: bool) -> dict[str, bytes | None]:
    """Every chart of the page by its key: PNG bytes, or ``None`` when there is nothing to draw."""
    import matplotlib

    # Strings from the data are drawn as text, never as mathtext (an error reason holding two '$').
    with matplotlib.rc_context({"text.parse_math": False}):
        charts = {
            "visual-tokens": chart_visual_tokens(data, facts["budgets"]),
            "ttft": chart_histogram(data, "ttft", "time to first token (ms)"),
            "tokens-per-s": chart_histogram(data, "tokens-per-s", "generated tokens / s, per item", color="C1"),
            "gpu-memory": chart_histogram(data, "gpu-memory", "peak allocated GPU memory (GiB)", color="C4"),
            "timeline": chart_timeline(data, facts["run_ids"]),
            "errors": chart_errors_by_reason(facts["errors_by_reason"]),
        }
        if vqa:
            charts["vqa-accuracy"] = chart_histogram(data, "vqa-accuracy", "VQA accuracy of the answer", color="C2")
    return charts


def _new_figure(width: float = 8.0, height: float = 3.6):
    # Figure without pyplot: no global backend state, the Agg canvas is attached on savefig.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return figure, figure.add_subplot()


def _whole_numbers(axis) -> None:
    """Counts of items on an axis: no 0.5-item ticks when the counts are small."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")  # ids in scripts DejaVu lacks
        figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _short(text: str, limit: int = 48) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def chart_visual_tokens(data: ChartData, budgets: list) -> bytes | None:
    known = ~(np.isnan(data.full) | np.isnan(data.kept))
    full, kept = data.full[known], data.kept[known]
    if not full.size:
        return None
    figure, axes = _new_figure()
    axes.scatter(full, kept, s=10, alpha=0.6, label="items", zorder=3)
    span = np.linspace(0, full.max() * 1.05, 200)
    axes.plot(span, span, ls=":", color="grey", label="all tokens (stock model)")
    for budget in budgets:
        if isinstance(budget, int):  # a count keeps min(budget, N); a fraction floor(budget * N)
            axes.plot(span, np.minimum(budget, span), color="C3", label=f"budget {budget} tokens")
        else:
            axes.plot(span, np.floor(budget * span), color="C3", label=f"budget {budget:g}: floor({budget:g} N)")
    axes.set_xlabel("visual tokens of the stock model (N)")
    axes.set_ylabel("visual tokens kept")
    axes.set_xlim(0, span[-1])
    axes.set_ylim(0, max(kept.max(), 1) * 1.1 if budgets else span[-1])
    axes.legend(loc="upper left", fontsize="small")
    axes.grid(alpha=0.3)
    return _png(figure)


def chart_histogram(data: ChartData, key: str, xlabel: str, *, color: str = "C0") -> bytes | None:
    if key not in data.histograms or not data.histograms[key][1].sum():
        return None
    edges, counts = data.histograms[key]
    figure, axes = _new_figure(height=3.2)
    axes.hist(edges[:-1], bins=edges, weights=counts, color=color, edgecolor="white")  # bars of the counted bins
    axes.set_xlabel(xlabel)
    axes.set_ylabel("items")
    _whole_numbers(axes.yaxis)
    axes.grid(alpha=0.3, axis="y")
    return _png(figure)


def chart_timeline(data: ChartData, run_names: list) -> bytes | None:
    """Each item's generation cost and the running total, along the output order."""
    figure, axes = _new_figure(height=3.8)
    _plot_item_costs(axes, data, run_names)
    if data.error_position.size:
        axes.plot(data.error_position, np.zeros(data.error_position.size), "|", color="C3", markersize=12,
                  label="error rows")
    boundaries = _mark_shard_boundaries(axes, data.boundaries)
    axes.set_xlabel(f"row in output order (shard files sorted, rows in input order{boundaries})")
    axes.set_ylabel("ms of generation per item")
    axes.set_ylim(bottom=0)
    axes.set_xlim(-0.5, data.rows - 0.5)
    axes.grid(alpha=0.3)
    total = axes.twinx()
    total.step(data.position, data.cumulative_s, where="post", color="black", lw=1.2,
               label="cumulative generation time")
    total.set_ylabel("cumulative generation time (s)")
    total.set_ylim(bottom=0)
    handles, labels = (a + b for a, b in zip(axes.get_legend_handles_labels(), total.get_legend_handles_labels()))
    # Above the plot: inside it would cover points or the cumulative line, wherever it went.
    axes.legend(handles, labels, loc="lower left", bbox_to_anchor=(0, 1.01), ncols=4, fontsize="small", frameon=False)
    return _png(figure)


def _plot_item_costs(axes, data: ChartData, run_names: list, most_runs: int = 8) -> None:
    """The sampled ok items' shares of batch time, one colour per run when several runs wrote the output."""
    milliseconds = data.seconds * 1000
    if len(run_names) <= 1:
        axes.scatter(data.position, milliseconds, s=8, alpha=0.6, label="items (share of batch time)")
        return
    for index, run in enumerate(run_names[:most_runs]):
        mine = data.run == run
        axes.scatter(data.position[mine], milliseconds[mine], s=8, alpha=0.6, color=f"C{index}",
                     label=f"run {_short(run, 32)}")
    others = ~np.isin(data.run, np.asarray(run_names[:most_runs], dtype=object))
    if others.any():
        axes.scatter(data.position[others], milliseconds[others], s=8, alpha=0.6, color="grey", label="other runs")


def _mark_shard_boundaries(axes, starts: list[int]) -> str:
    """Dashed lines where one shard's rows end, if few enough to read; the axis label's mention of them."""
    if not starts or len(starts) > MAX_SHARD_LINES:
        return ""
    for start in starts:
        axes.axvline(start - 0.5, color="grey", lw=0.6, ls="--")
    return "; dashed: shard boundaries"


def chart_errors_by_reason(errors_by_reason: dict) -> bytes | None:
    if not errors_by_reason:
        return None
    reasons = list(errors_by_reason.items())[:MAX_REASON_BARS]
    figure, axes = _new_figure(height=max(1.6, 0.5 + 0.35 * len(reasons)))
    labels = [_short(reason) for reason, _ in reasons][::-1]  # largest at the top
    counts = [count for _, count in reasons][::-1]
    bars = axes.barh(range(len(reasons)), counts, color="C3")
    axes.set_yticks(range(len(reasons)), labels=labels)
    axes.bar_label(bars, padding=3)
    axes.set_xlabel("error rows")
    _whole_numbers(axes.xaxis)
    axes.set_xlim(0, max(counts) * 1.15)
    return _png(figure)
