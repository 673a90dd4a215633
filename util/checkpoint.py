"""Checkpoint files: atomic writes, safe loading, weight loading with clear reports, RNG state.

A checkpoint holds ``model``, ``optimizer``, ``lr_scheduler``, ``epoch``, ``args`` (as the reference) and optionally
``ema_model``, ``rng_state`` (ours: a resumed run continues the same random stream), ``scaler`` (the float16
GradScaler's ``state_dict``: loss scale and growth tracker, plain numbers, as torchvision's detection references) and
``keypoint_metadata`` (the keypoint layout the model was trained with, a plain dict: ``KeypointMetadata.to_dict``).
"""
from __future__ import annotations

import argparse
import logging
import pickle
import random
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import torch
from torch import nn

from .distributed import all_gather, save_on_master
from .errors import CheckpointError  # defined beside the CLI's exit codes; re-exported here

log = logging.getLogger("clickpose")


# What a checkpoint may hold without the user's opt-in: tensors, containers, numbers, strings, and the
# argparse.Namespace of the run's arguments (ours and the original's released checkpoints).
SAFE_GLOBALS = [argparse.Namespace]
TRUST_HINT = ("Only if you trust the file's origin, load it with full unpickling: --trust_checkpoint (main.py, "
              "tools/predict.py) or Predictor(..., trust_checkpoint=True)")


def read_checkpoint(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """Load a checkpoint file on the CPU with ``torch.load(weights_only=True)``.

    A file that needs more than tensors and an ``argparse.Namespace`` is refused (unpickling it could run any code)
    unless ``trust`` is set: the user's explicit opt-in. Files holding only a state dict become ``{'model': ...}``.
    """
    path = Path(path)
    _check_readable(path)
    try:
        if trust:
            log.warning(f"loading {path} with full unpickling (trust_checkpoint): it can run code")
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if trust:
            raise CheckpointError(f"could not read checkpoint {path}: {exc}") from exc
        raise CheckpointError(f"{path} holds Python objects beyond tensors and the run's arguments, so it was not "
                              f"loaded (unpickling it could run code): {_refused_global(exc)}. If it is a state "
                              f"dict you made, save it again with plain tensors. {TRUST_HINT}") from None
    except Exception as exc:  # truncated or not a torch file
        raise CheckpointError(f"could not read checkpoint {path}: {type(exc).__name__}: {exc}. The file is damaged "
                              "or not a PyTorch checkpoint; copy or download it again") from exc
    if isinstance(ckpt, Mapping) and "model" not in ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        ckpt = {"model": dict(ckpt)}
    if not isinstance(ckpt, Mapping) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a Click-Pose checkpoint: expected a dict with a 'model' state dict")
    return dict(ckpt)


def _check_readable(path: Path) -> None:
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file; give the .pth file inside it")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted copy or a full disk; copy or "
                              "download it again")


