"""util.allocator: glibc's thresholds are set where glibc is the C library."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds exist only in glibc")
def test_keep_freed_memory_takes_effect_with_glibc():
    # in a fresh process: the setting lasts for the process's lifetime
    code = ("import sys; sys.path.insert(0, '.'); from util.allocator import keep_freed_memory; "
            "print(keep_freed_memory())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"
