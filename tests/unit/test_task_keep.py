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
from ivr_engine.protocol.ami import AmiEvent, Fields
from ivr_engine.tasks import service as service_module
from ivr_engine.tasks.callback import AmiCallbackDialer
from ivr_engine.tasks.keep import KeptTask, TaskFile, tasks_path
from ivr_engine.tasks.service import TaskService, task_extension, task_keep_extension
from tests.unit.test_acd_tasks import (
    CALLBACK,
    ROSTER,
    Dialer,
    Events,
    FakeAmi,
    Pbx,
    Publisher,
    reply,
    submit,
    with_,
)

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

    acd = Service()
    async with router, task_extension(acd) as after:  # type: ignore[arg-type]
        after.dialer = dialer
        keeping = task_keep_extension(acd)  # type: ignore[arg-type]
        found = await keeping.__aenter__()  # the same file, found from the store
        assert found is not None and found.path == keeper.path
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
        await keeping.__aexit__(None, None, None)
        assert after.keeper is None
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


def test_a_temporary_file_left_by_a_killed_write_is_removed_when_the_file_is_read(
    tmp_path: Path,
) -> None:
    keeper = TaskFile(tmp_path / "ivr.tasks.json")
    keeper.keep_tasks({"t1": KeptTask({"id": "t1"}, 1.0)})
    left = tmp_path / "ivr.tasks.json.4242.tmp"  # SIGKILL between open and rename
    left.write_text('{"version": 1, "tasks": {"t1": {"tas')
    assert set(keeper.load()) == {"t1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ivr.tasks.json"]


def test_the_dialer_acts_on_the_rings_of_an_adopted_owner_only() -> None:
    ami, events = FakeAmi(), Events()
    dialer = AmiCallbackDialer(ami, events)  # type: ignore[arg-type]
    dialer.start()

    def answered(owner: str, task: str) -> None:
        pairs = [("UserEvent", "AcdTaskAnswered"), ("Task", task), ("Agent", "1007")]
        ami.callbacks["UserEvent"](AmiEvent("UserEvent", Fields([*pairs, ("Owner", owner)])))

    answered("old-daemon", "cb-1")  # before the adoption: another daemon's
    dialer.adopt("old-daemon")
    answered("old-daemon", "cb-2")
    answered("someone-else", "cb-3")
    assert [seen[1] for seen in events.seen] == ["cb-2"]
    dialer.close()


async def test_a_callback_ringing_at_the_restart_waits_the_ring_out_and_an_answer_starts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon died while an agent's phone rang for a web callback. If that agent answers
    the old ring, the PBX dials the customer by itself: the callback must not be rung again."""
    monkeypatch.setattr(service_module, "RESPONSE_SLACK", 0.1)  # the Originate's slack
    keeper = TaskFile(tmp_path / "ivr.tasks.json")
    dialer = Dialer()
    dialer.owner = "old-daemon"  # type: ignore[attr-defined]
    router, tasks = service(keeper, dialer)
    async with router, tasks.running():
        router.login("1007")
        submit(tasks, id="cb-1", **CALLBACK)
        await asyncio.sleep(0)
        assert dialer.rung[0][0] == "cb-1"
        kept = keeper.load()
        assert kept["cb-1"].state == "offered" and kept["cb-1"].owner == "old-daemon"
        dialer.release.set()
    for answered in (True, False):
        caplog.clear()
        caplog.set_level(logging.INFO)
        dialer = Dialer()
        adopted: list[str] = []
        dialer.adopt = adopted.append  # type: ignore[attr-defined]
        router, tasks = service(keeper, dialer)
        tasks._accept_timeout = 0.2  # with the slack, how long the old ring may last
        async with router, tasks.running():
            router.login("1007")
            assert tasks.restore(kept) == (1, 0, 0) and adopted == ["old-daemon"]
            await asyncio.sleep(0)
            assert dialer.rung == [] and not tasks.tasks  # not during the old ring
            assert set(keeper.load()) == {"cb-1"}
            if answered:
                tasks.callback_answered("cb-1", "1007", "PJSIP/1007-00000009")
                assert keeper.load() == {} and dialer.hung_up == []
            await asyncio.sleep(0.6)
            if answered:  # started by the PBX: never rung again
                assert dialer.rung == [] and not tasks.tasks
                assert "answered a ring placed before the restart" in caplog.text
            else:  # nobody answered it: rung anew (and again after each unanswered ring)
                assert dialer.rung and {r[0] for r in dialer.rung} == {"cb-1"}
            dialer.release.set()


async def test_a_task_submitted_again_replaces_the_copy_kept_as_refused(tmp_path: Path) -> None:
    keeper = TaskFile(tmp_path / "ivr.tasks.json")
    chat = json.loads(with_(id="chat-5", queue="closed"))
    router, tasks = service(keeper)
    async with router, tasks.running():
        assert tasks.restore({"chat-5": KeptTask(chat, time.time() - 60)}) == (0, 0, 1)
        router.login("1008")
        submit(tasks, id="chat-5")  # the customer's system sent it again, to a queue in force
        reply(tasks, "1008", "chat-5", "accept")
        reply(tasks, "1008", "chat-5", "done")
        assert keeper.load() == {}  # the refused copy went with it: nothing to queue again
