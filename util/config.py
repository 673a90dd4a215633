"""Python config files with ``_base_`` inheritance, and ``--options key=value`` overrides.

A config file is plain Python; its public module-level names are the keys. ``_base_`` (a file name or a list of
them, relative to the file) lists configs to start from: the child's keys win, a key defined by two different
bases is an error, and a dict value with ``_delete_=True`` replaces the base's dict instead of merging into it.

Unlike the reference, values are validated: a key that a config file (with bases) or ``--options`` sets but no base
defines is an error naming the closest known keys; a value must have its default's type (a boolean key only accepts
a boolean, so ``human_feedback=FLASE`` fails instead of becoming a truthy string; an int key an int; a list key a
list; a key whose default is None anything); ``check_ranges`` refuses values outside their valid range.
"""
from __future__ import annotations

import argparse
import ast
import copy
import difflib
import math
import os
import runpy
import types
from pathlib import Path
from typing import Any, Iterable, Mapping

from addict import Dict as AttrDict

from util.errors import ConfigError  # defined beside the CLI's exit codes; re-exported here

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"
# A config file with bases may only set keys its bases define (a misspelt key is an error), unless it sets
# ``_defines_keys_ = True``: then it introduces keys (as clickpose.cfg.py over its augmentation base).
DEFINES_KEY = "_defines_keys_"


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _public_globals(namespace: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: value for key, value in namespace.items()
        if not key.startswith("__") and not isinstance(value, (types.ModuleType, types.FunctionType, type))
    }


