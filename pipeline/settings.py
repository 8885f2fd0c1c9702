"""The job's settings: built once from the command line and handed to every stage."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field

import hired

from .columns import ColumnMap
from .io.images import DEFAULT_MAX_PIXELS
from .stages.preprocess import DEFAULT_CAPTION_PROMPT


@dataclass
class JobSettings:
    task: str  # "caption" or "vqa"
    input: str
    output: str
    model: str
    config: hired.HiREDConfig | None = field(default_factory=hired.HiREDConfig)
    max_new_tokens: int = 64
    batch_size: int | None = None  # items per generation batch; None: sized by GPU memory (CPU: 4)
    gpu_memory_gb: float | None = None  # cap each GPU at this much, to act as a smaller card
    num_gpus: int | None = None  # GPU actors; None: every GPU in the cluster; 0: CPU
    preprocess_workers: int | None = None
    dtype: str = "auto"
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    default_prompt: str = DEFAULT_CAPTION_PROMPT
    overwrite: bool = False
    run_id: str = ""
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
        }


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
