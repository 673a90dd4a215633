"""Installable project: ``pip install -e .`` (the deformable-attention extension is built by its own step)."""
from setuptools import find_packages, setup

setup(
    name="clickpose",
    version="0.1.0",
    description="Click-Pose (ICCV 2023) neural interactive keypoint detection: training and evaluation framework",
    python_requires=">=3.9",
    packages=find_packages(include=["models", "models.*", "datasets", "datasets.*", "util", "util.*", "tools",
                                    "tools.*"]),
    py_modules=["main", "engine"],
    package_data={"models.clickpose.ops": ["csrc/*", "csrc/**/*"]},
)
