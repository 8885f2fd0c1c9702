"""``python -m pipeline.cli``: the same as ``hired``."""

import sys

from . import main

sys.exit(main())
