# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv ops test test-fast demo clean-venv env gpu-check browser annotate label-studio

venv: $(STAMP)

# (Re)install when the requirements change. The project itself is not installed: it runs from this checkout
# (targets run from the repository root, the tools as `python -m tools.X`; pytest.ini sets the path), so nothing
# named models/datasets/util/tools lands in site-packages. The kernel is built in place by `make ops` (setup.py can
# install it: see README).
# A new environment first checks the disk (about 6.2 GB at pip's peak) so that a full disk fails at once, saying so.
# No pip cache: it would hold a second copy of the multi-GB wheels.
$(STAMP): requirements.txt
	test -x $(PY) || { $(PYTHON) tools/check_disk_space.py $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --no-cache-dir --upgrade pip setuptools wheel
	$(PY) -m pip install -q --no-cache-dir -r requirements.txt
	touch $(STAMP)

# Compiled deformable-attention backends (optional: everything runs on the pure-PyTorch path without them).
ops: $(STAMP)
	$(PY) -m models.clickpose.ops.build

test: ops browser label-studio
	$(PY) -m pytest -q

# The suite without the tests marked slow (end-to-end training, distributed and benchmark runs), and without
# building the kernel or installing the browser first (the tests that need them skip, saying why).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Headless Chromium + chromedriver from Debian's packages for the annotation tool's browser test. Without apt or
# root this only warns, and that test skips saying why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "[browser] apt-get could not install chromium: the browser test will skip"; \
	else echo "[browser] chromium/chromedriver missing and apt-get unavailable (needs root): the browser test will skip"; fi

# Label Studio for the live ML-backend test (tests/tools/serve/test_label_studio_live.py), in its own environment:
# its pins (Django, pydantic, numpy, ...) would clash with the project's.
label-studio:
	test -x .venv-ls/bin/label-studio || { rm -rf .venv-ls && $(PYTHON) -m venv .venv-ls && \
		.venv-ls/bin/pip install -q --no-cache-dir 'label-studio>=1.20,<2'; }

# Extra demo flags: make demo DEMO_ARGS="--epochs 40" (continues a finished run from its checkpoint).
# The demo runs without the compiled kernel too (pure-PyTorch path, slower): a failed build only warns here.
demo: $(STAMP)
	$(MAKE) --no-print-directory ops || echo "[msda] kernel build failed: the demo continues on the pure-PyTorch path"
	$(PY) -m tools.demo --out demo_output --data data_synthetic $(DEMO_ARGS)

# The annotation tool on the demo's trained model and the synthetic val images (run `make demo` first). A model
# trained for minutes scores its people low, so the initial score threshold is 0.2 (a slider in the page).
# With demo_output/train/checkpoint_quality.pth (python -m tools.train_quality, see docs/annotate.md) the page shows
# the quality head's confidence and predicted visibility.
ANNOTATE_PORT ?= 8765
ANNOTATE_CHECKPOINT ?= $(if $(wildcard demo_output/train/checkpoint_quality.pth),demo_output/train/checkpoint_quality.pth,demo_output/train/checkpoint.pth)
annotate: $(STAMP)
	@test -f demo_output/train/checkpoint.pth && test -d data_synthetic/images/val2017 || \
		{ echo "make annotate needs the demo's trained model: run 'make demo' first (it writes demo_output/train/checkpoint.pth and data_synthetic/)"; exit 1; }
	$(PY) -m tools.annotate data_synthetic/images/val2017 --config config/demo.cfg.py \
		--checkpoint $(ANNOTATE_CHECKPOINT) --annotations demo_output/annotations_val2017.json --port $(ANNOTATE_PORT) \
		--threshold 0.2

env: $(STAMP)
	$(PY) -m tools.env_report

# GPU readiness (a few minutes on a GPU; small CPU version without one): builds the CUDA kernel, runs the CUDA tests,
# measures; report in gpu_check/report.md (+ report.json, logs/). Extra flags: make gpu-check GPU_CHECK_ARGS="--budget 600"
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	$(PY) -m tools.gpu_check --out gpu_check $(GPU_CHECK_ARGS)

clean-venv:
	rm -rf $(VENV)
