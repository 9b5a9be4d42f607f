"""Tasks with the ACD kept across a daemon restart (ivr_engine/tasks/keep.py and
`TaskService.restore`): the real Router and TaskService as in test_acd_tasks.py (fake PBX, a
recording publisher, a fake callback dialer); a restart is a new router and service reading
the same task file."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from acd.router import Router
from ivr_engine.config import AcdSettings
from ivr_engine.tasks.keep import KeptTask, TaskFile, tasks_path
from ivr_engine.tasks.service import TaskService, task_extension
from tests.unit.test_acd_tasks import CALLBACK, ROSTER, Dialer, Pbx, Publisher, reply, submit

CARD = "6222021234567890123"  # in GOOD's body, spaced


def service(keeper: TaskFile, dialer: Dialer | None = None) -> tuple[Router, TaskService]:
    pub = Publisher()
    router = Router(ROSTER, Pbx(), pub, ring_timeout=5, guard_margin=10)
    tasks = TaskService(router, pub, dialer=dialer or Dialer())
    tasks.keeper = keeper
    return router, tasks


def on_disk(path: Path) -> dict[str, Any]:
    body = json.loads(path.read_text())
    assert body["version"] == 1
    tasks: dict[str, Any] = body["tasks"]
    return tasks


async def test_waiting_and_offered_tasks_are_queued_again_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "ivr.sqlite3"
    keeper = TaskFile(tasks_path(store))
    router, tasks = service(keeper)
    async with router, tasks.running():
        router.login("1008")  # the chat agent
        submit(tasks, id="chat-1")
        reply(tasks, "1008", "chat-1", "accept")  # being worked
        submit(tasks, id="chat-2")  # offered to 1008 (room for three), not yet accepted
        submit(tasks, id="cb-1", **CALLBACK)  # nobody who takes callbacks is logged in
        kept = on_disk(keeper.path)
        assert {t: (k["state"], k["agent"]) for t, k in kept.items()} == {
            "chat-1": ("working", "1008"),
            "chat-2": ("offered", "1008"),
            "cb-1": ("waiting", ""),
        }
        chat = kept["chat-2"]["task"]
        assert chat["customer"]["number"] == "13800138000"  # whole: the task needs it
        assert kept["cb-1"]["task"]["callback_number"] == "13800138000"
        # card numbers never reach the disk, as agents never see them
        assert CARD not in keeper.path.read_text().replace(" ", "")
        assert "*" in chat["body"] and chat["body"].endswith("was declined")
        assert stat.S_IMODE(keeper.path.stat().st_mode) == 0o600
    # SIGKILL: nothing more is written. The new daemon's extension reads the same file.
    monkeypatch.setenv("IVR_ENGINE_STORE_PATH", str(store))
    monkeypatch.delenv("IVR_ENGINE_CONFIG", raising=False)
    caplog.set_level(logging.INFO)
    pub = Publisher()
    router = Router(ROSTER, Pbx(), pub, ring_timeout=5, guard_margin=10)
    dialer = Dialer()

    class Ami:
        def subscribe(self, name: str, callback: Any) -> Any:
            return lambda: None

    class Service:
        def __init__(self) -> None:
            self.router, self.publisher, self.mqtt = router, pub, None
            self.ami, self.settings = Ami(), AcdSettings()

    async with router, task_extension(Service()) as after:  # type: ignore[arg-type]
        after.dialer = dialer
        assert sorted(after.tasks) == ["cb-1", "chat-2"]
        assert all(r.state == "waiting" for r in after.tasks.values())
        assert after.tasks["chat-2"].submitted_at == kept["chat-2"]["submitted_at"]
        assert set(on_disk(keeper.path)) == {"cb-1", "chat-2"}
        router.login("1008")  # its desktop still has chat-1: only chat-2 is offered
        assert [p["task_id"] for p in pub.on("agent/1008/task")] == ["chat-2"]
        router.login("1007")
        await asyncio.sleep(0)
        assert dialer.rung == [("cb-1", "1007", "PJSIP/1007", "13800138000")]
        reply(after, "1008", "chat-2", "accept")
        reply(after, "1008", "chat-2", "done")
        assert set(on_disk(keeper.path)) == {"cb-1"}
        dialer.release.set()
    assert "2 task(s) from before the restart queued again, 1 left with the agents" in caplog.text
    left = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("chat-1 was being worked by agent 1008" in m for m in left), left


async def test_a_task_refused_now_stays_kept_and_is_said_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keeper = TaskFile(tmp_path / "ivr.tasks.json")
    gone = {"id": "e-1", "channel": "email", "queue": "closed", "skills": "cards"}
    gone.update(subject="statement", body="please resend")
    router, tasks = service(keeper)
    async with router, tasks.running():
        restored = tasks.restore({"e-1": KeptTask(gone, time.time() - 60)})
        assert restored == (0, 0, 1) and not tasks.tasks
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "task e-1" in errors[0] and "unknown queue" in errors[0]
        submit(tasks, id="chat-9")  # the next write keeps it beside the new one
        assert set(on_disk(keeper.path)) == {"e-1", "chat-9"}


def test_an_unreadable_task_file_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ivr.tasks.json"
    content = b'{"version": 1, "tasks": {"t": {"task": {}, "state": "lost"}}}'
    path.write_bytes(content)
    assert TaskFile(path).load() == {}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "NOT queued again" in errors[0], errors
    assert path.with_name(path.name + ".unreadable").read_bytes() == content
