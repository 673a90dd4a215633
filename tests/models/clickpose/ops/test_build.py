"""The build: toolkit discovery, and the CUDA kernel compiling on a machine with nvcc but no GPU."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO

OPS_DIR = REPO / "models" / "clickpose" / "ops"
NVCC = shutil.which("nvcc")
requires_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH: the CUDA kernel cannot be compiled here")


def load_setup():
    spec = importlib.util.spec_from_file_location("msda_setup", OPS_DIR / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # safe: setup() only runs under __main__
    return module


@requires_nvcc
def test_toolkit_found_through_a_wrapper_script(tmp_path, monkeypatch):
    setup = load_setup()
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    real_root = setup.find_cuda_home()
    assert real_root and setup._is_toolkit(real_root)
    wrapper = tmp_path / "bin" / "nvcc"  # like /usr/local/bin/nvcc: a script, its parent is not the toolkit
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {real_root}/bin/nvcc "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    assert os.path.realpath(setup.find_cuda_home()) == os.path.realpath(real_root)


@pytest.mark.slow
@requires_nvcc
def test_cuda_kernel_compiles_without_a_gpu(tmp_path):
    env = dict(os.environ, FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST="9.0", MAX_JOBS="2")
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
                            "--build-temp", str(tmp_path / "tmp")], cwd=OPS_DIR, env=env, capture_output=True,
                           text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    built = list((tmp_path / "lib").glob("clickpose_msda*"))
    assert len(built) == 1
    # Loads (no GPU needed) and reports its CUDA kernel; a fresh process keeps it apart from the in-place build.
    probe = "import torch; import clickpose_msda as m; print(m.with_cuda, m.__file__)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(tmp_path / "lib")))
    assert loaded.stdout.startswith("True " + str(tmp_path)), loaded.stderr
