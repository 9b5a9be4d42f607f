"""Small state files a restarted daemon reads back (agent_keep.py, callback_keep.py,
tasks/keep.py): each is written whole, so that a SIGKILL at any moment leaves either the old
file or the new one (and at most a temporary file, removed when the file is next read)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Unreadable(ValueError):
    """A state file that is not one this version writes; the message says what is wrong."""


def dump(version: int, key: str, entries: dict[str, Any]) -> bytes:
    """A state file's bytes: `{"version": version, key: entries}`, UTF-8 JSON."""
    body = {"version": version, key: entries}
    return (json.dumps(body, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def entries_of(
    data: bytes, *, version: int, key: str, what: str, error: type[Unreadable]
) -> dict[str, Any]:
    """The entries object of a file `dump` wrote; raise `error` naming what is wrong."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8
        raise error(f"not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("version") != version:
        raise error(f"not a version {version} {what} object")
    entries = body.get(key)
    if not isinstance(entries, dict):
        raise error(f"no {key!r} object")
    return entries


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
    # The rename itself is on disk only once the directory is (POSIX). The new file is in
    # place either way: a failure here is said, not counted as a failed write.
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        log.warning("%s written, but its directory could not be synced: %s", path, exc)


def set_aside(path: Path) -> str:
    """Move an unreadable file out of the way (`<name>.unreadable`, for a look); says where."""
    aside = path.with_name(f"{path.name}.unreadable")
    try:
        os.replace(path, aside)
    except OSError:
        return "left in place"
    return f"set aside as {aside}"


class StateFile:
    """One such file, read back at start and written whole on every change. Reading and
    writing never raise for storage reasons: an unreadable file is one ERROR saying what is
    NOT restored (`lost_on_read`) and is set aside; a failed write is an ERROR counting the
    entries (`entries`) a restart would lose, and the next change writes them all again."""

    def __init__(
        self, path: Path, *, name: str, lost_on_read: str, entries: str, mode: int = 0o644
    ) -> None:
        self.path = path
        self.name = name
        self.lost_on_read = lost_on_read
        self.entries = entries
        self.mode = mode
        self.writes = 0
        self.write_failures = 0
        self._failing = False

    def read(self) -> bytes | None:
        """The file's bytes; None when there is none or it cannot be read (logged). A
        temporary file left by a write that a SIGKILL cut short is removed first."""
        for stale in self.path.parent.glob(f"{self.path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.unreadable(str(exc))
            return None

    def load_with(self, decode: Callable[[bytes], dict[str, T]]) -> dict[str, T]:
        """What the file keeps, decoded; {} when there is none, or when it cannot be read or
        `decode` finds it `Unreadable` (logged, and the file set aside)."""
        data = self.read()
        if data is None:
            return {}
        try:
            return decode(data)
        except Unreadable as exc:
            self.unreadable(str(exc))
            return {}

    def unreadable(self, why: str) -> None:
        log.error(
            "ACD: %s %s cannot be read (%s; %s): %s",
            self.name,
            self.path,
            why,
            set_aside(self.path),
            self.lost_on_read,
        )

    def write(self, data: bytes, count: int) -> None:
        try:
            write_whole(self.path, data, mode=self.mode)
        except OSError as exc:
            self.write_failures += 1
            self._failing = True
            log.error(
                "ACD: %s %s cannot be written (%s): %d %s would be lost if the daemon "
                "restarted now; routing goes on",
                self.name,
                self.path,
                exc,
                count,
                self.entries,
            )
            return
        self.writes += 1
        if self._failing:
            self._failing = False
            log.warning("ACD: %s %s written again", self.name, self.path)
