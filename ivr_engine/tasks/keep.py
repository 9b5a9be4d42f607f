"""Tasks with the ACD, kept where a restarted daemon finds them.

A task accepted on `acd/task/submit` is the bank's promise to answer the customer's chat,
SMS, e-mail or web callback; it must outlive the daemon. `TaskService` hands all of its tasks
to `TaskFile.keep_tasks` whenever the set changes (a task accepted into a queue, taken up by
an agent, done, cancelled or dropped). At start (`task_extension`) the file is read and each
task is submitted again (`TaskService.restore`):

- waiting or offered when the daemon stopped: queued again through the same validation as a
  new submission (the roster may have changed), in the order they were first submitted. A
  web callback whose agent's phone was ringing waits that ring out first (the accept timeout
  and the Originate's slack): the new daemon adopts the old one's owner token, so that if the
  agent answers that ring (the PBX then dials the customer by itself) the callback counts as
  started and is not rung again;
- being worked by an agent: left with that agent (their desktop still has it) and not routed
  again; a WARNING names each;
- refused now (its queue left the roster, nobody takes its channel any more): an ERROR names
  it, and it stays in the file, so that nothing is lost with the next write.

Where: beside the daemon's store, named after it: `var/ivr-engine.sqlite3` ->
`var/ivr-engine.tasks.json`, mode 0600. It holds each task as its submission (the customer's
number and address whole, subject and body with card numbers masked, as agents see them).

    {"version": 1,
     "tasks": {"chat-1": {"task": {"id": "chat-1", "channel": "chat", ...},
                          "submitted_at": 1717000000.123, "state": "waiting", "agent": "",
                          "owner": ""}}}

Written whole and synchronously on each change (state_file.write_whole), like the agent and
callback files; failures are logged and routing goes on (`state_file.StateFile`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ivr_engine.state_file import StateFile, Unreadable, dump, entries_of

VERSION = 1
STATES = ("waiting", "offered", "working")


class UnreadableTasks(Unreadable):
    """The file is not a task file this version writes."""


@dataclass(frozen=True, slots=True)
class KeptTask:
    """One task as kept: its submission (validated again when restored), when it was first
    submitted (wall clock), and where it stood."""

    submission: Mapping[str, Any]
    submitted_at: float
    state: str = "waiting"
    agent: str = ""
    owner: str = ""  # a callback offered (its agent's phone ringing): the ringing daemon


def tasks_path(store: Path) -> Path:
    """The task file of the store at `store`."""
    return store.with_name(f"{store.stem}.tasks.json")


def encode(kept: Mapping[str, KeptTask]) -> bytes:
    tasks = {
        task_id: {
            "task": dict(k.submission),
            "submitted_at": round(k.submitted_at, 3),
            "state": k.state,
            "agent": k.agent,
            "owner": k.owner,
        }
        for task_id, k in sorted(kept.items())
    }
    return dump(VERSION, "tasks", tasks)


def decode(data: bytes) -> dict[str, KeptTask]:
    """Raise `UnreadableTasks` naming what is wrong (the submissions themselves are checked
    when restored, by the submission's own validation)."""
    tasks = entries_of(data, version=VERSION, key="tasks", what="task", error=UnreadableTasks)
    out: dict[str, KeptTask] = {}
    for task_id, entry in tasks.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("task"), dict):
            raise UnreadableTasks(f"task {task_id!r}: no submission object")
        at = entry.get("submitted_at")
        if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
            raise UnreadableTasks(f"task {task_id!r}: 'submitted_at' is not a time")
        state, agent, owner = entry.get("state"), entry.get("agent"), entry.get("owner", "")
        if state not in STATES or not isinstance(agent, str) or not isinstance(owner, str):
            raise UnreadableTasks(f"task {task_id!r}: state {state!r}, agent {agent!r}")
        out[task_id] = KeptTask(entry["task"], float(at), state, agent, owner)
    return out


class TaskFile(StateFile):
    """`TaskService`'s keeper on a JSON file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            path,
            name="task file",
            lost_on_read="tasks with the ACD before the restart are NOT queued again; they "
            "are in that file",
            entries="task(s)",
            mode=0o600,
        )

    def load(self) -> dict[str, KeptTask]:
        """What the file keeps; {} when there is none, or when it cannot be read (logged)."""
        return self.load_with(decode)

    def keep_tasks(self, kept: Mapping[str, KeptTask]) -> None:
        """Replace the file with `kept`. Never raises for storage reasons: logs an ERROR."""
        self.write(encode(kept), len(kept))
