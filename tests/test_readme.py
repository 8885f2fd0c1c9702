"""The README's library examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README should show the library in use"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:  # later blocks build on earlier ones, as a reader would run them
        exec(compile(block.replace("/tmp/tiny-llava-next", str(tmp_path / "tiny")), "README.md", "exec"), namespace)
    results = namespace["results"]
    assert [r.visual_tokens_full for r in results] == [2304, 2304]
    assert [r.visual_tokens_kept for r in results] == [460, 460]
    # The batch-sizing example: one caption per pair, in order, HiRED-20% applied.
    assert [c.visual_tokens_kept for c in namespace["captions"]] == [460, 460]
    # Cut by the actor's BatchSizer: each item in exactly one micro-batch.
    sizer, items = namespace["sizer"], namespace["items"]
    assert sorted(i for batch in sizer.micro_batches([lengths for *_, lengths in items]) for i in batch) == [0, 1]
