"""Build the multi-scale deformable attention kernels (optional: the pure-PyTorch path works without them).

From this folder, as the original project:  python setup.py build install
In place, for a repository checkout:         python setup.py build_ext --inplace
(or from the repository root: python -m models.clickpose.ops.build; or install it into the environment with
`pip install --no-build-isolation .` there, whose setup.py builds the same extension from ``kernel_setup_kwargs``)
The installed module is ``clickpose_msda`` (this project's name); nothing else is installed.

The CPU kernel is always built. The CUDA kernel is built when FORCE_CUDA=1, or when a GPU is visible and a CUDA
toolkit is found (FORCE_CUDA=0 disables it); building it needs no GPU. TORCH_CUDA_ARCH_LIST selects the
architectures (e.g. "9.0" or "8.0;8.6;9.0"). The toolkit is found from CUDA_HOME/CUDA_PATH, else from the `nvcc`
on PATH (following wrapper scripts), else /usr/local/cuda.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
EXTENSION_NAME = "clickpose_msda"  # the module's file name, both in place and when installed
# CUDA library headers that torch's CUDA headers may include; pip's nvidia-* packages ship them.
LIBRARY_HEADERS = ("cusparse.h", "cublas_v2.h", "cublasLt.h", "cusolverDn.h")


def _is_toolkit(root: Optional[str]) -> bool:
    return bool(root) and os.path.isfile(os.path.join(root, "bin", "nvcc")) and os.path.isfile(
        os.path.join(root, "include", "cuda_runtime.h"))


def _toolkit_from_nvcc(nvcc: str) -> Optional[str]:
    """nvcc may be a symlink or a wrapper script; ask it where its own binary lives."""
    real = os.path.realpath(nvcc)
    candidates = [os.path.dirname(os.path.dirname(real))]
    try:
        dry = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
        found = re.search(r"_HERE_=(\S+)", dry.stdout + dry.stderr)
        if found:
            candidates.insert(0, os.path.dirname(os.path.realpath(found.group(1).rstrip("/"))))
    except (OSError, subprocess.SubprocessError):
        pass
    return next((c for c in candidates if _is_toolkit(c)), None)


def find_cuda_home() -> Optional[str]:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root and _is_toolkit(root):
            return root
        if root:
            print(f"[msda] ignoring {var}={root}: no bin/nvcc and include/cuda_runtime.h there")
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = _toolkit_from_nvcc(nvcc)
        if root:
            return root
    return "/usr/local/cuda" if _is_toolkit("/usr/local/cuda") else None


def library_header_dirs(cuda_home: str) -> List[str]:
    """Include folders of pip's nvidia-* packages for the CUDA library headers the toolkit lacks."""
    missing = [h for h in LIBRARY_HEADERS if not os.path.isfile(os.path.join(cuda_home, "include", h))]
    dirs: List[str] = []
    for entry in sys.path:
        for include in sorted(glob.glob(os.path.join(entry or ".", "nvidia", "*", "include"))):
            if include not in dirs and any(os.path.isfile(os.path.join(include, h)) for h in missing):
                dirs.append(include)
    still_missing = [h for h in missing if not any(os.path.isfile(os.path.join(d, h)) for d in dirs)]
    if still_missing:
        print(f"[msda] note: {', '.join(still_missing)} not found in {cuda_home}/include nor in pip's nvidia "
              "packages; the build only needs them if torch's headers include them")
    return dirs


def cuda_wanted() -> bool:
    force = os.environ.get("FORCE_CUDA", "").strip()
    if force in ("0", "false", "False"):
        return False
    if force in ("1", "true", "True"):
        return True
    import torch
    return torch.cuda.is_available()


def openmp_flags() -> List[str]:
    if sys.platform.startswith("linux"):
        return ["-fopenmp"]
    if sys.platform == "win32":
        return ["/openmp"]
    return []  # macOS clang: at::parallel_for runs single-threaded without OpenMP


def get_extensions(cuda_home: Optional[str], csrc: str = "csrc"):
    """The extension; ``csrc``: the source folder relative to the directory setup() runs in."""
    sources = [os.path.join(csrc, "bindings.cpp"), os.path.join(csrc, "msda_cpu.cpp")]
    cxx_flags = ["-O3"] + openmp_flags() if sys.platform != "win32" else ["/O2"] + openmp_flags()
    options = dict(include_dirs=[os.path.join(HERE, "csrc")], extra_compile_args={"cxx": cxx_flags},
                   extra_link_args=openmp_flags() if sys.platform.startswith("linux") else [], define_macros=[])
    with_cuda = cuda_wanted()
    if with_cuda and cuda_home is None:
        message = ("no CUDA toolkit found (looked at CUDA_HOME, CUDA_PATH, the nvcc on PATH and /usr/local/cuda); "
                   "install one or set CUDA_HOME to its root")
        if os.environ.get("FORCE_CUDA", "").strip() in ("1", "true", "True"):
            sys.exit(f"[msda] FORCE_CUDA=1 but {message}")
        print(f"[msda] building the CPU kernel only: {message}")
        with_cuda = False
    if with_cuda:
        import torch.utils.cpp_extension as cpp_extension
        extra = library_header_dirs(cuda_home)
        system_includes = [flag for d in extra for flag in ("-isystem", d)]
        options["extra_compile_args"] = {"cxx": cxx_flags + system_includes,
                                         "nvcc": ["-O3", "--expt-relaxed-constexpr"] + system_includes}
        options["define_macros"] = [("MSDA_WITH_CUDA", None)]
        sources.append(os.path.join(csrc, "msda_cuda.cu"))
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "(torch default: visible GPUs, else all supported)")
        print(f"[msda] building CPU + CUDA kernels; CUDA toolkit {cuda_home}; TORCH_CUDA_ARCH_LIST={arch}")
        return [cpp_extension.CUDAExtension(EXTENSION_NAME, sources, **options)]
    from torch.utils.cpp_extension import CppExtension
    print("[msda] building the CPU kernel (set FORCE_CUDA=1 to add the CUDA kernel)")
    return [CppExtension(EXTENSION_NAME, sources, **options)]


def kernel_setup_kwargs(csrc: str = "csrc") -> dict:
    """setup() arguments that build the kernel extension and install nothing else (no packages, no modules)."""
    cuda_home = find_cuda_home()
    if cuda_home:  # before torch.utils.cpp_extension is imported: it guesses from nvcc's folder, wrong for wrappers
        os.environ["CUDA_HOME"] = cuda_home
    try:
        from torch.utils.cpp_extension import BuildExtension
    except ImportError:
        sys.exit("[msda] the kernel is compiled against the installed torch, and torch is not importable here: "
                 "install the requirements first (pip install -r requirements.txt); with pip, build with "
                 "--no-build-isolation so that the build sees that torch")
    return dict(ext_modules=get_extensions(cuda_home, csrc), packages=[], py_modules=[],
                cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)})


def main() -> None:
    from setuptools import setup

    os.chdir(HERE)  # in-place builds land in this folder whatever the caller's working directory
    setup(name=EXTENSION_NAME, version="1.0",
          description="Multi-scale deformable attention kernels (CPU and CUDA) for the Click-Pose reimplementation",
          **kernel_setup_kwargs())


if __name__ == "__main__":
    main()
