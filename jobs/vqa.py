"""Large-scale VQA scoring: `ray job submit --working-dir . -- python jobs/vqa.py --input s3://... --output s3://...`.

With no arguments, runs the built-in demo on a local Ray. `--help` explains every flag.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, under `ray job submit --working-dir .`

from pipeline.job.cli import command  # noqa: E402

if __name__ == "__main__":
    sys.exit(command("vqa"))
