"""One hotline per PBX: extension 4008 always reaches agi://127.0.0.1:4573.

Tests that serve 4573 (the daemon, a fake daemon, a port held closed) or call 4008 take this
lock for their whole duration, so that test runs in parallel checkouts or sessions on the same
machine wait for each other instead of answering each other's calls.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_PATH = Path("/tmp/ivr-engine-hotline.lock")


@contextlib.contextmanager
def hotline_lock(timeout: float = 1200.0) -> Iterator[None]:
    with open(LOCK_PATH, "a+") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{LOCK_PATH} held for {timeout:.0f}s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
