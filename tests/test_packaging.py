"""Packaging: installing the project puts only its compiled kernel (``clickpose_msda``) into site-packages.

Each test makes a scratch virtual environment that already holds a package named ``datasets`` (a local stand-in for
Hugging Face's), installs a copy of this checkout into it, and shows that the user's ``datasets`` survives and
imports, while the project's code (run from its checkout) and the installed kernel import too.

Speed: the scratch environment has no pip of its own (the test interpreter's site-packages, with pip, setuptools
and torch, is added through a .pth file), and when the kernel is already built in place its library is placed in
the copy's build folder, newer than the sources, so setuptools finds the extension up to date and compiles
nothing (torch's BuildExtension forces a rebuild when it drives ninja, so the builds here see a ``ninja`` that
does not run and use the distutils backend). Each test then takes about 10 s; without an in-place build the kernel
is compiled (one to a few minutes on 2 cores).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.clickpose.ops import _library

REPO = Path(__file__).resolve().parents[1]
GENERIC_NAMES = ("models", "datasets", "util", "tools", "config", "main.py", "engine.py")
FAKE_DATASETS = "the user's own datasets package"
COPY_IGNORE = shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "*.egg-info", "*.so", "demo_output",
                                     "data_synthetic", "gpu_check", "outputs", ".pytest_cache")


def run(python: Path, *args: str, cwd: Path, path_prefix: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = path_prefix + env.get("PATH", "")
    result = subprocess.run([str(python), *args], cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture
def scratch(tmp_path) -> dict:
    """A venv with a 'datasets' package of its own, seeing the test interpreter's packages after its own."""
    env = tmp_path / "venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(env)],
                   check=True, timeout=120)
    python = env / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                    cwd=tmp_path).stdout.strip())
    shared = Path(torch.__file__).resolve().parents[1]  # this interpreter's site-packages: torch, pip, setuptools
    (site / "_shared_packages.pth").write_text(f"{shared}\n")
    (site / "datasets").mkdir()
    (site / "datasets" / "__init__.py").write_text(f"SOURCE = {FAKE_DATASETS!r}\n")
    copy = tmp_path / "checkout"
    shutil.copytree(REPO, copy, ignore=COPY_IGNORE)
    return {"python": python, "site": site, "checkout": copy, "tmp": tmp_path}


def reuse_inplace_kernel(python: Path, setup_dir: Path, tmp: Path) -> str:
    """Put the in-place build where setuptools' build_ext of ``setup_dir`` puts its output, newer than the
    sources, so the build step finds it up to date. Returns the PATH prefix for the build (see the module doc)."""
    built = sorted((REPO / "models" / "clickpose" / "ops").glob(f"{_library.EXTENSION_NAME}.*.so"))
    if not built:
        return ""
    shim = tmp / "no_ninja"
    shim.mkdir(exist_ok=True)
    (shim / "ninja").write_text("#!/bin/sh\nexit 1\n")
    (shim / "ninja").chmod(0o755)
    probe = ("from setuptools.dist import Distribution; b = Distribution().get_command_obj('build'); "
             "b.finalize_options(); print(b.build_platlib)")
    build_lib = setup_dir / run(python, "-c", probe, cwd=setup_dir).stdout.strip()
    build_lib.mkdir(parents=True)
    shutil.copy2(built[0], build_lib / built[0].name)
    os.utime(build_lib / built[0].name)
    return f"{shim}{os.pathsep}"


def assert_only_the_kernel_is_installed(scratch: dict) -> None:
    site, python, checkout = scratch["site"], scratch["python"], scratch["checkout"]
    assert (site / "datasets" / "__init__.py").read_text() == f"SOURCE = {FAKE_DATASETS!r}\n"
    installed = {path.name for path in site.iterdir()} - {"datasets"}  # the user's own, checked above
    assert installed.isdisjoint(GENERIC_NAMES), installed
    assert any(name.startswith(f"{_library.EXTENSION_NAME}.") and name.endswith(".so") for name in installed)
    # Outside the checkout: the user's datasets, and the kernel under this project's name.
    outside = run(python, "-c", "import datasets, torch, clickpose_msda as k; print(datasets.SOURCE); "
                  "print(k.abi_version, k.__file__)", cwd=scratch["tmp"]).stdout.splitlines()
    assert outside[0] == FAKE_DATASETS and outside[1].startswith(f"1 {site}")
    # In the checkout (no in-place kernel there): the project's packages, and the installed kernel is found.
    inside = run(python, "-c", "from datasets.metadata import COCO_KEYPOINTS; import datasets, models, engine; "
                 "from models.clickpose.ops import _library; m, why = _library.load(); "
                 "print(datasets.__file__); print(m.__file__ if m else why)",
                 cwd=checkout).stdout.splitlines()
    assert inside[0] == str(checkout / "datasets" / "__init__.py") and inside[1].startswith(str(site))
    # A tool run as a module from the checkout uses the installed kernel, not a copy of the project in site-packages.
    report = run(python, "-m", "tools.env_report", cwd=checkout).stdout
    assert "deformable attention backends: pytorch, cpu" in report


def test_pip_install_adds_only_the_kernel_and_keeps_the_users_datasets(scratch):
    prefix = reuse_inplace_kernel(scratch["python"], scratch["checkout"], scratch["tmp"])
    run(scratch["python"], "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
        str(scratch["checkout"]), cwd=scratch["tmp"], path_prefix=prefix)
    assert_only_the_kernel_is_installed(scratch)
    record = next(scratch["site"].glob("clickpose-*.dist-info")) / "RECORD"
    files = [line.split(",")[0] for line in record.read_text().splitlines()]
    assert all(f.startswith("clickpose-") or f.startswith(f"{_library.EXTENSION_NAME}.") for f in files), files


def test_the_original_build_install_command_still_works(scratch):
    ops = scratch["checkout"] / "models" / "clickpose" / "ops"
    prefix = reuse_inplace_kernel(scratch["python"], ops, scratch["tmp"])
    run(scratch["python"], "setup.py", "build", "install", cwd=ops, path_prefix=prefix)
    assert_only_the_kernel_is_installed(scratch)


def test_make_installs_requirements_but_not_the_project():
    installs = [line.split("pip install", 1)[1].split() for line in (REPO / "Makefile").read_text().splitlines()
                if "pip install" in line]
    assert installs, "the Makefile's venv step installs nothing"
    for words in installs:
        targets = [w for w in words if not w.startswith("-")]
        assert "." not in targets and "-e" not in words, f"make installs the project: pip install {' '.join(words)}"
