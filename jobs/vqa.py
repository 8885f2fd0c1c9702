"""VQA scoring at scale: `ray job submit --working-dir . -- python jobs/vqa.py --input s3://... --output s3://...`
(the same as `hired vqa ...`; `--benchmark pope` answers and scores as lmms-eval's task does, docs/benchmarks.md).
With no arguments, runs the built-in demo on a local Ray."""

import sys

from pipeline.cli import script

if __name__ == "__main__":
    sys.exit(script("vqa"))
