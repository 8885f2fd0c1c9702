"""The job's settings: built once from the command line, checked before Ray starts, and
handed whole to every stage (``Preprocessor(settings)``, ``Predictor(settings)``)."""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import hired

from .columns import ColumnMap
from .errors import InputError
from .io.images import DEFAULT_MAX_PIXELS

DEFAULT_CAPTION_PROMPT = "Write a short caption for this image."
MODEL_TYPES = ("llava_next", "llava")  # what hired's adapters handle


@dataclass(frozen=True)
class JobSettings:
    task: str = "caption"  # "caption" or "vqa"
    input: str = ""  # URI of the input shards
    output: str = ""  # URI of the output folder
    model: str = ""  # hub id or local folder
    config: hired.HiREDConfig | None = hired.HiREDConfig()  # None: every visual token (the stock model)
    max_new_tokens: int = 64
    batch_size: int | None = None  # items per generation batch; None: sized by GPU memory (CPU: 4)
    gpu_memory_gb: float | None = None  # cap each GPU at this much, to act as a smaller card
    num_gpus: int | None = None  # GPU actors; None: every GPU in the cluster; 0: CPU
    preprocess_workers: int | None = None  # None: half the cluster's CPUs, at most 32
    dtype: str = "auto"
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    default_prompt: str = DEFAULT_CAPTION_PROMPT  # captions: for rows without a prompt
    overwrite: bool = False
    run_id: str = ""
    ray_address: str | None = None  # None: RAY_ADDRESS if set (ray job submit), else a private local Ray
    columns: ColumnMap = field(default_factory=ColumnMap)  # which input column is the id, the image, ...

    def result_settings(self) -> dict:
        """What decides the results: an output made with other values is not resumed into."""
        config = self.config
        return {
            "task": self.task,
            "model": self.model,
            "hired": None if config is None else asdict(config),
            "max_new_tokens": self.max_new_tokens,
            "default_prompt": self.default_prompt if self.task == "caption" else None,
            "columns": asdict(self.columns),
        }


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


# A hub id is "name" or "owner/name": letters, digits, '-', '_', '.', no '--' or '..' (the hub's own rules).
_HUB_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def check_model(model: str) -> None:
    """Refuse a model that cannot load, before Ray and its actors start: a local folder that is
    missing or holds no ``config.json``, a malformed hub id, a config that cannot be read (not
    on the hub, no network and not cached), or a model type hired has no adapter for."""
    path = Path(model).expanduser()
    looks_local = path.exists() or model.startswith(("/", "./", "../", "~")) or model.count("/") > 1
    if looks_local:
        if not path.exists():
            raise InputError(f"--model {model}: no such folder")
        if not path.is_dir():
            raise InputError(f"--model {model}: not a folder (give the checkpoint's folder, which holds config.json)")
        if not (path / "config.json").is_file():
            raise InputError(f"--model {model}: the folder holds no config.json, so it is not a Hugging Face checkpoint")
    elif not _HUB_ID.match(model):
        raise InputError(f"--model {model!r}: neither an existing local folder nor a hub id such as owner/name")
    try:
        model_type = _local_model_type(path) if looks_local else None
        if model_type is None:  # a hub id, or a config that leaves its type to transformers to work out
            from transformers import AutoConfig  # imports torch: seconds, so only when needed

            model_type = AutoConfig.from_pretrained(str(path) if looks_local else model).model_type
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        where = "" if looks_local else " (not a local folder; as a hub id it is neither cached nor reachable)"
        raise InputError(f"--model {model}: cannot read its config{where}: {type(e).__name__}: {first}") from None
    if model_type not in MODEL_TYPES:
        raise InputError(f"--model {model}: a {model_type!r} model; hired runs LLaVA-Next and LLaVA-1.5 "
                         f"({', '.join(MODEL_TYPES)})")


def _local_model_type(folder: Path) -> str | None:
    """The ``model_type`` a checkpoint's ``config.json`` declares (what AutoConfig dispatches on),
    read as JSON: the driver checks a local model without importing transformers and torch."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ValueError("config.json does not hold a JSON object")
    return config.get("model_type")
