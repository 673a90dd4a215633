"""Launcher of the annotation tool (the code is the package tools/annotate/; see tools/annotate/cli.py).

    python tools/annotate.py IMAGES --config CFG --checkpoint CKPT [--annotations FILE.json] [--port N]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.annotate.cli import main  # noqa: E402  (the package of the same name wins over this file on import)

if __name__ == "__main__":
    sys.exit(main())
