"""The agent flow's sources (ivr_engine/agent_sources.py) on a real router, and the real
flows/agent.yaml run by the real interpreter with the real prompt catalogue against the
offline channel: what an agent keys on the phone, what they hear, what the ACD then says."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from acd.roster import Roster
from acd.router import Router
from ivr_engine.agent_sources import (
    AgentDesk,
    agent_language,
    build_agent_sources,
    endpoint_of,
)
from ivr_engine.flow.channel import CallerInfo
from ivr_engine.flow.fake import FakeChannel, MemoryAudit, ScriptedQueue, Transcript
from ivr_engine.flow.interpreter import Interpreter
from ivr_engine.flow.loader import load_paths
from ivr_engine.flow.services import Services
from ivr_engine.prompts import PromptCatalogue
from ivr_engine.records import CallRecord
from ivr_engine.sources import CallContext

REPO = Path(__file__).resolve().parents[2]
ROSTER = """
queues:
  general: {}
agents:
  "1001": {skills: {mandarin: 9, english: 6}}
  "1005": {skills: {cantonese: 9, mandarin: 5}, login: manual}
  "1006": {skills: {english: 8, cantonese: 8}}
  "1007": {skills: {cards: 6}, endpoint: PJSIP/desk-7}
"""


class NullPbx:
    async def redirect(self, channel: str, context: str, exten: str, priority: int = 1) -> None:
        await asyncio.sleep(0)

    async def set_variable(self, channel: str, name: str, value: str) -> None:
        await asyncio.sleep(0)

    async def hangup(self, channel: str, cause: int = 16) -> None:
        await asyncio.sleep(0)


class Published:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def publish(self, topic: str, payload: Mapping[str, Any], *, retain: bool = False) -> None:
        self.events.append((topic, dict(payload)))


@pytest.fixture
async def router():
    r = Router(Roster.parse(ROSTER), NullPbx(), Published())
    async with r:
        yield r


def state(router: Router, agent: str) -> tuple[str, str | None]:
    row = next(a for a in router.agents() if a["agent"] == agent)
    return row["state"], row["reason"]


# --- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caller", "endpoint"),
    [
        ("1005", "PJSIP/1005"),
        ("PJSIP/1005", "PJSIP/1005"),
        ("PJSIP/1005-0000002a", "PJSIP/1005"),
        ("pjsip/desk-7", "PJSIP/desk-7"),
        (" 1005 ", "PJSIP/1005"),
        ("", ""),
        ("SIP/1005", ""),
        ("IAX2/1005-0000002a", ""),
        ("1005 or 1001", ""),
        ("PJSIP/", ""),
    ],
)
def test_endpoint_of(caller, endpoint):
    assert endpoint_of(caller) == endpoint


def test_agent_language_is_the_best_language_skill():
    assert agent_language({"cantonese": 9, "mandarin": 5}) == "yue"
    assert agent_language({"mandarin": 9, "english": 6, "cards": 10}) == "cmn"
    assert agent_language({"english": 8, "cantonese": 8}) == "yue"  # a tie: the earlier one
    assert agent_language({"cards": 6}) == ""


# --- the desk on a real router --------------------------------------------------------------


async def test_login_pause_resume_logout_from_the_phone(router):
    desk = AgentDesk(router, "1005")
    assert (desk.agent, desk.language) == ("1005", "yue")
    assert state(router, "1005") == ("logged-out", None)  # manual: not logged in by itself
    assert desk.act("login") == {
        "status": "done",
        "agent": "1005",
        "state": "ready",
        "reason": "",
        "language": "yue",
    }
    assert desk.act("login")["status"] == "already"
    paused = desk.act("pause", "lunch")
    assert (paused["status"], paused["state"], paused["reason"]) == ("done", "paused", "lunch")
    assert state(router, "1005") == ("paused", "lunch")
    assert desk.act("pause", "training")["reason"] == "training"  # a new reason while paused
    assert desk.act("resume")["state"] == "ready"
    assert desk.act("resume")["status"] == "already"
    assert desk.act("logout")["state"] == "logged-out"
    assert desk.act("logout")["status"] == "already"
    assert state(router, "1005") == ("logged-out", None)


async def test_pause_and_resume_need_a_login(router):
    desk = AgentDesk(router, "PJSIP/1005-00000001")
    assert desk.act("pause", "break")["status"] == "not_logged_in"
    assert desk.act("resume")["status"] == "not_logged_in"
    assert state(router, "1005") == ("logged-out", None)


@pytest.mark.parametrize("reason", ["", "Lunch", "lunch break", "x" * 40, "1"])
async def test_a_bad_reason_changes_nothing(router, reason):
    desk = AgentDesk(router, "1005")
    desk.act("login")
    assert desk.act("pause", reason)["status"] == "bad_reason"
    assert state(router, "1005") == ("ready", None)


async def test_a_phone_not_in_the_roster_changes_nothing(router):
    before = router.agents()
    for phone in ("1009", "PJSIP/1010", "", "13800138000"):
        desk = AgentDesk(router, phone)
        for verb in ("login", "logout", "resume"):
            answer = desk.act(verb)
            assert answer["status"] == "unknown_agent" and answer["agent"] == ""
    assert router.agents() == before


async def test_the_roster_endpoint_names_the_agent(router):
    assert AgentDesk(router, "desk-7").agent == "1007"
    assert AgentDesk(router, "1007").agent == ""  # its phone is desk-7, not 1007


async def test_an_agent_on_a_call_cannot_log_out(router):
    AgentDesk(router, "1001").act("login")
    router.register(
        "c1", queue="general", requirement="mandarin", priority=0, language="cmn", screen_pop={}
    )
    router.call_waiting("c1", "PJSIP/trunk-00000001")
    await asyncio.sleep(0)
    assert state(router, "1001")[0] == "reserved"
    answer = AgentDesk(router, "1001").act("logout")
    assert (answer["status"], answer["state"]) == ("not_allowed", "reserved")


def test_no_acd():
    desk = AgentDesk(None, "1005")
    assert desk.status()["status"] == "no_acd"
    assert desk.act("login")["status"] == "no_acd"


# --- the flow, end to end offline -----------------------------------------------------------


@pytest.fixture(scope="module")
def catalogue() -> PromptCatalogue:
    return PromptCatalogue.load(REPO / "prompts")


@pytest.fixture(scope="module")
def flow_set(catalogue):
    result = load_paths([REPO / "flows"], catalogue=catalogue)
    assert not result.errors, [d.render() for d in result.errors]
    assert result.flows is not None
    return result.flows


async def dial(
    flow_set, catalogue, acd: Any, phone: str, code: str, keys: str = ""
) -> tuple[Transcript, CallRecord, str]:
    record = CallRecord.start("agent-call-1", phone, flow_name="agent")
    ctx = CallContext(call_id="agent-call-1", record=record)
    engine = SimpleNamespace(acd=acd)
    transcript = Transcript()
    services = Services(
        build_agent_sources(engine, ctx),  # type: ignore[arg-type]
        ScriptedQueue("handed_off"),
        MemoryAudit(),
        transcript,
    )
    channel = FakeChannel(CallerInfo(phone, dialled=code), keys)
    outcome = await Interpreter(flow_set, services, catalogue).run(channel, "agent")
    assert outcome.kind == "hangup", outcome
    return transcript, record, outcome.node


def said(transcript: Transcript) -> list[tuple[str, str]]:
    return [(e["prompt"], e["text"]) for e in transcript.of("prompt")]


async def test_flow_star_codes_drive_the_router(router, flow_set, catalogue):
    acd = SimpleNamespace(router=router)
    t, record, node = await dial(flow_set, catalogue, acd, "1005", "*90")
    assert node == "logged_in" and state(router, "1005") == ("ready", None)
    assert said(t) == [("agent_logged_in", "你已經登入，可以接聽來電。")]  # yue: 1005's language
    assert record.events[-1]["kind"] == "agent-feature"
    assert record.events[-1]["status"] == "done"

    t, _, node = await dial(flow_set, catalogue, acd, "1005", "*92", "2")
    assert node == "paused_lunch" and state(router, "1005") == ("paused", "lunch")
    assert [p for p, _ in said(t)] == ["agent_pause_reason_menu", "agent_paused_lunch"]
    assert said(t)[-1][1] == "你已經暫停接聽，原因：食飯。"

    t, _, node = await dial(flow_set, catalogue, acd, "1005", "*93")
    assert node == "resumed" and state(router, "1005") == ("ready", None)

    t, _, node = await dial(flow_set, catalogue, acd, "1005", "*91")
    assert node == "logged_out" and state(router, "1005") == ("logged-out", None)
    assert said(t) == [("agent_logged_out", "你已經登出，系統唔會再俾來電你。")]


async def test_flow_speaks_the_agents_language(router, flow_set, catalogue):
    t, _, _ = await dial(flow_set, catalogue, SimpleNamespace(router=router), "1001", "*90")
    assert said(t) == [("agent_logged_in", "您已签入，可以接听来电。")]  # mandarin 9


@pytest.mark.parametrize(
    ("keys", "node", "prompts"),
    [
        ("4", "paused_acw", ["agent_pause_reason_menu", "agent_paused_after_call_work"]),
        ("1", "paused_break", ["agent_pause_reason_menu", "agent_paused_break"]),
        # 9 is not a reason: told so, asked again, then 3
        (
            "9,3",
            "paused_training",
            [
                "agent_pause_reason_menu",
                "agent_bad_reason",
                "agent_pause_reason_menu",
                "agent_paused_training",
            ],
        ),
    ],
)
async def test_flow_pause_reason_codes(router, flow_set, catalogue, keys, node, prompts):
    acd = SimpleNamespace(router=router)
    await dial(flow_set, catalogue, acd, "1005", "*90")
    t, _, ended = await dial(flow_set, catalogue, acd, "1005", "*92", keys)
    assert ended == node
    assert [p for p, _ in said(t)] == prompts
    assert state(router, "1005")[0] == "paused"


async def test_flow_pause_without_a_valid_reason_changes_nothing(router, flow_set, catalogue):
    acd = SimpleNamespace(router=router)
    await dial(flow_set, catalogue, acd, "1005", "*90")
    _, _, node = await dial(flow_set, catalogue, acd, "1005", "*92", "9,8,7")
    assert node == "unchanged"
    _, _, node = await dial(flow_set, catalogue, acd, "1005", "*92", "t,t")
    assert node == "unchanged"
    assert state(router, "1005") == ("ready", None)


async def test_flow_pause_before_login(router, flow_set, catalogue):
    _, _, node = await dial(flow_set, catalogue, SimpleNamespace(router=router), "1005", "*92", "2")
    assert node == "not_logged_in" and state(router, "1005") == ("logged-out", None)


async def test_flow_unknown_phone_and_unknown_code_change_nothing(router, flow_set, catalogue):
    acd = SimpleNamespace(router=router)
    before = router.agents()
    t, record, node = await dial(flow_set, catalogue, acd, "1009", "*90")
    assert node == "unknown_phone"
    assert [p for p, _ in said(t)] == ["agent_unknown_phone"]
    assert not [e for e in record.events if e["kind"] == "agent-feature"]
    _, _, node = await dial(flow_set, catalogue, acd, "1005", "*97")
    assert node == "unknown_code"
    assert router.agents() == before


async def test_flow_without_the_acd_says_so(flow_set, catalogue):
    t, _, node = await dial(flow_set, catalogue, None, "1005", "*90")
    assert node == "no_acd"
    assert said(t) == [("agent_no_acd", "坐席分配服务目前没有运行，状态没有更改。")]
