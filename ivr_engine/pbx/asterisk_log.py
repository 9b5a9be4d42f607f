"""Reading Asterisk's `messages` log: marks, new lines since a mark, and problems in them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# "[2026-11-25 13:07:57.945] WARNING[18942] ccss.c: Could not find ..." (logger.conf
# dateformat %F %T.%3q). The thread id may carry a call id: "WARNING[123][C-00000001]".
_LEVEL = re.compile(r"^\[[^\]]*\]\s+(?P<level>[A-Z]+)\[")

PROBLEM_LEVELS = frozenset({"WARNING", "ERROR"})


def level_of(line: str) -> str | None:
    m = _LEVEL.match(line)
    return m.group("level") if m else None


def problems(lines: list[str]) -> list[str]:
    """The WARNING and ERROR lines among `lines`."""
    return [line for line in lines if level_of(line) in PROBLEM_LEVELS]


@dataclass(frozen=True)
class LogMark:
    """A position in the log file: its inode and byte offset when the mark was taken."""

    inode: int
    offset: int


class AsteriskLog:
    def __init__(self, path: Path):
        self.path = path

    def mark(self) -> LogMark:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return LogMark(inode=0, offset=0)
        return LogMark(inode=st.st_ino, offset=st.st_size)

    def lines_since(self, mark: LogMark) -> list[str]:
        """Complete lines written after `mark`; from the start if the file was replaced."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        offset = mark.offset if (st.st_ino == mark.inode and st.st_size >= mark.offset) else 0
        with self.path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
        text = data.decode("utf-8", "replace")
        if not text.endswith("\n"):
            # A line still being written: leave it for the next read.
            text = text[: text.rfind("\n") + 1]
        return text.splitlines()
