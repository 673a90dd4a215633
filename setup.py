"""Installs this project's compiled deformable-attention kernel (module ``clickpose_msda``) and nothing else.

The code runs from the checkout (``python main.py ...``, ``python tools/...``, ``pytest``; ``make`` targets run
from the repository root): its top-level folders ``models``, ``datasets``, ``util`` and ``tools`` have common names
(Hugging Face's ``datasets`` is one) and are never installed into site-packages, so nothing of the user's
environment is shadowed or overwritten.

    pip install --no-build-isolation .        # the kernel into the active environment (torch must be installed)
    python -m models.clickpose.ops.build       # or build it in place in the checkout (what `make ops` does)
    cd models/clickpose/ops && python setup.py build install   # the original project's command also works

``--no-build-isolation``: the kernel is compiled against the environment's torch, which an isolated build does not
see. FORCE_CUDA, TORCH_CUDA_ARCH_LIST and CUDA_HOME work as described in models/clickpose/ops/setup.py.
"""
import importlib.util
import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL_DIR = os.path.join("models", "clickpose", "ops")


def _kernel_setup_module():
    """models/clickpose/ops/setup.py, loaded alone (importing the package would import the whole model)."""
    spec = importlib.util.spec_from_file_location("clickpose_msda_setup", os.path.join(HERE, KERNEL_DIR, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its setup() only runs under __main__
    return module


if __name__ == "__main__":
    os.chdir(HERE)  # sources are given relative to the repository root
    setup(
        name="clickpose",
        version="0.1.0",
        description="Click-Pose (ICCV 2023) reimplementation: the compiled deformable-attention kernel. The "
                    "framework itself runs from its checkout.",
        python_requires=">=3.9",
        **_kernel_setup_module().kernel_setup_kwargs(csrc=os.path.join(KERNEL_DIR, "csrc")),
    )
