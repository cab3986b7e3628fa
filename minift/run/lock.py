"""One writer per output folder: the folder lock ``FOLDER/.minift.lock``.

Two runs writing into one folder interleave their logs and swap each other's models without a
word. The lock is created with ``O_CREAT | O_EXCL``, which the operating system makes atomic (of
two runs starting at once, exactly one creates it), and holds ``{"pid", "host"}``. A stale lock,
left by a dead run (SIGKILL, power loss) of this host, is taken over with a warning; one from
another host never is (its pid means nothing here). Standard library only, so that any project
can lift this file.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".minift.lock"


class FolderLockedError(ValueError):
    """Another run holds the output folder's lock."""


def _pid_running(pid: int) -> bool:
    """True when a process with this pid exists on this machine (signal 0 checks, sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def _read_owner(path: Path) -> dict | None:
    """The lock's ``{"pid", "host"}``, or None when it is gone or does not hold them."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return {}
    return owner


def _create(path: Path, owner: dict) -> bool:
    """Create the lock file holding ``owner``; False when it already exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(owner) + "\n")
    return True


def acquire(folder: str | os.PathLike) -> Path:
    """Take the lock of ``folder`` (which must exist) for this process; return the lock's path.
    Raises ``FolderLockedError`` when a live run holds it, ``PermissionError`` (an ``OSError``)
    when the folder is not writable."""
    path = Path(folder) / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):  # a stale lock is removed, then created again: another run may win
        if _create(path, me):
            return path
        owner = _read_owner(path)
        if owner is None:  # released between our two looks
            continue
        if not owner:
            raise FolderLockedError(f"{folder} is locked by {path}, which names no owner; if no "
                                    f"run is writing into {folder}, remove {path}")
        if owner.get("host") != me["host"]:
            raise FolderLockedError(f"{folder} is in use by process {owner['pid']} on host "
                                    f"{owner.get('host')} ({path}); give another --out, or "
                                    f"remove {path} if that run is over")
        if owner["pid"] == me["pid"]:
            raise FolderLockedError(f"{folder} is already in use by this process ({path})")
        if _pid_running(owner["pid"]):
            raise FolderLockedError(f"{folder} is in use by process {owner['pid']} on this "
                                    f"machine ({path}); wait for it to finish or give another "
                                    "--out")
        warnings.warn(f"{path}: taking over the lock of process {owner['pid']}, which is no "
                      "longer running", UserWarning, stacklevel=2)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    raise FolderLockedError(f"{folder}: could not take the lock {path}; another run keeps "
                            "taking it")


def release(path: Path) -> None:
    """Remove the lock at ``path`` if this process still owns it."""
    owner = _read_owner(path)
    if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """``with folder_lock(out):`` holds the lock of the existing folder ``out`` for the block."""
    path = acquire(folder)
    try:
        yield path
    finally:
        release(path)
