"""Atomic writes, safe appends, disk-full errors, stale temporaries, file modes."""
from __future__ import annotations

import errno
import os

import pytest
import torch

import util.files as files
from util.distributed import atomic_torch_save
from util.files import (DiskFullError, append_line, atomic_write, atomic_write_text, remove_stale_temp_files,
                        repair_line_log)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_written_files_have_the_mode_of_other_outputs(tmp_path):
    atomic_write_text(tmp_path / "best_metric.json", "{}")
    atomic_torch_save({"w": torch.ones(1)}, tmp_path / "checkpoint.pth")
    append_line(tmp_path / "log.txt", "{}")
    expected = 0o666 & ~_umask()
    for name in ("best_metric.json", "checkpoint.pth", "log.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "best_metric.json"
    atomic_write_text(path, '{"best": 1}')

    def half_then_crash(handle):
        handle.write(b'{"be')
        raise KeyboardInterrupt  # a kill

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_crash)
    assert path.read_text() == '{"best": 1}' and os.listdir(tmp_path) == ["best_metric.json"]


class _FullDisk:
    """A file object whose writes fail as on a full file system after a few bytes."""

    def __init__(self, real):
        self.real, self.written = real, 0

    def write(self, data):
        self.written += len(data)
        if self.written > 64:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def test_disk_full_during_torch_save_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    atomic_torch_save({"w": torch.ones(1)}, path)
    real_fdopen = os.fdopen
    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(DiskFullError, match=f"no space left on the device while writing {path}.*--output_dir") as info:
        atomic_torch_save({"w": torch.zeros(1000)}, path)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(1))
    assert os.listdir(tmp_path) == ["checkpoint.pth"]


def test_cut_log_line_is_dropped_and_whole_lines_kept(tmp_path):
    log = tmp_path / "log.txt"
    append_line(log, '{"epoch": 0}')
    assert not repair_line_log(log)
    with open(log, "a") as handle:
        handle.write('{"epoch": 1, "tr')
    assert repair_line_log(log)
    append_line(log, '{"epoch": 1}')
    assert log.read_text() == '{"epoch": 0}\n{"epoch": 1}\n'


def test_only_temporaries_of_named_files_are_removed(tmp_path):
    ours = [tmp_path / ".checkpoint0003.pth.deadbeef.tmp", tmp_path / ".best_metric.json.0badf00d.tmp"]
    theirs = [tmp_path / ".notes.tmp", tmp_path / "checkpoint.pth"]
    for path in ours + theirs:
        path.write_text("x")
    assert sorted(remove_stale_temp_files(tmp_path, ["checkpoint", "best_metric.json"])) == sorted(ours)
    assert all(path.exists() for path in theirs)


def test_atomic_write_flushes_the_folder_after_the_rename(tmp_path, monkeypatch):
    """Without the folder's fsync a power loss can undo the rename: the old file would come back after a save
    that was acknowledged."""
    import stat

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(
        "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b))[1])
    atomic_write_text(tmp_path / "ann.json", "{}")
    assert events == ["file", "rename", "folder"]


def test_exclusive_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    from util.files import ExclusiveFileLock, FileLockedError

    first = ExclusiveFileLock(tmp_path / "ann.json").acquire(port=8765)
    try:
        with pytest.raises(FileLockedError, match="in use by another program") as refused:
            ExclusiveFileLock(tmp_path / "ann.json").acquire()
        assert refused.value.owner == {"pid": os.getpid(), "port": 8765}
        first.update(url="http://127.0.0.1:8765/")
        assert ExclusiveFileLock(tmp_path / "ann.json").read_owner()["url"] == "http://127.0.0.1:8765/"
    finally:
        first.release()
    with ExclusiveFileLock(tmp_path / "ann.json") as again:  # released: free for the next one
        assert again.owner["pid"] == os.getpid()


def test_lock_is_dropped_when_its_process_dies(tmp_path):
    import subprocess
    import sys

    from util.files import ExclusiveFileLock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                               "from util.files import ExclusiveFileLock;"
                               "ExclusiveFileLock(sys.argv[2]).acquire(); print('held', flush=True); time.sleep(60)",
                               str(files.Path(files.__file__).parents[1]), str(tmp_path / "ann.json")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match="in use"):
            ExclusiveFileLock(tmp_path / "ann.json").acquire()
    finally:
        holder.kill()  # kill -9: no clean-up code runs
        holder.wait(30)
    ExclusiveFileLock(tmp_path / "ann.json").acquire().release()
