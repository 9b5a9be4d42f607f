"""Integration fixtures: the shared dev PBX.

`dev_pbx` (session scope) brings the dev PBX up, building the Debian root on first use
(about 70 s cold, about 1-2 s warm), and yields the `DevPbx`: `.root`, `.ami_port`,
`.sip_port`, `.cli(cmd) -> str`, `.log_path()`, `.mark()` / `.lines_since(mark)` for the
messages log, `.cdr_path()`, `.in_root(path)` and `.sipp_cmd(*args)`.

The session holds a lease on the PBX while it runs. At the end it stops the PBX only if this
session started it and no other live process (another test run, a developer's shell) holds a
lease. Nothing is skipped: no root, no debootstrap or a port taken by a stranger fails loudly.

Every test that uses `dev_pbx` must carry the `pbx` marker; collection fails otherwise, so
`-m "not pbx"` really leaves the PBX alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivr_engine import config
from ivr_engine.pbx import DevPbx

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if "dev_pbx" in getattr(item, "fixturenames", ()) and item.get_closest_marker("pbx") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests using the dev_pbx fixture must be marked @pytest.mark.pbx: "
            + ", ".join(unmarked)
        )


def _progress(line: str) -> None:
    print(f"[dev_pbx] {line}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def dev_pbx() -> Iterator[DevPbx]:
    settings = config.load()
    pbx = DevPbx.from_settings(settings, base=REPO, progress=_progress)
    with pbx.lease():
        result = pbx.up()
        try:
            yield pbx
        finally:
            others = [pid for pid in pbx.live_leases() if pid != os.getpid()]
            if result.started and not others:
                pbx.down()
            elif result.started:
                _progress(f"leaving the PBX running for lease holders {others}")


@pytest.fixture
def hotline() -> Iterator[None]:
    """Exclusive use of the hotline (4008 -> 127.0.0.1:4573) for one test: see
    tests/support/hotline.py."""
    from tests.support.hotline import hotline_lock

    with hotline_lock():
        yield
