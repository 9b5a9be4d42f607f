"""Pauses and logouts by hand kept across a daemon restart (ivr_engine/agent_keep.py and the
router's `restore_kept`): a restart is a new AcdService (new router, new AMI bridge) reading
the same state file, on the fake AMI of the gateway tests (no PBX, no broker)."""

from __future__ import annotations

import errno
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from acd.agent_state import AgentState
from acd.roster import Roster
from acd.router import KeptAgent, Router
from ivr_engine import state_file
from ivr_engine.acd_gateway import AcdService
from ivr_engine.agent_keep import AgentStateFile, agent_keep_extension, state_path
from ivr_engine.pbx_commands import AcdAmiBridge
from ivr_engine.protocol.ami import AmiResponse, Fields
from tests.unit.acd.test_router import FakePbx, FakePublisher
from tests.unit.acd.test_router_gateway import FakeAmi, Recorder

ROSTER = """
agents:
  "1001": {skills: {private_banking: 8, cantonese: 7}}
  "1002": {skills: {private_banking: 6, cantonese: 6}}
"""


class PhonesAmi(FakeAmi):
    """The gateway tests' fake AMI, with each phone's DEVICE_STATE of our choosing."""

    def __init__(self, states: Mapping[str, str] | None = None) -> None:
        super().__init__([], {})
        self.states = dict(states or {})

    async def action(self, action: Mapping[str, str], **kw: Any) -> AmiResponse:
        variable = action.get("Variable", "")
        if variable.startswith("DEVICE_STATE(") and "Channel" not in action:
            endpoint = variable[len("DEVICE_STATE(") : -1]
            value = self.states.get(endpoint, "NOT_INUSE")
            fields = Fields([("Response", "Success"), ("Value", value)])
            return AmiResponse("Getvar", "1", "Success", "", fields)
        return await super().action(action, **kw)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The daemon's store.path, as the real daemon finds it (the environment)."""
    monkeypatch.delenv("IVR_ENGINE_CONFIG", raising=False)
    path = tmp_path / "var" / "ivr.sqlite3"
    path.parent.mkdir()
    monkeypatch.setenv("IVR_ENGINE_STORE_PATH", str(path))
    return path


def service(tmp_path: Path, ami: FakeAmi | None = None) -> AcdService:
    roster = tmp_path / "agents.yaml"
    if not roster.exists():
        roster.write_text(ROSTER)
    return AcdService(
        roster,
        ami or PhonesAmi(),  # type: ignore[arg-type]
        Recorder(),
        None,
        extensions=[agent_keep_extension],
    )


async def command(s: AcdService, verb: str, agent: str, reason: str = "") -> None:
    body = {"id": f"t-{verb}-{agent}", "verb": verb, "agent": agent}
    if reason:
        body["reason"] = reason
    await s.handle_message(json.dumps(body).encode())
    publisher = s.publisher
    assert isinstance(publisher, Recorder)
    topic, reply = publisher.out[-1]
    assert topic == f"acd/reply/t-{verb}-{agent}" and reply["ok"], reply


def states(router: Router) -> dict[str, tuple[str, str | None]]:
    return {a["agent"]: (a["state"], a["reason"]) for a in router.agents()}


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def kept_on_disk(store: Path, agents: dict[str, dict[str, Any]]) -> None:
    """What an earlier daemon left in the store's agent state file."""
    state_path(store).write_text(json.dumps({"version": 1, "agents": agents}))


def paused(reason: str, since: float) -> dict[str, Any]:
    return {"state": "paused", "reason": reason, "since": since}


def vip_caller_waits(router: Router, call_id: str) -> None:
    """A VIP caller (Cantonese, private banking) registered by the IVR and now waiting."""
    router.register(
        call_id,
        queue="vip",
        requirement="cantonese and private_banking",
        priority=10,
        language="yue",
        screen_pop={},
    )
    router.call_waiting(call_id, "PJSIP/trunk-1")


def on_disk(store: Path) -> dict[str, Any]:
    body = json.loads(state_path(store).read_text())
    assert body["version"] == 1
    agents: dict[str, Any] = body["agents"]
    return agents


