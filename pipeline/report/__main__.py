"""``python -m pipeline.report OUTPUT_URI -o report.html``: the same as ``hired report``."""

import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
