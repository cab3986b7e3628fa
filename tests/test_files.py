"""minift.core.files: the one atomic write leaves the previous file or the new one, never a part
and no temporary file, and gives the mode open() gives. (The final save of a run under a disk
that fills is in test_safetensors.py.)"""

import errno
import os

import pytest

from minift.core.files import atomic_write


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, b"old")

    def half_then_fail(f):
        f.write(b"new, but only ha")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no temporary file left
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_write_gives_the_mode_open_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "atomic", b"x")
        (tmp_path / "plain").write_bytes(b"x")
    finally:
        os.umask(old)
    mode = (tmp_path / "atomic").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain").stat().st_mode & 0o777 == 0o666 & ~umask

