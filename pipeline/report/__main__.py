"""``python -m pipeline.report OUTPUT_URI -o report.html``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
