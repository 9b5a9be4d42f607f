"""Callbacks promised to callers kept across a daemon restart (ivr_engine/callback_keep.py and
the router's `restore_callbacks`): a caller presses the callback key and hangs up, the daemon
dies, and the new one still calls the customer back. A restart is a new AcdService (new
router) reading the same file, on the fake AMI of the gateway tests (no PBX, no broker)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from acd.roster import Roster
from acd.router import KeptCallback, Router
from ivr_engine import state_file
from ivr_engine.acd_gateway import AcdService
from ivr_engine.callback_keep import CallbackFile, callback_keep_extension, callbacks_path
from tests.unit.acd.test_router import FakePbx, FakePlacer, FakePublisher
from tests.unit.acd.test_router_gateway import Recorder
from tests.unit.test_agent_keep import PhonesAmi

ROSTER = """
queues:
  general: {wrapup: 0}
agents:
  "1001": {skills: {mandarin: 8}}
"""
NUMBER = "13800138000"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The daemon's store.path, as the real daemon finds it (the environment)."""
    monkeypatch.delenv("IVR_ENGINE_CONFIG", raising=False)
    path = tmp_path / "var" / "ivr.sqlite3"
    path.parent.mkdir()
    monkeypatch.setenv("IVR_ENGINE_STORE_PATH", str(path))
    return path


def service(tmp_path: Path) -> tuple[AcdService, FakePlacer]:
    roster = tmp_path / "agents.yaml"
    roster.write_text(ROSTER)
    s = AcdService(
        roster,
        PhonesAmi(),  # type: ignore[arg-type]
        Recorder(),
        None,
        extensions=[callback_keep_extension],
    )
    placer = FakePlacer()
    s.router.callback_placer = placer
    return s, placer


def callback_router(keeper: CallbackFile, **options: float) -> tuple[Router, FakePlacer]:
    """A router keeping its callbacks in `keeper`, placing them with a FakePlacer."""
    router = Router(Roster.parse(ROSTER), FakePbx(), FakePublisher(), **options)
    placer = FakePlacer()
    router.callback_placer = placer
    router.callback_keeper = keeper
    return router, placer


def caller_asks_for_a_callback(
    router: Router, call_id: str, caller: str = NUMBER, *, hang_up: bool = True
) -> None:
    router.register(
        call_id,
        queue="general",
        requirement="mandarin",
        priority=5,
        language="cmn",
        screen_pop={"customer": "C1"},
        caller=caller,
    )
    router.call_waiting(call_id, f"PJSIP/trunk-{call_id}")
    assert router.key_pressed(call_id, "1") == "callback"
    if hang_up:
        router.channel_gone(f"PJSIP/trunk-{call_id}")  # hangs up after the confirmation


def on_disk(store: Path) -> dict[str, Any]:
    body = json.loads(callbacks_path(store).read_text())
    assert body["version"] == 1
    callbacks: dict[str, Any] = body["callbacks"]
    return callbacks


