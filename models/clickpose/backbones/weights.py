"""ImageNet weights for a backbone from a local file (``backbone_weights``); nothing is ever downloaded.

A file that is missing, unreadable or does not fit is a ``ConfigError`` (the ``backbone_weights`` value is wrong).
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from util.config import ConfigError


def read_state_dict(path: str | Path, hint: str) -> dict[str, Tensor]:
    """A state dict saved with ``torch.save``: bare, or under ``'model'``/``'state_dict'`` (the official Swin
    releases use ``{'model': ...}``); a ``module.`` prefix (DDP) is removed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"backbone_weights file {path} does not exist; {hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message advises weights_only=False, which could run code from the file: name what it holds
        found = re.search(r"GLOBAL (\S+)", str(exc))
        held = f" ({found.group(1)})" if found else ""
        raise ConfigError(f"backbone_weights file {path} holds Python objects beyond tensors{held}, so it was not "
                          f"loaded (unpickling it could run code); save the plain state dict again "
                          f"(torch.save(model.state_dict(), path)); {hint}") from None
    except Exception as exc:  # not a torch.save file, or a truncated one
        raise ConfigError(f"backbone_weights file {path} could not be read as a torch.save file "
                          f"({type(exc).__name__}: {exc}): it is damaged or not a PyTorch file; {hint}") from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        found = type(state).__name__ if not isinstance(state, dict) else \
            "a dict of " + ", ".join(sorted({type(v).__name__ for v in state.values()})) if state else "an empty dict"
        raise ConfigError(f"backbone_weights file {path} holds no state dict of tensors (found {found}); {hint}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_fitting(module: nn.Module, state: dict[str, Tensor], path: str | Path, hint: str,
                 ignore: Callable[[str], bool] = lambda key: False,
                 may_miss: Callable[[str], bool] = lambda key: False) -> list[str]:
    """Load ``state`` into ``module``. File keys for which ``ignore`` holds are skipped; module keys for which
    ``may_miss`` holds keep their initial values. Any other missing or unexpected key, or a shape that differs, is
    an error naming the keys. Returns the module keys left at their initial values."""
    state = {k: v for k, v in state.items() if not ignore(k)}
    own = module.state_dict()
    wrong_shape = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in state.items()
                   if k in own and v.shape != own[k].shape]
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    missing = [k for k in own if k not in state and not may_miss(k) and not k.endswith("num_batches_tracked")]
    if wrong_shape or unexpected or missing:
        problems = [f"{label} ({len(keys)}): {', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''}"
                    for label, keys in (("missing", missing), ("unexpected", unexpected),
                                        ("wrong shape", wrong_shape)) if keys]
        raise ConfigError(f"backbone_weights file {path} does not fit this backbone: {'; '.join(problems)}; {hint}")
    module.load_state_dict(state, strict=False)
    return [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