def _refused_global(exc: Exception) -> str:
    """The first line of torch's refusal, which names the object type that is not allowed."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (named or lines or ["unsupported content"])[0].rstrip(".")


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove a DDP ``module.`` prefix when every key has it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def load_model_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True,
                       ignore_keywords: Optional[Iterable[str]] = None, source: str = "checkpoint"):
    """Load weights, dropping keys that contain any of ``ignore_keywords``; shape mismatches are named.

    Returns torch's ``(missing_keys, unexpected_keys)`` result.
    """
    state_dict = strip_prefix(state_dict)
    ignore = [k for k in (ignore_keywords or []) if k]
    if ignore:
        dropped = [k for k in state_dict if any(word in k for word in ignore)]
        state_dict = {k: v for k, v in state_dict.items() if k not in dropped}
        log.info(f"ignored {len(dropped)} keys of {source} matching {ignore}")
    own = model.state_dict()
    mismatched = [f"{k}: {tuple(v.shape)} in {source} vs {tuple(own[k].shape)} in the model"
                  for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        hint = ("(a different num_body_points, hidden_dim, num_group, backbone or dn_labelbook_size in the config "
                "than the checkpoint was trained with; or drop those keys with --finetune_ignore)")
        shown = "\n  ".join(mismatched[:10]) + (f"\n  ... and {len(mismatched) - 10} more" if len(mismatched) > 10
                                                 else "")
        raise CheckpointError(f"{source} does not fit the model: {len(mismatched)} tensors have other shapes {hint}:"
                              f"\n  {shown}")
    result = model.load_state_dict(state_dict, strict=strict)
    if result.missing_keys:
        log.info(f"missing keys when loading {source} ({len(result.missing_keys)}): {result.missing_keys[:20]}")
    if result.unexpected_keys:
        log.info(f"unexpected keys in {source} ({len(result.unexpected_keys)}): {result.unexpected_keys[:20]}")
    return result


def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    # numpy's state as tensors/ints, so the checkpoint loads with torch.load(weights_only=True)
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_as_python_state(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(state: Any) -> tuple:
    # random.getstate() is a nested tuple; serialisation may turn the inner tuple into a list.
    version, internal, gauss = state
    return version, tuple(internal), gauss


def save_checkpoint(path: str | Path, model: nn.Module, optimizer=None, lr_scheduler=None, epoch: int = -1,
                    args: Optional[argparse.Namespace] = None, ema_model: Optional[nn.Module] = None,
                    with_rng: bool = True, extra: Optional[Mapping[str, Any]] = None,
                    scaler: Optional[torch.amp.GradScaler] = None) -> None:
    """Write a checkpoint atomically on rank 0 (a crash leaves the previous file intact).

    ``with_rng`` stores every rank's random state (a collective: all ranks must call this); ``extra`` adds keys
    (plain numbers, strings, tensors); ``scaler``: an enabled GradScaler's state is stored under ``scaler``.
    """
    ckpt: dict[str, Any] = {"model": model.state_dict(), "epoch": epoch, "args": args}
    layout = getattr(model, "keypoint_metadata", None)
    if layout is not None:  # the keypoint layout it was trained with, as plain lists (weights_only loads it)
        ckpt["keypoint_metadata"] = layout.to_dict()
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    if lr_scheduler is not None:
        ckpt["lr_scheduler"] = lr_scheduler.state_dict()
    if ema_model is not None:
        ckpt["ema_model"] = ema_model.state_dict()
    if scaler is not None and scaler.is_enabled():  # a disabled scaler's state is empty and cannot be loaded
        ckpt["scaler"] = scaler.state_dict()
    if with_rng:
        states = all_gather(rng_state())
        ckpt["rng_state"] = states[0]
        if len(states) > 1:
            ckpt["rng_state_per_rank"] = states
    ckpt.update(extra or {})
    save_on_master(ckpt, path)


def restore_rng_state(ckpt: Mapping[str, Any], rank: int, world_size: int) -> bool:
    """Continue this rank's random streams from ``ckpt``; False (and a warning) when it holds none for this rank."""
    per_rank = ckpt.get("rng_state_per_rank")
    if per_rank is not None and len(per_rank) == world_size:
        set_rng_state(per_rank[rank])
        return True
    if per_rank is None and world_size == 1 and "rng_state" in ckpt:
        set_rng_state(ckpt["rng_state"])
        return True
    saved = len(per_rank) if per_rank is not None else (1 if "rng_state" in ckpt else 0)
    log.warning(f"the checkpoint holds random states of {saved} process(es), this run has {world_size}: the random "
                "streams restart from the seed, so the resumed run is not identical to an uninterrupted one")
    return False


def restore_scaler_state(scaler: Optional[torch.amp.GradScaler], ckpt: Mapping[str, Any]) -> bool:
    """Continue the float16 loss scale from ``ckpt['scaler']``; False (and a warning) when an enabled ``scaler``
    finds none there (a checkpoint written before the key existed, or by a run without float16 --amp)."""
    if scaler is None or not scaler.is_enabled():
        return False
    state = ckpt.get("scaler")
    if state:
        scaler.load_state_dict(dict(state))
        return True
    log.warning("the checkpoint holds no GradScaler state (written without --amp float16, or by an older version): "
                "the loss scale restarts from its initial value, so the resumed run is not identical to an "
                "uninterrupted one")
    return False


class preserve_rng:
    """Context manager: whatever runs inside (e.g. evaluation) leaves the random streams as it found them, so a
    resumed run, which skips the evaluation's draws, continues exactly like an uninterrupted one."""

    def __enter__(self):
        self._state = rng_state()
        return self

    def __exit__(self, *exc):
        set_rng_state(self._state)
        return False
