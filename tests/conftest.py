"""Shared fixtures: tiny checkpoints built once per session and loaded with from_pretrained."""

from __future__ import annotations

import os

# Tests make no request outside this machine. img2dataset imports albumentations, which asks the
# network for a newer version of itself on import; huggingface_hub reads HF_HUB_OFFLINE once, at
# its import, so it is set before anything here imports it (a hub id then fails at once instead of
# after network timeouts). Jobs the tests start inherit both.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from hired.tiny import build_tiny_llava, build_tiny_llava_next  # noqa: E402

from .servers import start_s3  # noqa: E402


@pytest.fixture(scope="session")
def tiny_next_path(tmp_path_factory):
    return build_tiny_llava_next(tmp_path_factory.mktemp("tiny-llava-next"))


@pytest.fixture(scope="session")
def tiny_llava_path(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


def _load(path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.set_num_threads(2)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(path)


@pytest.fixture(scope="session")
def tiny_next(tiny_next_path):
    return _load(tiny_next_path)


@pytest.fixture(scope="session")
def tiny_llava(tiny_llava_path):
    return _load(tiny_llava_path)


def noise_image(height: int, width: int, seed: int = 0) -> Image.Image:
    """A random RGB picture: varied content so CLS attention is not uniform."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def chat_prompt(processor, text: str) -> str:
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server on loopback, with the standard AWS settings in this process's environment
    (s3fs, pyarrow and Ray workers started afterwards all read them)."""
    server = start_s3(tmp_path_factory.mktemp("s3"))
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One private local Ray for the session, started after the S3 settings are in the environment."""
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep the cluster on loopback
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def bucket(s3_server, request):
    """A fresh place on S3 per test: s3://hired-tests/<test name>. (One bucket for the session:
    SeaweedFS gives every bucket its own volumes, and a bucket per test runs out of them.)"""
    import s3fs

    name = "".join(c if c.isalnum() else "-" for c in request.node.name.lower()).strip("-")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    if not fs.exists("hired-tests"):
        fs.mkdir("hired-tests")
    if fs.exists(f"hired-tests/{name}"):
        fs.rm(f"hired-tests/{name}", recursive=True)
    return f"s3://hired-tests/{name}"


# Modules whose tests run whole jobs (Ray, actors, a model per actor): tens of seconds each.
JOB_MODULES = {"test_faults", "test_jobs", "test_pipeline_e2e", "test_demo", "test_sweep", "test_benchmark_jobs",
               "test_webdataset", "test_folders", "test_bench", "test_gpus_per_model", "test_formats"}


def pytest_collection_modifyitems(items):
    """The longest tests first (the slow-marked soaks, then whole-job modules): with two workers a
    long test started last leaves the other worker idle until it ends; started first, the short
    ones fill in around it. A stable sort, the same in every worker."""
    def weight(item) -> int:
        if item.get_closest_marker("slow"):
            return 0
        return 1 if item.module.__name__.rsplit(".", 1)[-1] in JOB_MODULES else 2

    items.sort(key=weight)
