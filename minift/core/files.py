"""Files that are never half-written: atomic replacement and fsync.

Every file minift saves goes through ``atomic_write``. (One writer per output folder, the lock,
is the application's: ``minift.run.lock``.) Standard library only, so that any project can lift
this file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


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
        umask = os.umask(0)  # read it: the only way is to set it, then put it back
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
