"""The README's examples run as written, and its tables list what the code has."""

import re
from pathlib import Path

import pyarrow as pa

from pipeline.columns import output_schema
from pipeline.row_errors import ErrorKind
from pipeline.settings import knobs

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BATCH_SIZING = ROOT / "docs" / "batch-sizing.md"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def section(text: str, heading: str) -> str:
    """The text under ``## heading`` up to the next ``## ``."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def first_cells(markdown: str) -> list[str]:
    """The first cell of every row of the tables in ``markdown`` (header and rule rows left out)."""
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [row.split("|")[1].strip() for row in rows if not row.startswith("| ---")][1:]


def test_readme_and_batch_sizing_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for path in (README, BATCH_SIZING):  # later blocks build on earlier ones, as a reader would run them
        blocks = python_blocks(path)
        assert blocks, f"{path.name} should show the code in use"
        for block in blocks:
            code = block.replace("/tmp/tiny-llava-next", str(tmp_path / "tiny"))
            exec(compile(code, str(path.relative_to(ROOT)), "exec"), namespace)
        if path == README:
            results = namespace["results"]
            assert [r.visual_tokens_full for r in results] == [2304, 2304]
            assert [r.visual_tokens_kept for r in results] == [460, 460]
    # docs/batch-sizing.md's table: LLaVA-Next-7B on 24 GiB, every token against HiRED-20%.
    assert namespace["batch_7b"] == {None: 4, 0.2: 16}
    # The actor's loop: one caption per pair, in order, HiRED-20% applied.
    assert [c.visual_tokens_kept for c in namespace["captions"]] == [460, 460]
    # Cut by the actor's BatchSizer: each item in exactly one micro-batch.
    sizer, items = namespace["sizer"], namespace["items"]
    assert sorted(i for batch in sizer.micro_batches([lengths for *_, lengths in items]) for i in batch) == [0, 1]


def test_readme_knob_table_lists_every_environment_variable_the_jobs_read():
    listed = {cell.strip("`") for cell in first_cells(section(README.read_text(), "Knobs"))}
    assert listed == {meaning.env for _, meaning in knobs() if meaning.env}


def test_readme_output_table_lists_every_output_column():
    listed = {name for cell in first_cells(section(README.read_text(), "Output"))
              for name in re.findall(r"`([a-z_]+)`", cell)}
    every = [output_schema("vqa"), output_schema("caption", prompts=True), output_schema("vqa", benchmark=pa.schema([]))]
    assert listed == {name for schema in every for name in schema.names}


def test_readme_names_every_error_kind():
    text = section(README.read_text(), "Output")
    named = re.search(r"Error kinds, a closed set .*?:(.*?)\.\s", text, flags=re.S).group(1)
    assert set(re.findall(r"`([^`]+)`", named)) == {kind.value for kind in ErrorKind}
