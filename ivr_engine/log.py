"""Logging set-up: every line of a call carries its call id (a contextvar)."""

from __future__ import annotations

import contextvars
import logging
import sys

call_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("call_id", default="-")


class _CallIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.call_id = call_id_var.get()
        return True


FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(call_id)s] %(message)s"


class _SharedFormatter(logging.Formatter):
    """One formatter for all our handlers that formats each record once: the daemon writes
    every line to stderr and to its log file, and formatting (the time above all) was done
    twice per line."""

    def format(self, record: logging.LogRecord) -> str:
        cached: str | None = getattr(record, "_ivr_engine_text", None)
        if cached is None:
            cached = super().format(record)
            record._ivr_engine_text = cached
        return cached


def setup(level: str | int = "INFO", *, stream: object = None, logfile: str | None = None) -> None:
    """Configure the root logger once; safe to call again (handlers are replaced)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_ivr_engine", False):
            root.removeHandler(handler)
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]  # type: ignore[arg-type]
    if logfile:
        handlers.append(logging.FileHandler(logfile, encoding="utf-8"))
    formatter = _SharedFormatter(FORMAT)
    call_id = _CallIdFilter()
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(call_id)
        handler._ivr_engine = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    # aiosqlite logs every statement at DEBUG: too much even for a debugging session.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))
