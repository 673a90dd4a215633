"""Config files of config/ for tests, read by the project's loader (util.config.Config)."""
from __future__ import annotations

import argparse
import copy
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "config"
DEFAULTS_CONFIG = "clickpose.cfg.py"  # the reference defaults every other config file builds on


@lru_cache(maxsize=None)
def _config_values(name: str) -> dict:
    from util.config import Config

    return Config.fromfile(CONFIG_DIR / name).to_dict()


def config_values(name: str = DEFAULTS_CONFIG) -> dict:
    """All keys of ``config/<name>`` (its ``_base_`` files merged) as a fresh dict the caller may change."""
    return copy.deepcopy(_config_values(name))


def config_defaults(*keys: str, name: str = DEFAULTS_CONFIG) -> dict:
    """``{key: value}`` of these keys in ``config/<name>`` (the reference defaults by default)."""
    values = _config_values(name)
    return {key: copy.deepcopy(values[key]) for key in keys}


def load_args(name: str = "tiny.cfg.py", **overrides) -> argparse.Namespace:
    """Config file from config/ as an args namespace (as main.py builds it) on the CPU, with overrides."""
    values = config_values(name)
    values.update(device="cpu")
    values.update(overrides)
    return argparse.Namespace(**values)
