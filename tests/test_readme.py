"""Every command in README.md is checked against the code, so the README cannot drift from it.

- ``main.py`` command lines (plain, ``torchrun``, ``torch.distributed.launch``): the flags parse, the config loads,
  every ``--options`` key exists and its value validates, and the dataset is a supported one;
- tools (``python -m tools.X`` or a script path) exist and accept every flag the README gives them;
- ``python -m`` modules exist, ``make`` targets exist, files named after ``cd`` exist;
- Python blocks compile and import what exists.

The commands themselves run in other tests (engine runs under torchrun and launch, evaluation, the demo, the
Predictor) and were run by hand on the sample data.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import shlex
from itertools import groupby
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def shell_commands() -> list[tuple[list[str], dict[str, str], Path]]:
    """(argv, environment assignments in force, working directory) of every shell command, in README order."""
    commands = []
    for block in code_blocks("bash"):
        env: dict[str, str] = {}
        cwd = REPO
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for part in _split_on(words, "&&"):
                if not part:
                    continue
                if part[0] == "export":
                    env.update(word.split("=", 1) for word in part[1:])
                    continue
                local = dict(env)
                while part and ASSIGNMENT.match(part[0]):
                    name, value = part.pop(0).split("=", 1)
                    local[name] = value
                if part and part[0] == "cd":
                    cwd = cwd / part[1]
                    assert cwd.is_dir(), f"README: `cd {part[1]}`: no such folder"
                    continue
                if part:
                    commands.append((part, local, cwd))
    return commands


def _split_on(words: list[str], separator: str) -> list[list[str]]:
    return [list(group) for is_separator, group in groupby(words, lambda w: w == separator) if not is_separator]


def main_py_argv(argv: list[str]) -> list[str] | None:
    """The arguments given to main.py, whichever way it is started; None if the command does not run main.py."""
    if "main.py" not in argv:
        return None
    runner = Path(argv[0]).name
    assert runner in {"python", "python3", "torchrun"}, f"README: unexpected launcher {argv[0]!r}"
    return argv[argv.index("main.py") + 1:]


COMMANDS = shell_commands()
# lines whose main.py arguments are written '...' show launcher flags only
MAIN_COMMANDS = [(argv, env) for argv, env, _ in COMMANDS
                 if main_py_argv(argv) is not None and "..." not in main_py_argv(argv)]


def test_readme_has_the_commands_it_must_have():
    joined = [" ".join(argv) for argv, _, _ in COMMANDS]
    assert any(c == "make demo" for c in joined) and any(c == "make test" for c in joined)
    assert any(c.startswith("torchrun") for c in joined)
    assert any("torch.distributed.launch" in c for c in joined)
    import main

    parser = main.get_args_parser()
    datasets = {parser.parse_args(main_py_argv(argv)).dataset_file for argv, _ in MAIN_COMMANDS}
    assert {"coco", "crowdpose", "humanart", "ochuman"} <= datasets


@pytest.mark.parametrize("argv,env", MAIN_COMMANDS, ids=[f"main{i}" for i in range(len(MAIN_COMMANDS))])
def test_main_py_command_parses_and_validates(argv, env, monkeypatch):
    import main
    from datasets.coco import spec_from_args
    from util.config import apply_config_to_args

    args_list = main_py_argv(argv)
    monkeypatch.chdir(REPO)
    args = main.get_args_parser().parse_args(args_list)
    assert (REPO / args.config_file).is_file(), f"config {args.config_file} does not exist"
    cfg = main.load_config(args)  # unknown keys and bad booleans raise ConfigError
    apply_config_to_args(cfg, args)
    main.resolve_environment(args, env)
    spec_from_args(args)
    assert args.coco_path, "no dataset root: neither --coco_path nor the dataset's environment variable is set"


def _tool_commands():
    """(how to run it: a script path or ``-m module``, its arguments, working directory) of every tool command."""
    for argv, _, cwd in COMMANDS:
        if argv[0] not in {"python", "python3"} or main_py_argv(argv) is not None:
            continue
        if argv[1] == "-m" and argv[2].startswith("tools."):
            yield f"-m {argv[2]}", argv[3:], cwd
            continue
        scripts = [word for word in argv if word.endswith(".py")]
        if scripts:
            yield scripts[0], argv[argv.index(scripts[0]) + 1:], cwd


@pytest.mark.parametrize("tool,args,cwd", list(_tool_commands()), ids=lambda v: str(v) if isinstance(v, str) else "")
def test_tool_exists_and_accepts_the_flags(tool, args, cwd):
    if tool.startswith("-m "):
        module = tool[3:]
        assert importlib.util.find_spec(module) is not None, f"README: python -m {module}: no such module"
        command = [sys.executable, "-m", module, "--help"]
    else:
        path = cwd / tool
        assert path.is_file(), f"README names {tool}, which does not exist"
        if path.name == "setup.py":
            return
        command = [sys.executable, str(path), "--help"]
    flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    help_text = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert help_text.returncode == 0, help_text.stderr
    missing = [flag for flag in flags if flag not in help_text.stdout]
    assert not missing, f"{tool} does not accept {missing}"


def test_modules_and_make_targets_exist():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), flags=re.M))
    checked = 0
    for argv, _, _ in COMMANDS:
        if argv[0] == "make":
            assert set(argv[1:]) <= targets, f"README: make {argv[1:]} (Makefile has {sorted(targets)})"
            checked += 1
        if argv[0] in {"python", "python3"} and argv[1] == "-m" and argv[2] not in {"venv", "pip"}:
            assert importlib.util.find_spec(argv[2]) is not None, f"README: python -m {argv[2]}: no such module"
            checked += 1
    assert checked >= 4


def test_python_blocks_compile_and_import_what_exists():
    blocks = code_blocks("python")
    assert blocks
    for block in blocks:
        tree = ast.parse(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"README imports {alias.name} from {node.module}"


def test_the_documented_predictor_methods_exist():
    from models.predictor import Predictor

    text = "\n".join(code_blocks("python"))
    for method in re.findall(r"predictor\.(\w+)\(", text):
        assert callable(getattr(Predictor, method, None)), f"README calls Predictor.{method}"
