"""The run report: real output locations (written with the pipeline's own writer and summary), read
back by `python -m pipeline.report`, checked as HTML, as embedded images and in a headless browser."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from pipeline.cli import main as hired_main
from pipeline.columns import output_schema
from pipeline.io.location import Location
from pipeline.io.outputs import Outputs
from pipeline.io.shard import Shard
from pipeline.report import data as report_data
from pipeline.report import first_pass, load_output, second_pass, write_report
from pipeline.summary import summarize, write_summary


def main(argv):
    """``hired report ARGS``."""
    return hired_main(["report", *argv])

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {"model": "tiny", "config": {"budget": 0.2}}
ALL_CHARTS = {"visual-tokens", "ttft", "tokens-per-s", "gpu-memory", "timeline", "errors"}
HOSTILE_ID = "<script>alert(1)</script>"


def result_row(index: int, *, shard: str, run_id: str = "run-1", gpu: bool = False, error: str | None = None,
               vqa: bool = False) -> dict:
    """One output row as the pipeline writes it; batches of 4 share their ttft and decode times."""
    full = 1500 + 97 * (index % 15)
    batch = index // 4
    row = {
        "id": f"item-{index:03d}", "text": None, "error": error, "error_kind": error and error.split(":")[0],
        "visual_tokens_full": None, "visual_tokens_kept": None,
        "prompt_tokens": None, "generated_tokens": None, "ttft_ms": None, "decode_ms": None, "tokens_per_s": None,
        "batch_size": None, "peak_gpu_mem_bytes": None, "device": "cuda:0" if gpu else "cpu", "model": "tiny",
        "strategy": "hired", "budget_fraction": 0.2, "budget_tokens": None, "alpha": 0.5, "run_id": run_id, "source_shard": shard, "row_index": index,
    }
    if error is None:
        ttft, decode, generated = 300.0 + 40 * batch, 900.0 + 25 * batch, 10 + index % 7
        row.update(text=f"a picture number {index}", visual_tokens_full=full, visual_tokens_kept=full // 5,
                   prompt_tokens=full // 5 + 40, generated_tokens=generated, ttft_ms=ttft, decode_ms=decode,
                   tokens_per_s=generated / ((ttft + decode) / 1000), batch_size=4,
                   peak_gpu_mem_bytes=(3 + batch) * 2**30 if gpu else None)
    if vqa:
        answer_ok = error is None and index % 3 == 0
        row.update(question=f"what is in picture {index}?", answers=["cat"] * 10,
                   vqa_accuracy=None if error else (1.0 if answer_ok else 0.0), exact_match=None if error else answer_ok)
        if error is None:
            row["text"] = "cat" if answer_ok else "dog"
    return row


def write_result_shards(output: Path | str, shards: dict[str, list[dict]], *, task: str = "caption") -> str:
    """Each shard's rows as the pipeline's own writer would leave them, under ``output``."""
    uri = str(output)
    for name, rows in shards.items():
        table = pa.Table.from_pylist(rows, schema=output_schema(task))
        source = rows[0]["source_shard"] if rows else f"/in/{name}.parquet"
        shard = Shard(uri=source, name=name, num_rows=len(rows), format="parquet", path=source, plan=(len(rows),))
        Outputs(Location.resolve(uri)).write(shard, table, SETTINGS)
    return uri


def save_summary(output_uri: str, rows: list[dict], task: str = "caption", **extra) -> dict:
    """``_summary.json`` as a finished run writes it, computed by the pipeline's own code."""
    table = pa.Table.from_pylist(rows, schema=output_schema(task))
    generated = sum(r["generated_tokens"] or 0 for r in rows)
    summary = summarize(table, processed_rows=len(rows), processed_generated_tokens=generated, wall_s=12.5,
                        extra={"run_id": "run-1", "task": task, "shards": {"total": 2, "written_this_run": 2,
                               "already_complete": 0, "failed": 0}, "failed_shards": [], **extra})
    write_summary(Location.resolve(output_uri), summary)
    return summary


