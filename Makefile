# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv ops test demo clean-venv env gpu-check

venv: $(STAMP)

# (Re)install when the requirements change. The project itself is not installed: it runs from this checkout
# (targets run from the repository root; pytest.ini sets the path), so nothing named models/datasets/util/tools
# lands in site-packages. The kernel is built in place by `make ops` (setup.py can install it: see README).
$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements.txt
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

# GPU readiness (a few minutes on a GPU; small CPU version without one): builds the CUDA kernel, runs the CUDA tests,
# measures; report in gpu_check/report.md (+ report.json, logs/). Extra flags: make gpu-check GPU_CHECK_ARGS="--budget 600"
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	$(PY) tools/gpu_check.py --out gpu_check $(GPU_CHECK_ARGS)

clean-venv:
	rm -rf $(VENV)
