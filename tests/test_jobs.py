"""The job entry points as users run them: from the shell and under `ray job submit` (killed and rerun: tests/test_soak.py)."""


import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from .data import encoded, write_shard
from .servers import free_port, wait_for_http

REPO = Path(__file__).resolve().parent.parent


def job_env(extra=None):
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def caption_cmd(*args):
    return [sys.executable, str(REPO / "jobs" / "caption.py"), *args]


def small_shards(root: Path, shards: int, rows: int) -> Path:
    for s in range(shards):
        write_shard(str(root / f"shard-{s:02d}.parquet"),
                    [{"id": f"{s}-{i}", "image": encoded(60 + 7 * i, 90, seed=s * rows + i)} for i in range(rows)])
    return root


def wrong_settings_cases(tmp_path, tiny_next_path):
    """(arguments, the one line expected on stderr) for settings that cannot work."""
    shards = small_shards(tmp_path / "in", 1, 2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "no-config").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "a-bert").mkdir()
    (tmp_path / "a-bert" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (tmp_path / "broken-config").mkdir()
    (tmp_path / "broken-config" / "config.json").write_text('{"model_type": "llava_next", ')
    good = ["--input", str(shards), "--output", str(tmp_path / "out"), "--model", str(tiny_next_path)]

    def with_(**changes):
        args = list(good)
        for flag, value in changes.items():
            args[args.index("--" + flag) + 1] = value
        return args

    return [
        (with_(model=str(tmp_path / "missing-model")), "missing-model: no such folder"),
        (with_(model=str(tmp_path / "no-config")), "holds no config.json"),
        (with_(model="not a hub id!"), "neither an existing local folder nor a hub id"),
        (with_(model="owner/does-not-exist-offline"), "as a hub id not in the local cache (HF_HUB_OFFLINE is set)"),
        (with_(model=str(tmp_path / "a-bert")), "a 'bert' model; hired runs LLaVA-Next and LLaVA-1.5"),
        (with_(model=str(tmp_path / "broken-config")), "broken-config: cannot read its config: JSONDecodeError"),
        (with_(output=str(tmp_path / "a-file")), "is a file, not a folder"),
        (with_(input=str(tmp_path / "empty")), "holds no .parquet shards"),
        (with_(input=str(tmp_path / "nowhere")), "does not exist"),
        (good + ["--budget", "-3"], "budget '-3' keeps no token: a budget must be positive"),
        (good + ["--budget", "1.5x"], "budget '1.5x' is not a number"),
        (good + ["--budget", "640.0"], "a token count is written without a decimal point"),
        (good + ["--batch-size", "0"], "must be at least 1"),
    ]


def test_wrong_settings_exit_2_with_one_line_before_anything_heavy(tmp_path, tiny_next_path, capsys, monkeypatch):
    """A wrong model, budget, input or output: exit 2 and one line naming it, before Ray starts."""
    import pipeline.cli as cli
    from pipeline.job import run

    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import (already done in this process): set both,
    # or the hub-id case waits on network timeouts instead of failing at once as offline.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(run, "init_ray", lambda *a: pytest.fail("Ray was started"))
    for args, expected in wrong_settings_cases(tmp_path, tiny_next_path):
        try:
            status = cli.main(["caption", *args])
        except SystemExit as exit_:  # argparse's own errors
            status = exit_.code
        err = capsys.readouterr().err
        assert status == 2, (args, err[-2000:])
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("usage:")
                 and not line.startswith(" ")]
        assert len(lines) == 1 and expected in lines[0], (args, err[-2000:])
    assert not (tmp_path / "out").exists()  # a refused run leaves the output as it found it: absent


