"""Callbacks promised to callers, kept where a restarted daemon finds them.

A caller who presses the callback key is told the bank will call back, and hangs up: from then
on the promise lives only in the router. The router hands every promised callback to
`CallbackFile.keep_callbacks` whenever the set changes: asked for (`key_pressed`), moved to
another queue by an overflow, started (the agent answered the callback's ring: the PBX dials
the customer from there), failed and due again (`callback_result`, with the time of the
retry), given up. At start the file is read and handed to `Router.restore_callbacks`, so
that a daemon killed (or stopped) with callbacks owed puts them back in their queues.

Where: beside the daemon's store, named after it: `var/ivr-engine.sqlite3` ->
`var/ivr-engine.callbacks.json`, mode 0600, since it holds the numbers to call (nothing is
masked there: the number is what the callback dials).

    {"version": 1,
     "callbacks": {"1717000000.42": {"queue": "general", "requirement": "mandarin",
                   "priority": 5, "language": "cmn", "caller": "13800138000",
                   "screen_pop": {...}, "requested": 1717000012.3, "attempts": 0,
                   "not_before": 0, "placed": 0}}}

Written whole and synchronously on each change (state_file.write_whole): the promise is on
disk before the caller hears it confirmed. Callbacks are a caller's choice, a few a minute
even on a busy hotline. A write that fails is logged as an ERROR naming how many callbacks a
restart would lose; routing goes on and the next change writes the whole set again. A file
that cannot be read is one ERROR, set aside as `<name>.unreadable` (the numbers are still in
it, for someone to call by hand), and the daemon starts without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acd.router import KeptCallback
from ivr_engine.queue_log import store_path
from ivr_engine.state_file import StateFile, Unreadable, dump, entries_of

if TYPE_CHECKING:
    from ivr_engine.acd_gateway import AcdService

log = logging.getLogger(__name__)

VERSION = 1
_TEXT = ("queue", "requirement", "language", "caller")


class UnreadableCallbacks(Unreadable):
    """The file is not a callback file this version writes."""


def callbacks_path(store: Path) -> Path:
    """The callback file of the store at `store`."""
    return store.with_name(f"{store.stem}.callbacks.json")


def encode(kept: Mapping[str, KeptCallback]) -> bytes:
    callbacks: dict[str, dict[str, Any]] = {}
    for call_id, k in sorted(kept.items()):
        callbacks[call_id] = {
            "queue": k.queue,
            "requirement": k.requirement,
            "priority": k.priority,
            "language": k.language,
            "caller": k.caller,
            "screen_pop": dict(k.screen_pop),
            "requested": round(k.requested, 3),
            "attempts": k.attempts,
            "not_before": round(k.not_before, 3),
            "placed": round(k.placed, 3),
        }
    return dump(VERSION, "callbacks", callbacks)


def _time(call_id: str, entry: Mapping[str, Any], key: str) -> float:
    value = entry.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise UnreadableCallbacks(f"callback {call_id!r}: {key!r} is not a time")
    return float(value)


def _count(call_id: str, entry: Mapping[str, Any], key: str) -> int:
    value = entry.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise UnreadableCallbacks(f"callback {call_id!r}: {key!r} is not a whole number")
    return value


def decode(data: bytes) -> dict[str, KeptCallback]:
    """Raise `UnreadableCallbacks` naming what is wrong."""
    callbacks = entries_of(
        data, version=VERSION, key="callbacks", what="callback", error=UnreadableCallbacks
    )
    out: dict[str, KeptCallback] = {}
    for call_id, entry in callbacks.items():
        if not isinstance(entry, dict):
            raise UnreadableCallbacks(f"callback {call_id!r}: not an object")
        text: dict[str, str] = {}
        for key in _TEXT:
            value = entry.get(key)
            if not isinstance(value, str):
                raise UnreadableCallbacks(f"callback {call_id!r}: {key!r} is not text")
            text[key] = value
        if not text["caller"] or not text["queue"]:
            raise UnreadableCallbacks(f"callback {call_id!r}: no number or no queue")
        pop = entry.get("screen_pop")
        if not isinstance(pop, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in pop.items()
        ):
            raise UnreadableCallbacks(f"callback {call_id!r}: 'screen_pop' is not text by text")
        out[call_id] = KeptCallback(
            call_id,
            text["queue"],
            text["requirement"],
            _count(call_id, entry, "priority"),
            text["language"],
            text["caller"],
            pop,
            _time(call_id, entry, "requested"),
            _count(call_id, entry, "attempts"),
            _time(call_id, entry, "not_before"),
            _time(call_id, {"placed": 0, **entry}, "placed"),
        )
    return out


class CallbackFile(StateFile):
    """`acd.router.CallbackKeeper` on a JSON file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            path,
            name="callback file",
            lost_on_read="callbacks promised before the restart are NOT queued again; the "
            "numbers are in that file, call them by hand",
            entries="promised callback(s)",
            mode=0o600,
        )

    def load(self) -> dict[str, KeptCallback]:
        """What the file keeps; {} when there is none, or when it cannot be read (logged)."""
        return self.load_with(decode)

    def keep_callbacks(self, kept: Mapping[str, KeptCallback]) -> None:
        """Replace the file with `kept`. Never raises for storage reasons: logs an ERROR."""
        self.write(encode(kept), len(kept))


@contextlib.asynccontextmanager
async def callback_keep_extension(service: AcdService) -> AsyncIterator[CallbackFile]:
    """The AcdService extension: queue again what the last daemon promised, keep from now."""
    keeper = CallbackFile(callbacks_path(store_path(service)))
    kept = await asyncio.to_thread(keeper.load)
    router = service.router
    router.callback_keeper = keeper
    refused = router.restore_callbacks(kept)
    if kept:
        log.info(
            "ACD: %d callback(s) promised before the restart queued again (%d refused), "
            "kept in %s",
            len(kept) - len(refused),
            len(refused),
            keeper.path,
        )
    try:
        yield keeper
    finally:
        router.callback_keeper = None