def _merge_into(child: Mapping[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``child`` over ``base`` (child wins; ``_delete_`` replaces a dict)."""
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, dict):
            value = dict(value)
            replace = value.pop(DELETE_KEY, False)
            if not replace and isinstance(merged.get(key), dict):
                merged[key] = _merge_into(value, merged[key])
                continue
        merged[key] = copy.deepcopy(value)
    return merged


def _load_file(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in chain:
        raise ConfigError(f"circular _base_ chain: {' -> '.join(str(p) for p in chain + (path,))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix != ".py":
        raise ConfigError(f"config files are Python files (.py): {path}")
    try:
        namespace = runpy.run_path(str(path))
    except Exception as exc:  # syntax errors etc.: name the file
        raise ConfigError(f"could not execute config file {path}: {type(exc).__name__}: {exc}") from exc
    cfg = _public_globals(namespace)
    bases = cfg.pop(BASE_KEY, [])
    defines_keys = bool(cfg.pop(DEFINES_KEY, False))
    if isinstance(bases, str):
        bases = [bases]
    merged_bases: dict[str, Any] = {}
    owner: dict[str, Path] = {}
    for base_name in bases:
        base_path = (path.parent / base_name).resolve()
        base_cfg = _load_file(base_path, chain + (path,))
        for key in base_cfg:
            if key in owner:
                raise ConfigError(f"key '{key}' is defined by two base configs ({owner[key]} and {base_path}) "
                                  f"of {path}; define it in only one")
            owner[key] = base_path
        merged_bases.update(base_cfg)
    if bases:
        _check_against_bases(cfg, merged_bases, path, defines_keys)
    return _merge_into(cfg, merged_bases)


def _check_against_bases(cfg: dict[str, Any], bases: Mapping[str, Any], path: Path, defines_keys: bool) -> None:
    for key, value in cfg.items():
        if key in bases:
            cfg[key] = check_value(key, bases[key], value, source=str(path))
        elif not defines_keys:
            raise ConfigError(f"{path}: key '{key}' is not defined by its base configs.{_closest(key, bases)} "
                              f"(a file that introduces new keys sets {DEFINES_KEY} = True)")


# ---------------------------------------------------------------------------------------------------------------
# Overrides


def _closest(key: str, known: Iterable[str]) -> str:
    matches = difflib.get_close_matches(key, list(known), n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean (true or false)"
    for types_, name in ((int, "an integer"), (float, "a number"), (str, "a string"), ((list, tuple), "a list"),
                         (dict, "a dict")):
        if isinstance(value, types_):
            return name
    return type(value).__name__


def check_value(key: str, default: Any, value: Any, source: str = "--options") -> Any:
    """``value`` if it has the type of ``default`` (an int is a valid float; a default of None takes anything),
    else a one-line ``ConfigError`` naming the key, the expected type and the value."""
    if default is None or type(default) not in (bool, int, float, str, list, tuple, dict):
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{source}: '{key}' must be {_kind(default)} (default {default!r}), got {value!r}")
    return value


def _check_override(path: str, old: Any, new: Any) -> Any:
    if isinstance(old, str) and new is None:
        return "none"  # --options parses 'none' as None; a string key means the word (click_freeze=none)
    if isinstance(old, (list, tuple)) and new is not None and not isinstance(new, (list, tuple, dict)):
        new = [new]  # one item of a list key (--options pem_error_types=jitter)
    return check_value(path, old, new)


def _set_dotted(cfg: dict[str, Any], dotted: str, value: Any, strict: bool) -> None:
    parts = dotted.split(".")
    node = cfg
    for depth, part in enumerate(parts):
        path = ".".join(parts[:depth + 1])
        last = depth == len(parts) - 1
        if strict and part not in node:
            raise ConfigError(f"unknown config key '{path}'.{_closest(part, node.keys())} "
                              "(new keys belong in a config file, not in --options)")
        if last:
            node[part] = _check_override(path, node[part], value) if strict else value
        else:
            if part not in node or node[part] is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"'{path}' is not a dict, so '{dotted}' cannot be set")
            node = node[part]


# ---------------------------------------------------------------------------------------------------------------
# The config object


class Config:
    """A loaded config: attribute and item access, ``merge_from_dict``, ``dump``."""

    def __init__(self, cfg_dict: Mapping[str, Any] | None = None, filename: str | None = None):
        object.__setattr__(self, "_cfg", AttrDict(copy.deepcopy(dict(cfg_dict or {}))))
        object.__setattr__(self, "filename", filename)

    @staticmethod
    def fromfile(filename: str | os.PathLike) -> "Config":
        path = Path(filename).resolve()
        return Config(_load_file(path), filename=str(path))

    # -- access ------------------------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        return getattr(self._cfg, name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._cfg[name] = value

    def __getitem__(self, name: str) -> Any:
        return self._cfg[name]

    def __contains__(self, name: str) -> bool:
        return name in self._cfg

    def __iter__(self):
        return iter(self._cfg)

    def keys(self):
        return self._cfg.keys()

    def items(self):
        return self._cfg.items()

    def to_dict(self) -> dict[str, Any]:
        return self._cfg.to_dict()

    def __repr__(self) -> str:
        return f"Config(filename={self.filename!r}, keys={len(self._cfg)})"

    # -- overrides ---------------------------------------------------------------------------------------------
    def merge_from_dict(self, options: Mapping[str, Any], strict: bool = True) -> None:
        """Apply ``{dotted.key: value}`` overrides. ``strict`` rejects unknown keys and values of another type."""
        data = self._cfg.to_dict()
        for key, value in options.items():
            _set_dotted(data, key, value, strict)
        object.__setattr__(self, "_cfg", AttrDict(data))

    # -- output ------------------------------------------------------------------------------------------------
    @property
    def text(self) -> str:
        """The config as Python source (one ``key = value`` per key), formatted with yapf when it is installed."""
        lines = [f"{key} = {_literal(value)}" for key, value in self._cfg.to_dict().items()]
        source = "\n".join(lines) + "\n"
        try:
            from yapf.yapflib.yapf_api import FormatCode
        except ImportError:  # yapf is optional for dumping; the unformatted text is valid Python too
            return source
        style = dict(based_on_style="pep8", column_limit=120, blank_line_before_nested_class_or_def=True,
                     split_before_expression_after_opening_paren=True)
        formatted, _ = FormatCode(source, style_config=style)  # no verify=: it was removed in yapf 0.40.2
        return formatted

    def dump(self, filename: str | os.PathLike) -> None:
        Path(filename).write_text(self.text)


def _literal(value: Any) -> str:
    """``repr`` that round-trips through ``ast.literal_eval``; addict Dicts become plain dicts."""
    if isinstance(value, AttrDict):
        value = value.to_dict()
    text = repr(value)
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise ConfigError(f"config value {text[:80]} cannot be written as a Python literal") from exc
    return text


# ---------------------------------------------------------------------------------------------------------------
# --options parsing


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets and quotes."""
    pieces, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    pieces.append(text[start:])
    return pieces


def parse_scalar(text: str) -> Any:
    """int, then float, then true/false (any case), none/null, a quoted string, a bracketed list/tuple, else the string."""
    stripped = text.strip()
    try:
        return int(stripped)
    except ValueError:
        pass
    try:
        return float(stripped)
    except ValueError:
        pass
    lowered = stripped.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "\"'":
        return stripped[1:-1]
    if len(stripped) >= 2 and (stripped[0], stripped[-1]) in (("[", "]"), ("(", ")")):
        inner = stripped[1:-1].strip()
        items = [parse_scalar(piece) for piece in _split_top_level(inner)] if inner else []
        return items if stripped[0] == "[" else tuple(items)
    return text


def parse_option_value(text: str) -> Any:
    """Value of one ``key=value`` item: comma-separated pieces become a list, as in the reference."""
    pieces = [parse_scalar(piece) for piece in _split_top_level(text)]
    return pieces[0] if len(pieces) == 1 else pieces


def parse_options(items: Iterable[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--options expects key=value items, got '{item}'")
        key, value = item.split("=", 1)
        options[key.strip()] = parse_option_value(value)
    return options


class DictAction(argparse.Action):
    """argparse action: ``--options a=1 b=x,y c=[1,2]`` -> ``{'a': 1, 'b': ['x', 'y'], 'c': [1, 2]}``."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            options = parse_options(values)
        except ConfigError as exc:
            parser.error(str(exc))
        previous = getattr(namespace, self.dest, None) or {}
        setattr(namespace, self.dest, {**previous, **options})


def apply_config_to_args(cfg: Config, args: argparse.Namespace) -> argparse.Namespace:
    """Copy every config key onto ``args``; a key that is also a command-line flag is an error."""
    for key, value in cfg.to_dict().items():
        if hasattr(args, key):
            raise ConfigError(f"config key '{key}' collides with the command-line argument --{key}; rename the "
                              "config key or pass the value on the command line")
        setattr(args, key, value)
    return args


# ---------------------------------------------------------------------------------------------------------------
# Ranges: values whose type is right but that would fail late (a division by zero after an epoch's training) or
# silently (no epoch trained). Only keys present are checked, so a config without one is fine.

AT_LEAST: dict[str, float] = {
    "epochs": 1, "lr_drop": 1, "save_checkpoint_interval": 1, "batch_size": 1, "lr": 0, "lr_backbone": 0,
    "weight_decay": 0, "clip_max_norm": 0, "hidden_dim": 1, "nheads": 1, "dim_feedforward": 1, "enc_layers": 0,
    "dec_layers": 1, "num_queries": 1, "num_select": 1, "num_group": 1, "num_body_points": 1, "dn_number": 0,
    "max_clicks": 1, "ema_epoch": 0, "data_aug_max_size": 1, "num_feature_levels": 1,
}
AT_MOST: dict[str, float] = {"ema_decay": 1.0}
NON_EMPTY_LISTS = ("data_aug_scales", "data_aug_scales2_resize", "data_aug_scales2_crop", "noc_thresholds")


def check_ranges(values: Mapping[str, Any]) -> None:
    """One-line ``ConfigError`` for the first value out of its range (numbers must also be finite)."""
    for key, low in AT_LEAST.items():
        value = values.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not (value >= low and
                                                                                    math.isfinite(value)):
            raise ConfigError(f"'{key}' must be a finite number >= {low}, got {value!r} "
                              f"(e.g. --options {key}={max(int(low), 1)})")
    for key, high in AT_MOST.items():
        value = values.get(key)
        if isinstance(value, (int, float)) and not 0 <= value <= high:
            raise ConfigError(f"'{key}' must be between 0 and {high}, got {value!r}")
    for key in NON_EMPTY_LISTS:
        if key in values and isinstance(values[key], (list, tuple)) and not values[key]:
            raise ConfigError(f"'{key}' must not be an empty list (its base config's value is a good start)")
    if values.get("lr_drop_list") is not None and not all(
            isinstance(v, int) and v >= 1 for v in values["lr_drop_list"]):
        raise ConfigError(f"'lr_drop_list' must hold epochs >= 1, got {values['lr_drop_list']!r}")
