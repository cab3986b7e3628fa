"""Files that are never half-written: atomic replacement, fsync, and one writer per output folder.

**Atomic writes** (``atomic_write``): a file is written to a temporary sibling, flushed, fsynced
and renamed over its target (``os.replace``), then the folder is fsynced; a kill or a full disk
at any moment leaves the previous version whole. Every file minift saves goes through it.

**The folder lock** (``acquire``, ``release``, ``folder_lock``): two runs writing into one folder interleave their logs and swap each other's models without a
word, so every command that writes a folder holds ``FOLDER/.minift.lock`` while it runs:

- the file is created with ``O_CREAT | O_EXCL``, which the operating system makes atomic: of two
  runs starting at once, exactly one creates it;
- it holds ``{"pid": ..., "host": ...}``; a second run finds it and is refused with
  ``FolderLockedError``, which names the owner;
- a lock left by a run that died without cleaning up (SIGKILL, power loss) is *stale*: when its
  host is this machine and its pid is no longer running, it is taken over with a warning. A lock
  from another host is never taken over (its pid means nothing here): remove it by hand when no
  run uses the folder;
- it is removed when the run ends, also on an error or Ctrl-C.

Standard library only, so that any project can lift this file.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

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
    when the folder is not writable.
    """
    path = Path(folder) / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):  # a stale lock is removed, then created again: another run may win
        if _create(path, me):
            return path
        owner = _read_owner(path)
        if owner is None:  # released between our two looks
            continue
        if not owner:
            raise FolderLockedError(
                f"{folder} is locked by {path}, which names no owner; if no run is writing "
                f"into {folder}, remove {path}"
            )
        if owner.get("host") != me["host"]:
            raise FolderLockedError(
                f"{folder} is in use by process {owner['pid']} on host {owner.get('host')} "
                f"({path}); give another --out, or remove {path} if that run is over"
            )
        if owner["pid"] == me["pid"]:
            raise FolderLockedError(f"{folder} is already in use by this process ({path})")
        if _pid_running(owner["pid"]):
            raise FolderLockedError(
                f"{folder} is in use by process {owner['pid']} on this machine ({path}); wait "
                "for it to finish or give another --out"
            )
        warnings.warn(
            f"{path}: taking over the lock of process {owner['pid']}, which is no longer running",
            UserWarning,
            stacklevel=2,
        )
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    raise FolderLockedError(f"{folder}: could not take the lock {path}; another run keeps taking it")


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


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make renames inside ``folder`` durable (a no-op where a folder cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``data`` (bytes, or a function that writes into a binary file) to ``path`` atomically.

    A temporary file beside ``path`` is written, flushed and fsynced, given the mode an ordinary
    ``open`` would give (0o666 less the umask: ``mkstemp`` alone makes it 0o600), renamed over
    ``path``, and the folder is fsynced. A crash or a full disk part-way leaves the old file (or
    none), never a half-written one, and removes the temporary file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
