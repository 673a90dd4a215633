"""Python config files with ``_base_`` inheritance, and ``--options key=value`` overrides.

A config file is plain Python; its public module-level names are the keys. ``_base_`` (a file name or a list of
them, relative to the file) lists configs to start from: the child's keys win, a key defined by two different
bases is an error, and a dict value with ``_delete_=True`` replaces the base's dict instead of merging into it.

Unlike the reference, overrides are validated: an unknown key is an error that lists the closest known keys, and a
boolean key only accepts a boolean (``human_feedback=FLASE`` fails instead of silently becoming a truthy string).
"""
from __future__ import annotations

import argparse
import ast
import copy
import difflib
import os
import runpy
import types
from pathlib import Path
from typing import Any, Iterable, Mapping

from addict import Dict as AttrDict

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"


class ConfigError(ValueError):
    """A config file or an override is invalid; the message says what to change."""


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
    return _merge_into(cfg, merged_bases)


# ---------------------------------------------------------------------------------------------------------------
# Overrides


def _closest(key: str, known: Iterable[str]) -> str:
    matches = difflib.get_close_matches(key, list(known), n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""


def _check_override(path: str, old: Any, new: Any) -> None:
    if isinstance(old, bool) and not isinstance(new, bool):
        raise ConfigError(f"'{path}' is a boolean option but got {new!r}; use true or false (any case)")


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
            if strict:
                _check_override(path, node[part], value)
            node[part] = value
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
        """Apply ``{dotted.key: value}`` overrides. ``strict`` rejects unknown keys and non-boolean booleans."""
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