def test_a_wrong_model_path_from_the_shell_starts_no_ray(tmp_path):
    """As a user runs it: one line, exit 2, no Ray session folder in the job's temp dir."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    small_shards(tmp_path / "in", 1, 2)
    result = subprocess.run(
        caption_cmd("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", str(tmp_path / "nope")),
        capture_output=True, text=True, env=job_env({"TMPDIR": str(temp), "RAY_TMPDIR": str(temp)}), timeout=300,
    )
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if " INFO " not in line] == [
        f"error: --model {tmp_path / 'nope'}: no such folder"
    ]
    assert not list(temp.iterdir()), "something was started or written"


def test_settings_are_checked_without_importing_torch(tmp_path, tiny_next_path):
    """The driver refuses wrong settings, and reads a local checkpoint's type, with neither torch nor
    transformers imported: they cost seconds, and the driver only needs them once the run starts."""
    shards = small_shards(tmp_path / "in", 1, 2)
    (tmp_path / "a-bert").mkdir()
    (tmp_path / "a-bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    probe = (
        "import sys; import pipeline.cli as cli\n"
        "from pipeline.model_check import check_model\n"
        f"check_model({str(tiny_next_path)!r})\n"  # a good local checkpoint passes
        f"status = cli.main(['caption', '--input', {str(shards)!r}, '--output', {str(tmp_path / 'out')!r},"
        f" '--model', {str(tmp_path / 'a-bert')!r}])\n"
        "print(status, sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.stdout.splitlines()[-1:] == ["2 []"], result.stdout + result.stderr[-2000:]
    assert "a 'bert' model" in result.stderr


def test_budget_list_parses_each_budget_once():
    from pipeline.cli.jobs import budget_list

    with pytest.raises(ValueError, match="without a decimal point"):
        budget_list("0.2,2.5")
    assert budget_list("0.1, 0.2,640,20%") == [0.1, 0.2, 640, 0.2]


def test_help_lists_the_exit_statuses():
    result = subprocess.run(caption_cmd("--help"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    text = result.stdout
    for status in ("0  every shard written", "2  the settings or the input cannot work", "3  done, but some shards",
                   "4  stopped part-way"):
        assert status in text


@pytest.fixture
def ray_head(tmp_path, s3_server):
    """A Ray head on loopback, in its own process group, stopped by killing that group. Started after
    the S3 server so that, like a configured cluster, its workers have the storage settings."""
    temp = Path("/tmp") / f"rh{os.getpid()}{free_port()}"  # Ray wants a short socket path
    ports = {"gcs": free_port(), "dashboard": free_port(), "client": free_port(), "agent": free_port()}
    args = ["ray", "start", "--head", "--block", f"--temp-dir={temp}", f"--port={ports['gcs']}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
            f"--ray-client-server-port={ports['client']}", f"--dashboard-agent-listen-port={ports['agent']}",
            "--num-cpus=8", "--include-dashboard=true", "--disable-usage-stats"]
    log = open(tmp_path / "ray-head.log", "wb")
    head = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=job_env(), start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard']}"
    try:
        wait_for_http(f"{address}/api/version", timeout=120, ok=lambda status: status == 200)
        yield address
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
        subprocess.run(["rm", "-rf", str(temp)], check=False)


def test_ray_job_submit(ray_head, tmp_path, tiny_next_path, s3_server, bucket):
    """The nightly command: `ray job submit --working-dir . -- python jobs/caption.py ...` against a real head,
    reading from and writing to the S3 server with the standard AWS settings."""
    import s3fs

    for s in range(2):
        write_shard(f"{bucket}/in/{s}.parquet",
                    [{"id": f"{s}-{i}", "image": encoded(80, 120, seed=i)} for i in range(3)])
    submit = ["ray", "job", "submit", "--address", ray_head, "--working-dir", str(REPO),
              "--submission-id", f"caption-{tmp_path.name}", "--",
              "python", "jobs/caption.py", "--input", f"{bucket}/in", "--output", f"{bucket}/out",
              "--model", str(tiny_next_path), "--num-gpus", "0", "--max-new-tokens", "3"]
    result = subprocess.run(submit, capture_output=True, text=True, env=job_env(), timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout + result.stderr
    assert "items 6  ok 6  errors 0" in result.stdout
    assert "progress: 2/2 shards written (0 already complete), 6/6 rows (100%)" in result.stdout  # ray job logs
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for s in range(2):
        with fs.open(f"{bucket}/out/{s}.parquet".removeprefix("s3://"), "rb") as f:
            assert pq.read_table(f).column("id").to_pylist() == [f"{s}-{i}" for i in range(3)]
    # The secret key never shows up in what the job printed.
    assert s3_server.env["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr


@pytest.mark.parametrize("configured, expected", [(None, 0), ("10", 10)])
def test_a_private_ray_runs_its_workers_at_normal_priority(tmp_path, configured, expected):
    """Ray starts workers at nice 15; the job's private Ray runs them at 0, unless the user set Ray's
    own RAY_worker_niceness. Measured in a worker of a Ray the job's code starts."""
    probe = ("import os, ray\nfrom pipeline.job.ray_setup import init_ray\ninit_ray()\n"
             "print('nice', ray.get(ray.remote(lambda: os.nice(0)).remote()))\nray.shutdown()\n")
    env = {k: v for k, v in job_env({"RAY_TMPDIR": f"/tmp/rn{os.getpid()}"}).items() if k not in ("RAY_ADDRESS", "RAY_worker_niceness")}
    if configured is not None:
        env["RAY_worker_niceness"] = configured
    try:
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=REPO,
                                timeout=300)
    finally:
        subprocess.run(["rm", "-rf", env["RAY_TMPDIR"]], check=False)
    assert f"nice {expected}" in result.stdout.splitlines(), result.stdout + result.stderr[-2000:]


def test_every_environment_knob_is_read_once_into_the_settings(tmp_path, tiny_next_path):
    """The environment variables a job reads reach the settings at the edge, and a bad value is a
    one-line refusal naming the variable."""
    from pipeline.cli import build_parser
    from pipeline.cli.base import settings_from_args
    from pipeline.errors import InputError

    args = build_parser().parse_args(["caption", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                                      "--model", str(tiny_next_path)])
    environ = {"HIRED_IO_RETRY_SECONDS": "7", "HIRED_CPU_THREADS": "3", "HIRED_PREPROCESS_NICENESS": "0",
               "HIRED_PROGRESS_SECONDS": "5", "RAY_ADDRESS": "127.0.0.1:6379"}
    settings = settings_from_args(args, "caption", environ)
    assert (settings.io_retry_s, settings.cpu_threads, settings.preprocess_niceness) == (7.0, 3, 0)
    assert settings.progress_s == 5.0 and settings.prune is False
    pruning = build_parser().parse_args(["caption", "--prune", "--input", str(tmp_path), "--model", "m"])
    assert settings_from_args(pruning, "caption", {}).prune is True
    assert settings.ray_address == "127.0.0.1:6379"
    assert settings.input.retry.window_s == settings.output.retry.window_s == 7.0  # the locations' policy too
    flagged = build_parser().parse_args(["caption", "--ray-address", "auto", "--input", str(tmp_path)])
    assert settings_from_args(flagged, "caption", environ).ray_address == "auto"  # a flag wins over the variable
    with pytest.raises(InputError, match="^HIRED_CPU_THREADS=many: not an integer: 'many'$"):
        settings_from_args(args, "caption", {"HIRED_CPU_THREADS": "many"})
