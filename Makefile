# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv ops test demo clean-venv env

venv: $(STAMP)

# (Re)install when requirements or setup.py change.
$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Compiled deformable-attention backends (optional: everything runs on the pure-PyTorch path without them).
ops: $(STAMP)
	$(PY) -m models.clickpose.ops.build

test: ops
	$(PY) -m pytest -q

# The demo runs without the compiled kernel too (pure-PyTorch path, slower): a failed build only warns here.
demo: $(STAMP)
	$(MAKE) --no-print-directory ops || echo "[msda] kernel build failed: the demo continues on the pure-PyTorch path"
	$(PY) tools/demo.py --out demo_output --data data_synthetic

env: $(STAMP)
	$(PY) tools/env_report.py

clean-venv:
	rm -rf $(VENV)
