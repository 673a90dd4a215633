"""Files a run writes: atomic replacement, safe line appends, clean-up after a killed save, disk-full errors, and
an exclusive lock that keeps two programs off one file.

A file written here is either the old one or the complete new one, never a mix: the new content goes to a hidden
temporary file in the same folder (``.NAME.XXXX.tmp``), is flushed to disk, then renamed over ``NAME``, and the
folder is flushed too (so that after a power loss the rename is not undone). Files are created with the same mode
as any other output (0666 minus the umask), not the 0600 of ``tempfile.mkstemp``.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Optional

TEMP_SUFFIX = ".tmp"


class DiskFullError(OSError):
    """Writing an output file failed because its file system is full; the message names the file and the fix."""


def _disk_full(path: Path, cause: BaseException) -> DiskFullError:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(errno.ENOSPC, f"no space left on the device while writing {path} ({free}): free space "
                                       f"there or choose another --output_dir ({cause})")


def _is_disk_full(exc: BaseException) -> bool:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class _RecordingWriter:
    """A binary file wrapper that remembers the OSError of a failed write: torch.save turns it into a
    RuntimeError ('file write failed') that no longer says why."""

    def __init__(self, handle: BinaryIO):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def _temp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(binary_file)`` on a temporary file, then rename it to ``path`` (the old file stays intact
    on any failure). A full disk raises ``DiskFullError`` naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    recorder = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for other outputs
        with os.fdopen(fd, "wb") as handle:
            recorder = _RecordingWriter(handle)
            write(recorder)  # type: ignore[arg-type]
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        recorded = recorder.error if recorder is not None else None
        if _is_disk_full(exc) or (recorded is not None and _is_disk_full(recorded)):
            raise _disk_full(path, recorded or exc) from exc
        raise


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the file itself is already on disk
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line with a single write, flushed to disk. A line cut short by a kill is dropped by
    ``repair_line_log`` at the next start."""
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if _is_disk_full(exc):
            raise _disk_full(path, exc) from exc
        raise


def repair_line_log(path: str | os.PathLike) -> bool:
    """Drop a last line that lacks its newline (a kill during ``append_line``); True when something was dropped."""
    path = Path(path)
    if not path.is_file():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    keep = data[:data.rfind(b"\n") + 1]
    atomic_write(path, lambda handle: handle.write(keep))
    return True


def remove_stale_temp_files(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Remove the temporary files that a killed ``atomic_write`` of a file whose name starts with one of
    ``names`` left behind in ``folder``; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for candidate in folder.glob(f".*{TEMP_SUFFIX}"):
        if candidate.is_file() and any(candidate.name.startswith(f".{name}") for name in names):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


class FileLockedError(RuntimeError):
    """Another process holds the lock; ``owner`` is what it wrote into the lock file (e.g. its pid and port)."""

    def __init__(self, message: str, owner: dict[str, Any]):
        super().__init__(message)
        self.owner = owner


class ExclusiveFileLock:
    """An OS lock (``flock``) on ``PATH.lock`` held from ``acquire`` to ``release`` (or the process's end, even
    after kill -9: the OS drops it), so that two programs never write the same file. The lock file holds a JSON
    object describing the holder (its pid and what ``update`` adds), which a refused second program reports."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(f"{os.fspath(path)}.lock")
        self._fd: Optional[int] = None
        self.owner: dict[str, Any] = {}

    def acquire(self, **owner: Any) -> "ExclusiveFileLock":
        import fcntl  # POSIX only; on other systems there is no lock (see docs/annotate.md)

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            held = self.read_owner()
            os.close(fd)
            raise FileLockedError(f"{os.fspath(self.path)[:-5]} is in use by another program "
                                  f"({', '.join(f'{k} {v}' for k, v in held.items()) or 'owner unknown'})", held)
        self._fd = fd
        self.update(pid=os.getpid(), **owner)
        return self

    def update(self, **owner: Any) -> None:
        """Add to what the lock file says about its holder (e.g. the port, once it is known)."""
        if self._fd is None:
            raise RuntimeError("the lock is not held")
        self.owner.update(owner)
        data = json.dumps(self.owner).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def read_owner(self) -> dict[str, Any]:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "ExclusiveFileLock":
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.release()
