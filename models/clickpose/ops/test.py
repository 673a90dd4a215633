"""The reference's self-test command: ``cd models/clickpose/ops && python test.py``, or from the repository root
``python -m models.clickpose.ops.test``. Lists the available backends and checks each against the pure-PyTorch
reference (forward and the three gradients, fp64 and fp32, plus a fp64 gradcheck); exit status 1 on a failure.
The checks live in :mod:`models.clickpose.ops.testing`."""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script from this folder: import from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from models.clickpose.ops.testing import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
