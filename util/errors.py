"""The errors a user can fix, and how the command line reports them: one ``error:`` line and an exit code.

The classes are re-exported where they are raised (``util.config``, ``util.checkpoint``, ``datasets``, ``engine``);
``exit_code`` and ``error_message`` are what ``main.py`` maps them with. Anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations

import errno
from typing import Optional

__all__ = ["ConfigError", "CheckpointError", "DatasetLayoutError", "AnnotationFormatError", "UnreadableImageError",
           "NonFiniteLossError", "exit_code", "error_message"]


class ConfigError(ValueError):
    """A config file or an override is invalid; the message says what to change."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model; the message says which and why."""


class DatasetLayoutError(FileNotFoundError):
    """A dataset root, annotation file or image folder is missing; the message shows the expected layout."""


class AnnotationFormatError(ValueError):
    """An annotation file is not valid JSON or lacks a field; the message names the file and the field."""


class UnreadableImageError(OSError):
    """An image file is missing or cannot be decoded; the message names the file."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; training stops and the last good checkpoint stays as it is."""


# exit code 1: data, checkpoint, a diverged run; disk full (util.files.DiskFullError is an OSError with its errno)
_DATA_ERRORS = (CheckpointError, DatasetLayoutError, AnnotationFormatError, UnreadableImageError, NonFiniteLossError)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _dist_backend_error() -> tuple[type, ...]:
    """torch.distributed's error of a failed or timed-out collective (a rank died or hangs), where torch has it."""
    import torch.distributed as dist

    error = getattr(dist, "DistBackendError", None)
    return (error,) if error is not None else ()


def exit_code(exc: BaseException) -> Optional[int]:
    """2 for a config error, 1 for data, checkpoint, disk, a diverged or hung run; None for anything else (a bug,
    which keeps its traceback)."""
    if isinstance(exc, ConfigError):
        return 2
    if isinstance(exc, _DATA_ERRORS + _dist_backend_error()):
        return 1
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return 1
    return None


def error_message(exc: BaseException) -> str:
    """The one-line message for ``exc``: a DataLoader worker's re-raised error shows the original message only."""
    text = str(exc).strip()
    if "Original Traceback" in text:  # the original message is the last line
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    if isinstance(exc, _dist_backend_error()):
        text = (f"a distributed operation failed or timed out (another process died or hangs; see its log; "
                f"--dist_timeout sets the wait): {text.splitlines()[0] if text else ''}")
    return text
