"""Nightly captioning: `ray job submit --working-dir . -- python jobs/caption.py --input s3://... --output s3://...`
(the same as `hired caption ...`). With no arguments, runs the built-in demo on a local Ray."""

import sys

from pipeline.cli import script

if __name__ == "__main__":
    sys.exit(script("caption"))
