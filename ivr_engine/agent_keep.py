"""The agents' pauses and logouts by hand, kept where a restarted daemon finds them.

The router holds them (`acd.router.KeptAgent`) and hands all of them to `AgentStateFile.keep`
whenever one changes: a pause, a new reason, a resume, a logout by hand, a login, whatever the
source (MQTT agent commands and the CLI, the phones' feature codes, the ring-no-answer
auto-pause), since all of them pass the router's agent status (`Router._publish_agent`).

Where: beside the daemon's store (`store.path`, which holds the call records and the
queue_log), named after it: `var/ivr-engine.sqlite3` -> `var/ivr-engine.agents.json`.

    {"version": 1,
     "agents": {"1001": {"state": "paused", "reason": "break", "since": 1717000000.123},
                "1002": {"state": "logged-out", "since": 1717000100.5}}}

An agent who is ready, busy, or logged out by their phone going away has no entry.

Written whole and synchronously on each change (a temporary file, fsync, rename, fsync of
the directory): the state is on disk before the agent's command is answered, so a SIGKILL
right after the answer keeps it. Changes are a person's actions, a few a minute. A write that
fails (disk full, read-only directory) is logged as an ERROR and routing goes on; the next
change writes the whole set again.

At start (`agent_keep_extension`, before the AMI bridge rebuilds the agents) the file is read
and handed to `Router.restore_kept`. A file that cannot be read or is not as above is one
ERROR, set aside as `<name>.unreadable` for a look, and ignored: the agents come up from their
phones as they would without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acd.router import KeptAgent
from ivr_engine.queue_log import store_path
from ivr_engine.state_file import StateFile, Unreadable, dump, entries_of

if TYPE_CHECKING:
    from ivr_engine.acd_gateway import AcdService

log = logging.getLogger(__name__)

VERSION = 1
PAUSED = "paused"
LOGGED_OUT = "logged-out"


class UnreadableState(Unreadable):
    """The file is not an agent state file this version writes."""


def state_path(store: Path) -> Path:
    """The agent state file of the store at `store`."""
    return store.with_name(f"{store.stem}.agents.json")


def encode(kept: Mapping[str, KeptAgent]) -> bytes:
    agents: dict[str, dict[str, Any]] = {}
    for agent_id, k in sorted(kept.items()):
        if k.reason is None:
            agents[agent_id] = {"state": LOGGED_OUT, "since": round(k.since, 3)}
        else:
            agents[agent_id] = {"state": PAUSED, "reason": k.reason, "since": round(k.since, 3)}
    return dump(VERSION, "agents", agents)


def decode(data: bytes) -> dict[str, KeptAgent]:
    """Raise `UnreadableState` naming what is wrong."""
    agents = entries_of(
        data, version=VERSION, key="agents", what="agent state", error=UnreadableState
    )
    out: dict[str, KeptAgent] = {}
    for agent_id, entry in agents.items():
        if not isinstance(entry, dict):
            raise UnreadableState(f"agent {agent_id!r}: not an object")
        since = entry.get("since")
        if (
            not isinstance(since, int | float)
            or isinstance(since, bool)
            or not math.isfinite(since)
        ):
            raise UnreadableState(f"agent {agent_id!r}: 'since' is not a time")
        state, reason = entry.get("state"), entry.get("reason")
        if state == PAUSED and isinstance(reason, str) and reason:
            out[agent_id] = KeptAgent(reason, float(since))
        elif state == LOGGED_OUT:
            out[agent_id] = KeptAgent(None, float(since))
        else:
            raise UnreadableState(f"agent {agent_id!r}: state {state!r}, reason {reason!r}")
    return out


class AgentStateFile(StateFile):
    """`acd.router.AgentKeeper` on a JSON file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            path,
            name="agent state file",
            lost_on_read="pauses and logouts from before the restart are NOT restored, "
            "agents come up from their phones",
            entries="pause(s)/logout(s)",
        )

    def load(self) -> dict[str, KeptAgent]:
        """What the file keeps; {} when there is none, or when it cannot be read (logged)."""
        return self.load_with(decode)

    def keep(self, kept: Mapping[str, KeptAgent]) -> None:
        """Replace the file with `kept`. Never raises for storage reasons: logs an ERROR."""
        self.write(encode(kept), len(kept))


@contextlib.asynccontextmanager
async def agent_keep_extension(service: AcdService) -> AsyncIterator[AgentStateFile]:
    """The AcdService extension: read what the last daemon kept, keep from now on."""
    keeper = AgentStateFile(state_path(store_path(service)))
    kept = await asyncio.to_thread(keeper.load)
    router = service.router
    router.keeper = keeper
    router.restore_kept(kept)
    log.info("ACD: agent pauses kept in %s (%d entries read)", keeper.path, len(kept))
    try:
        yield keeper
    finally:
        router.keeper = None
