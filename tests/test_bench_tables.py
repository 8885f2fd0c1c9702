"""bench/README.md's tables are those bench/tables.py draws from bench/results/*.json."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPT = BENCH / "tables.py"


def check(bench: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--bench", str(bench)],
                          capture_output=True, text=True, timeout=120)


def test_bench_readme_is_up_to_date_with_the_results():
    result = check(BENCH)
    assert result.returncode == 0, f"bench/README.md is stale; run python bench/tables.py:\n{result.stderr}"


def test_an_edited_result_a_hand_edited_table_and_an_unshown_result_are_caught(tmp_path):
    bench = tmp_path / "bench"
    shutil.copytree(BENCH / "results", bench / "results")
    shutil.copy(BENCH / "README.md", bench / "README.md")
    assert check(bench).returncode == 0

    # A result edited: the table drawn from it no longer matches.
    path = bench / "results" / "plan-s3-loopback-2000.json"
    original = path.read_text()
    edited = json.loads(original)
    edited["seconds"]["parallel"] = 4.0
    path.write_text(json.dumps(edited))
    result = check(bench)
    assert result.returncode == 1 and "table 'plan results/plan-s3-loopback-2000.json' differs" in result.stderr
    path.write_text(original)

    # A number in a table edited by hand.
    readme = bench / "README.md"
    text = readme.read_text()
    assert "| parallel | 5.3 s |" in text
    readme.write_text(text.replace("| parallel | 5.3 s |", "| parallel | 4.0 s |"))
    result = check(bench)
    assert result.returncode == 1 and "plan-s3-loopback-2000.json" in result.stderr
    readme.write_text(text)

    # A results file that no table shows.
    shutil.copy(path, bench / "results" / "plan-s3-loopback-500.json")
    result = check(bench)
    assert result.returncode == 1 and "results/plan-s3-loopback-500.json: shown in no table" in result.stderr

    # Rewriting puts the tables back from the results; the unshown file is still reported.
    (bench / "results" / "plan-s3-loopback-500.json").unlink()
    readme.write_text(text.replace("| parallel | 5.3 s |", "| parallel | 4.0 s |"))
    subprocess.run([sys.executable, str(SCRIPT), "--bench", str(bench)], check=True, capture_output=True, timeout=120)
    assert readme.read_text() == text


def test_every_table_names_a_command_its_script_accepts():
    commands = re.findall(r"^\* `python bench/(\w+\.py)([^`]*)`", (BENCH / "README.md").read_text(), flags=re.M)
    assert len(commands) >= len(list((BENCH / "results").glob("*.json")))
    for script, options in commands:
        source = (BENCH / script).read_text()
        for flag in re.findall(r"(?<!\S)(--[a-z][a-z-]*)", options):
            assert f'"{flag}"' in source, f"{script} has no {flag}"
