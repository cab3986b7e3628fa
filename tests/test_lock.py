"""minift.run.lock: the output folder's lock (one writer per folder, stale locks taken over)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minift.run import lock


def _write_lock(folder: Path, pid: int, host: str | None = None) -> Path:
    import socket

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / lock.LOCK_NAME
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))
    return path


def test_lock_is_exclusive_released_and_stale_locks_are_taken_over(tmp_path):
    with lock.folder_lock(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(lock.FolderLockedError, match="already in use by this process"):
            lock.acquire(tmp_path)
    assert not path.exists()
    with pytest.raises(RuntimeError), lock.folder_lock(tmp_path):  # released on errors too
        raise RuntimeError("boom")
    assert not path.exists()

    _write_lock(tmp_path, os.getppid())  # a live process
    with pytest.raises(lock.FolderLockedError, match=f"in use by process {os.getppid()}"):
        lock.acquire(tmp_path)
    _write_lock(tmp_path, 12345, host="another-host")
    with pytest.raises(lock.FolderLockedError, match="on host another-host"):
        lock.acquire(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, dead.pid)
    with pytest.warns(UserWarning, match=f"taking over the lock of process {dead.pid}"):
        path = lock.acquire(tmp_path)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release(path)
    path.write_text("")
    with pytest.raises(lock.FolderLockedError, match="names no owner"):
        lock.acquire(tmp_path)