async def test_a_pause_and_a_logout_by_hand_survive_a_restart(
    tmp_path: Path, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = service(tmp_path)
    async with before.running():
        await before.router.drain()  # the rebuild: both phones registered, both ready
        assert states(before.router) == {"1001": ("ready", None), "1002": ("ready", None)}
        await command(before, "pause", "1001", "lunch")
        await command(before, "pause", "1001", "break")  # a new reason replaces the old
        await command(before, "logout", "1002")
        kept = on_disk(store)
        now = pytest.approx(time.time(), abs=5)
        assert kept == {
            "1001": {"state": "paused", "reason": "break", "since": now},
            "1002": {"state": "logged-out", "since": now},
        }
    # SIGKILL: nothing more is written; a new daemon reads the same file.
    caplog.set_level(logging.INFO)
    caplog.clear()
    after = service(tmp_path)
    async with after.running():
        await after.router.drain()
        # Both phones are registered, as before; 1001 is on its break, 1002 stays out.
        assert states(after.router) == {"1001": ("paused", "break"), "1002": ("logged-out", None)}
        assert after.router.kept()["1001"].since == kept["1001"]["since"]  # not a new pause
    restored = [r.getMessage() for r in caplog.records if "restored" in r.getMessage()]
    assert restored == [
        "ACD: 1 pause(s) restored from before the restart, 1 agent(s) kept logged out by hand, "
        "0 waiting for their phone"
    ]
    assert on_disk(store) == kept  # unchanged by the restart


async def test_resume_and_login_clear_what_was_kept(tmp_path: Path, store: Path) -> None:
    before = service(tmp_path)
    async with before.running():
        await before.router.drain()
        await command(before, "pause", "1001", "break")
        await command(before, "logout", "1002")
        assert set(on_disk(store)) == {"1001", "1002"}
        await command(before, "resume", "1001")
        await command(before, "login", "1002")
        assert on_disk(store) == {}
    after = service(tmp_path)
    async with after.running():
        await after.router.drain()
        assert states(after.router) == {"1001": ("ready", None), "1002": ("ready", None)}


async def test_the_no_answer_auto_pause_is_kept_and_a_phone_logout_is_not(
    tmp_path: Path,
) -> None:
    """Every source passes the router's agent status: the ring-no-answer auto-pause is kept
    like a pause by hand; a logout because the phone went away is not (its registration
    says it again after the restart)."""
    keeper = AgentStateFile(tmp_path / "ivr.agents.json")
    router = Router(Roster.parse(ROSTER), FakePbx(), FakePublisher(), max_misses=1)
    router.keeper = keeper
    async with router:
        router.restore_kept(keeper.load())
        router.contact_changed("PJSIP/1001", True)
        router.contact_changed("PJSIP/1002", True)
        router.pause("1002", "training")
        vip_caller_waits(router, "c1")
        assert router.calls["c1"].agent == "1001"
        router.dial_result("c1", "1001", "NOANSWER")
        assert states(router)["1001"] == ("paused", "no-answer")
        router.contact_changed("PJSIP/1002", False)  # the phone went away: logged out
        await router.drain()
    assert keeper.load() == {"1001": KeptAgent("no-answer", pytest.approx(time.time(), abs=5))}


async def test_a_kept_pause_logs_the_agent_in_paused_never_ready_first(tmp_path: Path) -> None:
    """A caller already waits when the phone is found registered: the agent on a break must
    not be offered the call in between a ready login and the pause."""
    router = Router(Roster.parse(ROSTER), FakePbx(), FakePublisher())
    router.keeper = AgentStateFile(tmp_path / "ivr.agents.json")
    async with router:
        router.restore_kept({"1001": KeptAgent("break", time.time() - 60)})
        vip_caller_waits(router, "c1")
        router.contact_changed("PJSIP/1001", True)
        await router.drain()
        assert states(router)["1001"] == ("paused", "break")
        assert router.calls["c1"].state == "waiting"
        pbx = router.pbx
        assert isinstance(pbx, FakePbx) and pbx.commands == []
        router.resume("1001")  # back from the break: the caller is served
        assert router.calls["c1"].agent == "1001"
        assert router.kept() == {}


async def test_a_kept_pause_waits_for_the_phone_and_a_verb_replaces_it(
    tmp_path: Path, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kept_on_disk(store, {"1001": paused("break", 1.0), "1002": paused("lunch", 2.0)})
    caplog.set_level(logging.INFO)
    ami = PhonesAmi({"PJSIP/1001": "UNAVAILABLE", "PJSIP/1002": "UNAVAILABLE"})
    s = service(tmp_path, ami)
    async with s.running():
        await s.router.drain()
        assert states(s.router) == {"1001": ("logged-out", None), "1002": ("logged-out", None)}
        assert "ACD: 0 pause(s) restored from before the restart" in caplog.text
        assert "2 waiting for their phone" in caplog.text
        assert set(on_disk(store)) == {"1001", "1002"}  # still kept
        s.router.contact_changed("PJSIP/1001", True)  # the phone is back: on its break
        await command(s, "login", "1002")  # logged in by hand: as asked, ready
        assert states(s.router) == {"1001": ("paused", "break"), "1002": ("ready", None)}
        assert on_disk(store) == {"1001": {"state": "paused", "reason": "break", "since": 1.0}}


async def test_entries_for_agents_no_longer_in_the_roster_are_dropped(
    tmp_path: Path, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kept_on_disk(store, {"1001": paused("break", 1.0), "4242": paused("break", 1.0)})
    caplog.set_level(logging.INFO)
    s = service(tmp_path)
    async with s.running():
        await s.router.drain()
        assert states(s.router)["1001"] == ("paused", "break")
        assert set(on_disk(store)) == {"1001"}
    assert "agent 4242: kept state dropped: not in the roster" in caplog.text


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"version": 2, "agents": {}}',
        b'{"version": 1, "agents": {"1001": {"state": "paused", "since": 1.0}}}',
        b'{"version": 1, "agents": {"1001": {"state": "gone", "since": 1.0}}}',
        b'{"version": 1, "agents": {"1001": {"state": "paused", "reason": "b", "since": "x"}}}',
    ],
)
async def test_an_unreadable_state_file_is_one_error_and_agents_come_up_as_before(
    tmp_path: Path, store: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = state_path(store)
    path.write_bytes(content)
    s = service(tmp_path)
    async with s.running():
        await s.router.drain()
        assert states(s.router) == {"1001": ("ready", None), "1002": ("ready", None)}
        await command(s, "pause", "1001", "break")  # and keeping works again
        assert set(on_disk(store)) == {"1001"}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert str(path) in message and "NOT restored" in message
    assert path.with_name(path.name + ".unreadable").read_bytes() == content  # set aside


async def test_a_write_failure_is_logged_and_routing_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    keeper = AgentStateFile(tmp_path / "ivr.agents.json")
    router = Router(Roster.parse(ROSTER), FakePbx(), FakePublisher())
    router.keeper = keeper
    real_fsync = state_file.os.fsync

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    async with router:
        router.restore_kept({})
        router.login("1001")
        monkeypatch.setattr(state_file.os, "fsync", disk_full)
        router.pause("1001", "break")  # does not raise
        assert states(router)["1001"] == ("paused", "break")
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "cannot be written" in errors[0], errors
        assert "No space left on device" in errors[0]
        assert keeper.write_failures == 1 and not keeper.path.exists()
        assert files(tmp_path) == []  # no temporary file left behind
        monkeypatch.setattr(state_file.os, "fsync", real_fsync)
        caplog.clear()
        router.pause("1001", "lunch")  # the next change writes it all
        assert "written again" in caplog.text
    assert keeper.load() == {"1001": KeptAgent("lunch", pytest.approx(time.time(), abs=5))}


async def test_a_keeper_that_raises_does_not_stop_routing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def keep(self, kept: Mapping[str, KeptAgent]) -> None:
            raise RuntimeError("bug")

    router = Router(Roster.parse(ROSTER), FakePbx(), FakePublisher())
    router.keeper = Broken()
    async with router:
        router.login("1001")
        router.pause("1001", "break")
        assert router.m.agent_state("1001") is AgentState.PAUSED
    assert "agent states not kept for a restart" in caplog.text


async def test_rebuild_reports_the_restored_pauses_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    router = Router(Roster.parse(ROSTER), FakePbx(), FakePublisher())
    router.keeper = AgentStateFile(tmp_path / "ivr.agents.json")
    bridge = AcdAmiBridge(PhonesAmi(), router)  # type: ignore[arg-type]
    async with router:
        router.restore_kept({"1002": KeptAgent("break", 5.0)})
        assert await bridge.rebuild() == 2
        assert states(router) == {"1001": ("ready", None), "1002": ("paused", "break")}
        assert await bridge.rebuild() == 2  # an AMI reconnect: nothing changes, no new line
        assert states(router) == {"1001": ("ready", None), "1002": ("paused", "break")}
    lines = [r.getMessage() for r in caplog.records if "restored" in r.getMessage()]
    assert lines == [
        "ACD: 1 pause(s) restored from before the restart, 0 agent(s) kept logged out by hand, "
        "0 waiting for their phone"
    ]
