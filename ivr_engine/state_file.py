"""Small state files a restarted daemon reads back (agent_keep.py, callback_keep.py): each is
written whole, so that a SIGKILL at any moment leaves either the old file or the new one."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_whole(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data`: a temporary file, fsync, rename, fsync of the directory.
    Raises OSError (disk full, read-only directory) with the old file left as it was."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        # A file object writes the whole text or raises (a bare os.write may write part of it
        # on a full disk and return, and the rename would then keep a truncated file).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # The rename itself is on disk only once the directory is (POSIX).
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def set_aside(path: Path) -> str:
    """Move an unreadable file out of the way (`<name>.unreadable`, for a look); says where."""
    aside = path.with_name(f"{path.name}.unreadable")
    try:
        os.replace(path, aside)
    except OSError:
        return "left in place"
    return f"set aside as {aside}"
