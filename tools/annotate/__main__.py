"""``python -m tools.annotate ...``: the annotation tool (see tools/annotate/cli.py), run from the repository root."""
import sys

from tools.annotate.cli import main

sys.exit(main())