def caption_output(tmp_path: Path, *, gpu: bool = True, errors: dict[int, str] | None = None, count: int = 30,
                   second_run: str = "run-1") -> tuple[str, list]:
    """Two shards of results; the second written by ``second_run`` (another id: a resumed output)."""
    errors = {5: "undecodable image: truncated", 17: "missing field: no image", 23: "undecodable image: empty"} \
        if errors is None else errors
    first = count // 2
    rows = [result_row(i, shard="/in/a.parquet" if i < first else "/in/b.parquet", gpu=gpu, error=errors.get(i),
                       run_id="run-1" if i < first else second_run) for i in range(count)]
    uri = write_result_shards(tmp_path / "out", {"a": rows[:first], "b": rows[first:]})
    return uri, rows


def render(output_uri: str, tmp_path: Path, **options) -> str:
    report = tmp_path / "report.html"
    write_report(output_uri, str(report), **options)
    assert report.is_file()
    return report.read_text(encoding="utf-8")


def span(page: str, key: str) -> str:
    return re.search(rf'<span id="{key}"[^>]*>([^<]*)</span>', page).group(1)


def figures(page: str) -> dict[str, str]:
    """Each chart's figure element by its key."""
    return dict(re.findall(r'<figure id="chart-([\w-]+)" class="chart">(.*?)</figure>', page, flags=re.S))


def without_images(page: str) -> str:
    """The page less its base64 payloads, which can spell anything."""
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:", page)


def embedded_images(fragment: str) -> list[Image.Image]:
    images = []
    for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', fragment):
        picture = Image.open(io.BytesIO(base64.b64decode(data)))
        picture.load()
        images.append(picture)
    return images


