"""``python -m tools.annotate ...`` (same as ``python tools/annotate.py ...``)."""
import sys

from tools.annotate.cli import main

sys.exit(main())
