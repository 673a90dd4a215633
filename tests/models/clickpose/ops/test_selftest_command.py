"""The reference's op self-test command, ``cd models/clickpose/ops && python test.py``, runs from that folder."""
from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO

OPS = REPO / "models" / "clickpose" / "ops"


def test_python_test_py_in_the_ops_folder_reports_the_backends():
    done = subprocess.run([sys.executable, "test.py"], cwd=OPS, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "available backends: pytorch" in done.stdout
