"""Fault-suite fixtures: the shared dev PBX and the hotline lock (from the integration
suite), prompts built once, and a daemon factory that never leaves a process behind."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import dev_pbx, hotline  # noqa: F401  (fixtures, re-exported)
from tests.support.daemon import Daemon, run_cli


@pytest.fixture(scope="session")
def prompts_built() -> None:
    run_cli("prompts", "build")  # incremental: fast when make already built them


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """`daemons(workdir=None, **env)` makes a `Daemon`; every one made is stopped at the end
    (SIGKILL if it ignores SIGTERM), so a failing test never leaves one serving 4573."""
    made: list[Daemon] = []

    def make(workdir: Path | None = None, **env: str) -> Daemon:
        d = Daemon(workdir or tmp_path, extra_env=env)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop(timeout=40)