def assert_plausible_chart(picture: Image.Image) -> None:
    assert picture.format == "PNG"
    assert 400 <= picture.width <= 2000 and 100 <= picture.height <= 1500, picture.size
    assert len(picture.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 2  # drawn, not blank


def test_caption_report_states_the_counts_and_draws_every_chart(tmp_path):
    uri, rows = caption_output(tmp_path, second_run="run-2")
    save_summary(uri, rows)
    page = render(uri, tmp_path)

    assert "<th>runs that wrote rows</th><td>2: run-1, run-2</td>" in page
    assert (span(page, "items"), span(page, "ok"), span(page, "errors")) == ("30", "27", "3")
    assert span(page, "duplicate-ids") == "0" and span(page, "failed-shards") == "0"
    ok = [r for r in rows if r["error"] is None]
    kept_fraction = sum(r["visual_tokens_kept"] for r in ok) / sum(r["visual_tokens_full"] for r in ok)
    assert span(page, "kept-fraction") == f"{100 * kept_fraction:.1f}%"  # mean kept over mean full, from the rows
    assert "2.40 images/s" in page  # the last run's wall clock: 30 rows in 12.5 s, from _summary.json
    assert "undecodable image: 2" in page and "missing field: 1" in page

    charts = figures(page)
    assert set(charts) == ALL_CHARTS
    for key, fragment in charts.items():
        images = embedded_images(fragment)
        assert len(images) == 1 and fragment.count("<img") == 1, key
        assert_plausible_chart(images[0])
    assert page.count("<img") == len(ALL_CHARTS)  # nothing else is an image
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained
    assert 'id="vqa"' not in page and "VQA" not in without_images(page)


def test_error_rows_are_listed_with_their_reasons(tmp_path):
    uri, rows = caption_output(tmp_path, errors={i: f"reason-{i % 3}: detail {i}" for i in range(0, 30, 2)})
    page = render(uri, tmp_path, error_rows=4)
    table = re.search(r'<section id="error-rows">(.*?)</section>', page, flags=re.S).group(1)
    assert "first 4 of 15" in table
    assert re.findall(r"<td>(item-\d+)</td>", table) == ["item-000", "item-002", "item-004", "item-006"]
    for i in (0, 2, 4, 6):
        assert f"reason-{i % 3}: detail {i}" in table
    assert "reason-0: 5" in page and "reason-1: 5" in page and "reason-2: 5" in page


def test_strings_from_the_data_are_escaped(tmp_path):
    rows = [result_row(i, shard="/in/a&b.parquet", error="bad <b>image</b>: \"quoted\" $x$ & more" if i == 1 else None)
            for i in range(3)]
    rows[0]["id"] = HOSTILE_ID
    rows[1]["id"] = f"{HOSTILE_ID}-error"
    rows[2]["text"] = '<img src=x onerror="alert(2)">'
    uri = write_result_shards(tmp_path / "out", {"a": rows})
    page = render(uri, tmp_path)

    assert "<script" not in page and "<b>image" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the sample row's id
    assert "&lt;script&gt;alert(1)&lt;/script&gt;-error" in page  # the error row's id
    assert "bad &lt;b&gt;image&lt;/b&gt;: &#34;quoted&#34; $x$ &amp; more" in page
    assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in page
    assert "a&amp;b.parquet" in page
    assert len(embedded_images(figures(page)["errors"])) == 1  # '$x$' drawn as text, not parsed as maths
    # Scripts are refused by the page itself too.
    assert "default-src 'none'" in page


class CellTexts(HTMLParser):
    """The text of each table cell and of the title, entities decoded, as a browser would show it."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.texts: list[str] = []
        self.tags: set[str] = set()
        self._open: list[str] | None = None
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag in ("td", "title"):
            self._open = []

    def handle_endtag(self, tag):
        if tag in ("td", "title") and self._open is not None:
            self.texts.append("".join(self._open))
            self._open = None

    def handle_data(self, data):
        if self._open is not None:
            self._open.append(data)


def test_markup_in_the_data_reaches_the_page_as_text(tmp_path):
    """Every value from the data or the location is escaped by the template engine: ids, captions, error
    reasons, settings, run ids, shard names and reasons, the output's own path."""
    quoted = "\"&'<>"
    rows = [result_row(i, shard=f"/in/{quoted}.parquet", run_id=f"run {quoted}",
                       error=f"undecodable image: {quoted}" if i == 1 else None) for i in range(3)]
    rows[0]["id"], rows[1]["id"] = HOSTILE_ID, quoted
    rows[0]["text"] = f"{HOSTILE_ID} {quoted}"
    for row in rows:
        row["model"], row["strategy"], row["device"] = f"model {quoted}", f"strategy {quoted}", f"cpu {quoted}"
    uri = write_result_shards(tmp_path / f"out {quoted}", {"a": rows})
    save_summary(uri, rows, run_id=f"run {quoted}",
                 failed_shards=[{"shard": f"/in/{quoted}-b.parquet", "reason": f"unreadable Parquet file: {quoted}"}])
    page = render(uri, tmp_path)

    markup = without_images(page)
    assert HOSTILE_ID not in markup and quoted not in markup and "<script" not in markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markup and "&#34;&amp;&#39;&lt;&gt;" in markup
    cells = CellTexts(page)
    assert cells.tags == {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "section", "table",
                          "thead", "tbody", "tr", "th", "td", "span", "figure", "img", "figcaption"}  # nothing injected
    for text in (f"hired run report: {uri}", HOSTILE_ID, quoted, f"{HOSTILE_ID} {quoted}", f"{quoted}.parquet",
                 f"undecodable image: {quoted}", f"model {quoted}", f"cpu {quoted}", f"1: run {quoted}",
                 f"strategy {quoted}; 20%; 0.5", f"/in/{quoted}-b.parquet", f"unreadable Parquet file: {quoted}"):
        assert text in cells.texts, text
    throughput = next(t for t in cells.texts if "images/s" in t)
    assert f"run run {quoted}, wall clock" in throughput
    assert span(page, "failed-shards") == "1"


def test_without_a_summary_file_the_counts_come_from_the_rows(tmp_path):
    uri, rows = caption_output(tmp_path)
    page = render(uri, tmp_path)
    assert (span(page, "items"), span(page, "ok"), span(page, "errors")) == ("30", "27", "3")
    assert "No _summary.json" in page
    assert "unknown (recorded only in _summary.json)" in page  # failed shards are not in the rows
    # Generation throughput from the rows: each batch of 4 counted once, whatever its size.
    batch_s = sum((r["ttft_ms"] + r["decode_ms"]) / 4 for r in rows if r["error"] is None) / 1000
    assert f"{batch_s:,.2f} s summed over batches" in page
    assert set(figures(page)) == ALL_CHARTS


def test_a_summary_that_disagrees_with_the_files_is_pointed_out(tmp_path):
    uri, rows = caption_output(tmp_path)
    save_summary(uri, rows[:10])  # as if shard b were added after the last run
    page = render(uri, tmp_path)
    assert span(page, "items") == "30"
    assert "_summary.json counts 10 items but the result files hold 30" in page


def test_failed_shards_and_duplicate_ids_are_reported(tmp_path):
    uri, rows = caption_output(tmp_path)
    rows_b = [dict(r) for r in rows]
    rows_b[20]["id"] = rows_b[3]["id"]
    shutil.rmtree(tmp_path / "out")
    uri = write_result_shards(tmp_path / "out", {"a": rows_b[:15], "b": rows_b[15:]})
    save_summary(uri, rows_b, failed_shards=[{"shard": "/in/c.parquet", "reason": "unreadable Parquet file: <bad>"}])
    page = render(uri, tmp_path)
    assert span(page, "failed-shards") == "1"
    assert "/in/c.parquet" in page and "unreadable Parquet file: &lt;bad&gt;" in page
    assert span(page, "duplicate-ids") == "1" and "e.g. item-003" in page


def test_cpu_outputs_say_memory_is_not_available(tmp_path):
    uri, rows = caption_output(tmp_path, gpu=False)
    page = render(uri, tmp_path)
    memory = figures(page)["gpu-memory"]
    assert "n/a on CPU" in memory and "<img" not in memory
    assert re.search(r"<th>peak GPU memory</th><td>n/a on CPU</td>", page)
    assert page.count("<img") == len(ALL_CHARTS) - 1


def test_gpu_outputs_state_the_peak_memory(tmp_path):
    uri, rows = caption_output(tmp_path, gpu=True)
    page = render(uri, tmp_path)
    peak = max(r["peak_gpu_mem_bytes"] for r in rows if r["peak_gpu_mem_bytes"])
    assert f"<th>peak GPU memory</th><td>{peak / 2**30:.2f} GiB</td>" in page


def test_an_output_of_errors_only_still_reports(tmp_path):
    uri, rows = caption_output(tmp_path, errors={i: "undecodable image: x" for i in range(30)})
    report = tmp_path / "report.html"
    assert main([uri, "-o", str(report)]) == 0
    page = report.read_text()
    assert (span(page, "items"), span(page, "ok"), span(page, "errors")) == ("30", "0", "30")
    charts = figures(page)
    assert set(charts) == ALL_CHARTS
    for key in ("visual-tokens", "ttft", "tokens-per-s"):
        assert "<img" not in charts[key] and "No ok item to plot." in charts[key]
    for key in ("timeline", "errors"):
        assert_plausible_chart(embedded_images(charts[key])[0])
    assert "No ok rows." in page


def test_charts_of_a_large_output_plot_a_sample_and_count_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(report_data, "MAX_PLOTTED_POINTS", 7)
    errors = {i: "undecodable image: x" for i in range(0, 60, 5)}  # 12 error rows, 48 ok
    uri, rows = caption_output(tmp_path, count=60, errors=errors)
    output = load_output(uri)
    first = first_pass(output, error_rows=3)
    data = second_pass(output, first)
    ok_positions = [i for i, r in enumerate(rows) if r["error"] is None]
    assert (first.ok_count, first.error_count, len(first.first_errors)) == (48, 12, 3)
    # The scatter charts get an even sample, first and last ok item included, in output order.
    assert data.position.size == 7 and list(data.position) == sorted(data.position)
    assert data.position[0] == ok_positions[0] and data.position[-1] == ok_positions[-1]
    assert set(data.position) <= set(ok_positions) and data.error_position.size == 7
    # The histograms and the running total count every ok row, not the sample.
    for key in ("ttft", "tokens-per-s", "gpu-memory"):
        assert data.histograms[key][1].sum() == 48, key
    assert data.cumulative_s[-1] == pytest.approx(first.facts["generation_s"])
    assert data.boundaries == [30]  # where shard b's file starts
    page = render(uri, tmp_path)
    assert "An even sample of 7 of the 48 ok items is plotted." in page
    assert set(figures(page)) == ALL_CHARTS


def test_vqa_report_shows_accuracy_and_exact_match(tmp_path):
    rows = [result_row(i, shard="/in/q.parquet", vqa=True, error="undecodable image: x" if i == 7 else None)
            for i in range(12)]
    uri = write_result_shards(tmp_path / "vqa", {"q": rows}, task="vqa")
    save_summary(uri, rows, task="vqa")
    page = render(uri, tmp_path)
    # Items 0, 3, 6, 9 answer right: 4 of 11 scored.
    assert span(page, "exact-match") == "36.4%" and span(page, "vqa-accuracy") == "36.4%"
    vqa = re.search(r'<section id="vqa">(.*?)</section>', page, flags=re.S).group(1)
    assert_plausible_chart(embedded_images(vqa)[0])
    assert "<th>question</th>" in page and "what is in picture 0?" in page


def test_works_on_s3(bucket, tmp_path):
    rows = [result_row(i, shard="s3://in/a.parquet", error="missing field: x" if i == 2 else None) for i in range(8)]
    uri = write_result_shards(f"{bucket}/out", {"a": rows})
    save_summary(uri, rows)
    page = render(uri, tmp_path)
    assert (span(page, "items"), span(page, "errors")) == ("8", "1")
    assert f"{bucket}/out" in page


def test_file_uris_work(tmp_path):
    uri, rows = caption_output(tmp_path)
    page = render(f"file://{uri}", tmp_path)
    assert span(page, "items") == "30"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.report", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_command_line(tmp_path):
    uri, rows = caption_output(tmp_path)
    done = run_cli(uri, cwd=tmp_path)  # -o defaults to report.html
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "report.html").is_file() and "report.html" in done.stdout

    missing = run_cli(str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.parametrize("layout", ["empty directory", "zero rows", "not a directory"])
def test_an_empty_output_is_a_clear_error(tmp_path, capsys, layout):
    output = tmp_path / "out"
    output.mkdir()
    if layout == "zero rows":
        write_result_shards(output, {"a": []})
    elif layout == "not a directory":
        output = output / "file.txt"
        output.write_text("hello")
    assert main([str(output), "-o", str(tmp_path / "report.html")]) == 2
    message = capsys.readouterr().err
    assert message.startswith("error: ") and str(output) in message and len(message.splitlines()) == 1
    assert not (tmp_path / "report.html").exists()


def test_an_unwritable_report_path_is_a_clear_error(tmp_path, capsys):
    uri, rows = caption_output(tmp_path)
    (tmp_path / "a-file").write_text("in the way")
    assert main([uri, "-o", str(tmp_path / "a-file" / "report.html")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_help_explains_the_flags(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    for flag in ("OUTPUT_URI", "-o PATH", "--error-rows", "--sample-rows", "default: report.html"):
        assert flag in text


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "chromium is not installed: .ci/run installs Debian's chromium (apt-get install -y chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def test_report_renders_in_a_headless_browser(tmp_path):
    browser = chromium()
    uri, rows = caption_output(tmp_path)
    page = tmp_path / "report.html"
    write_report(uri, str(page))
    screenshot = tmp_path / "screenshot.png"
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}", "--window-size=1200,3000",
         page.as_uri()],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, HOME=str(tmp_path)),
    )
    assert done.returncode == 0 and screenshot.is_file(), done.stderr[-2000:]
    picture = Image.open(screenshot).convert("RGB")
    assert picture.size == (1200, 3000)
    colours = picture.getcolors(maxcolors=picture.width * picture.height)  # every colour, with its count
    assert len(colours) > 50  # text and charts drawn, not one blank colour
    # The charts' colours made it to the screen: the bar of the errors chart is red.
    assert any(r > 180 and g < 80 and b < 80 for _, (r, g, b) in colours)