async def test_a_promised_callback_survives_a_restart_and_the_customer_is_called(
    tmp_path: Path, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before, placer = service(tmp_path)
    async with before.running():
        await before.router.drain()  # the rebuild: the agent's phone is registered, ready
        before.router.pause("1001", "lunch")  # nobody free: the callback waits its turn
        caller_asks_for_a_callback(before.router, "c1")
        kept = on_disk(store)
        assert kept == {
            "c1": {
                "queue": "general",
                "requirement": "mandarin",
                "priority": before.router.calls["c1"].priority,
                "language": "cmn",
                "caller": NUMBER,
                "screen_pop": {"customer": "C1"},
                "requested": pytest.approx(time.time(), abs=5),
                "attempts": 0,
                "not_before": 0,
                "placed": 0,
            }
        }
        # the numbers to call are in it: for the daemon's user only
        assert stat.S_IMODE(callbacks_path(store).stat().st_mode) == 0o600
        assert placer.placed == []
    # SIGKILL: nothing more is written; a new daemon reads the same file.
    caplog.set_level(logging.INFO)
    after, placer = service(tmp_path)
    async with after.running():
        await after.router.drain()  # the agent's phone found registered: ready, not paused
        assert placer.placed == [("c1", "1001", "PJSIP/1001", NUMBER)]
        # owed until the PBX starts it; the ring's time is noted (a restart waits it out)
        ringing = on_disk(store)["c1"]
        assert ringing == {**kept["c1"], "placed": pytest.approx(time.time(), abs=5)}
        after.router.answered("c1", "1001")  # the agent's leg: the PBX dials the customer
        assert on_disk(store) == {}
        after.router.callback_result("c1", "1001", "ANSWER")
        assert on_disk(store) == {}
    assert "1 callback(s) promised before the restart queued again (0 refused)" in caplog.text


async def test_a_failed_callback_is_kept_with_its_retry_time_and_retried_after_a_restart(
    tmp_path: Path,
) -> None:
    keeper = CallbackFile(tmp_path / "ivr.callbacks.json")
    router, placer = callback_router(keeper)
    router.callback_retry_after = 0.5
    async with router:
        router.login("1001")
        router.pause("1001", "x")
        caller_asks_for_a_callback(router, "c1")
        router.resume("1001")
        await router.drain()
        router.answered("c1", "1001")
        assert keeper.load() == {}
        router.callback_result("c1", "1001", "NOANSWER")  # the customer did not pick up
        kept = keeper.load()["c1"]
        assert kept.attempts == 1
        assert kept.not_before == pytest.approx(time.time() + 0.5, abs=0.1)
    # The daemon dies before the retry; the new one waits for the retry's time, then calls.
    router, placer = callback_router(keeper)
    async with router:
        router.login("1001")
        assert router.restore_callbacks(keeper.load()) == []
        await router.drain()
        assert placer.placed == []  # not due yet
        await asyncio.sleep(0.7)
        await router.drain()
        assert placer.placed == [("c1", "1001", "PJSIP/1001", NUMBER)]
        router.answered("c1", "1001")
        router.callback_result("c1", "1001", "BUSY")  # the last attempt (retries: 1)
        assert keeper.load() == {}  # given up, recorded as failed: nothing owed


async def test_a_callback_the_acd_refuses_now_stays_kept_and_is_said_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keeper = CallbackFile(tmp_path / "ivr.callbacks.json")
    broken = KeptCallback(
        "old", "general", "mandarin >= (", 5, "cmn", "13900000000", {}, time.time() - 60
    )
    router, _ = callback_router(keeper)
    async with router:
        assert router.restore_callbacks({"old": broken}) == ["old"]
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "callback old" in errors[0] and "by hand" in errors[0]
        assert "13900000000" not in caplog.text
        router.login("1001")
        router.pause("1001", "x")
        caller_asks_for_a_callback(router, "c2", "13700000000")  # the next write keeps both
        assert set(keeper.load()) == {"old", "c2"}


async def test_an_unreadable_file_is_set_aside_and_a_write_failure_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ivr.callbacks.json"
    content = b'{"version": 1, "callbacks": {"c1": {"queue": "general"}}}'
    path.write_bytes(content)
    keeper = CallbackFile(path)
    assert keeper.load() == {}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "NOT queued again" in errors[0], errors
    assert path.with_name(path.name + ".unreadable").read_bytes() == content  # set aside
    caplog.clear()

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    router, _ = callback_router(keeper)
    async with router:
        router.login("1001")
        router.pause("1001", "x")
        monkeypatch.setattr(state_file.os, "fsync", disk_full)
        caller_asks_for_a_callback(router, "c1")  # does not raise: the caller is told
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "1 promised callback(s) would be lost" in errors[0]
        assert keeper.write_failures == 1 and not path.exists()
        monkeypatch.undo()
        caller_asks_for_a_callback(router, "c2", "13700000000")
        assert "written again" in caplog.text
    assert set(keeper.load()) == {"c1", "c2"}


async def test_a_caller_who_hangs_up_as_told_while_an_agent_is_rung_is_still_called_back(
    tmp_path: Path,
) -> None:
    """The agent frees up while the caller, who asked for a callback, still hears the
    confirmation: the ring is for the live call. The caller then hangs up as told: the ring is
    withdrawn and the callback stays owed, queued as a callback."""
    keeper = CallbackFile(tmp_path / "ivr.callbacks.json")
    router, placer = callback_router(keeper)
    async with router:
        router.login("1001")
        router.pause("1001", "x")
        caller_asks_for_a_callback(router, "c1", hang_up=False)
        router.resume("1001")  # rung for the caller still on the line
        assert router.calls["c1"].state == "ringing" and router.calls["c1"].channel
        router.channel_gone("PJSIP/trunk-c1")
        await router.drain()
        assert set(keeper.load()) == {"c1"}
        # back in the queue as a callback: the agent is rung for it, then the customer
        assert placer.placed == [("c1", "1001", "PJSIP/1001", NUMBER)]


async def test_a_restart_waits_out_a_ring_placed_before_it_and_an_answer_to_it_is_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon died while an agent's phone rang for a callback. If that agent answers, the
    PBX dials the customer without any daemon: the new one must not place it again."""
    keeper = CallbackFile(tmp_path / "ivr.callbacks.json")
    now = time.time()
    rung = KeptCallback("c1", "general", "mandarin", 5, "cmn", NUMBER, {}, now - 30, placed=now)
    keeper.keep_callbacks({"c1": rung})
    router, placer = callback_router(keeper, ring_timeout=0.3, guard_margin=0.2)
    caplog.set_level(logging.INFO)
    async with router:
        router.login("1001")
        assert router.restore_callbacks(keeper.load()) == []
        await router.drain()
        assert placer.placed == [] and "c1" not in router.calls  # the old ring may be answered
        router.answered("c1", "1002")  # it was: AcdAnswered from the old originate
        assert keeper.load() == {}
        await asyncio.sleep(0.7)
        await router.drain()
        assert placer.placed == []  # not placed a second time
    assert "agent 1002 answered a ring placed before the restart" in caplog.text


async def test_a_retry_the_acd_refuses_when_it_is_due_stays_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keeper = CallbackFile(tmp_path / "ivr.callbacks.json")
    later = KeptCallback(
        "old", "general", "mandarin >= (", 5, "cmn", NUMBER, {}, time.time() - 60, 1,
        not_before=time.time() + 0.2,
    )  # fmt: skip
    router, _ = callback_router(keeper)
    async with router:
        assert router.restore_callbacks({"old": later}) == []  # not due yet: not tried
        await asyncio.sleep(0.4)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "callback old" in errors[0] and "by hand" in errors[0]
        assert "old" not in router.calls and set(keeper.load()) == {"old"}
