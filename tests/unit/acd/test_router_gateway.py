"""The flows' ACD gateway and the agent command channel (no PBX, no broker)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from acd.roster import Roster
from acd.router import OPERATORS, Router
from ivr_engine.acd_gateway import (
    AcdQueueGateway,
    AcdService,
    CommandError,
    decode_pop,
    encode_pop,
    mask_number,
    parse_command,
)
from ivr_engine.config import AmiSettings
from ivr_engine.errors import ConfigError
from ivr_engine.flow.channel import CallerInfo
from ivr_engine.flow.services import QueueRequest
from ivr_engine.pbx_commands import AcdAmiBridge
from ivr_engine.prompts import PromptCatalogue
from ivr_engine.protocol.ami import AmiEvent, AmiResponse, Fields
from ivr_engine.transport.ami import AmiClient
from tests.unit.acd.test_router import FakePbx, FakePublisher

REPO = Path(__file__).resolve().parents[3]
ROSTER = 'agents: {"1001": {skills: {private_banking: 8, cantonese: 7}}}'


class Channel:
    def __init__(self, number: str = "13926000001") -> None:
        self.vars: dict[str, str] = {}
        self._caller = CallerInfo(number)

    @property
    def caller(self) -> CallerInfo:
        return self._caller

    async def set_variable(self, name: str, value: str) -> None:
        self.vars[name] = value


def request(skills: str = "cantonese and private_banking") -> QueueRequest:
    return QueueRequest("c1", "vip", skills, 10, "yue", {"tier": "vip"}, 600.0)


async def test_gateway_registers_the_call_and_hands_it_to_the_acd_context() -> None:
    router = Router(Roster.parse(ROSTER), FakePbx(), FakePublisher())
    async with router:
        channel = Channel()
        outcome = await AcdQueueGateway(router).enqueue(channel, request())  # type: ignore[arg-type]
        assert outcome.kind == "handed_off" and outcome.detail == "acd"
        assert channel.vars == {
            "IVR_QUEUE": "vip",
            "IVR_PRIORITY": "10",
            "IVR_SKILLS": "cantonese and private_banking",
            "IVR_LANGUAGE": "yue",
            "IVR_DATA_TIER": "vip",
            "ACD_CALLER": "13926000001",
            "ACD_POP": "caller=%2A%2A%2A%2A%2A%2A%2A0001&tier=vip",
            "ACD_RING": "15",
            "ACD_ANNOUNCE": "30",
            "ACD_REC_DIR": "/var/spool/asterisk/monitor/acd",
            "ACD_VM_PROMPT": "",
            "IVR_NEXT": "acd",
        }
        assert list(channel.vars)[-1] == "IVR_NEXT"  # set last: the description is complete
        assert decode_pop(channel.vars["ACD_POP"]) == {"tier": "vip", "caller": "*******0001"}
        call = router.calls["c1"]
        assert call.priority == 0 and call.requirement == "cantonese and private_banking"
        assert call.screen_pop == {"tier": "vip", "caller": "*******0001"}


async def test_gateway_falls_back_to_app_queue_when_the_acd_refuses() -> None:
    router = Router(Roster.parse(ROSTER), FakePbx(), FakePublisher())
    async with router:
        channel = Channel()
        outcome = await AcdQueueGateway(router).enqueue(channel, request("cantonese and and"))  # type: ignore[arg-type]
        assert outcome.kind == "handed_off"
        assert channel.vars["IVR_NEXT"] == "queue" and "c1" not in router.calls


def test_mask_number() -> None:
    assert mask_number("13926000001") == "*******0001"
    assert mask_number("110") == "***"
    assert mask_number("") == ""


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"{", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"id": "a", "verb": "dance"}', "verb must be one of"),
        (b'{"id": "a", "verb": "login"}', "needs an agent"),
        (b'{"id": "a", "verb": "pause", "agent": "1001"}', "needs a reason"),
        (b'{"id": "a b", "verb": "list"}', "id must be"),
        (b'{"id": "a", "verb": "list", "x": "1"}', "unknown field"),
        (b'{"id": "a", "verb": "login", "agent": 1001}', "agent must be a string"),
    ],
)
def test_malformed_commands_are_refused_with_a_reason(payload: bytes, error: str) -> None:
    with pytest.raises(CommandError, match=error):
        parse_command(payload)


def test_valid_command() -> None:
    body = {"id": "cli-1", "verb": "pause", "agent": "1001", "reason": "break"}
    assert parse_command(json.dumps(body).encode()) == body


class Recorder:
    def __init__(self) -> None:
        self.out: list[tuple[str, dict[str, Any]]] = []

    def publish(self, topic: str, payload: Mapping[str, Any], *, retain: bool = False) -> None:
        self.out.append((topic, dict(payload)))


async def test_service_answers_commands_on_the_reply_topic(tmp_path: Path) -> None:
    roster = tmp_path / "agents.yaml"
    roster.write_text(ROSTER)
    pub = Recorder()
    service = AcdService(roster, AmiClient(AmiSettings()), pub, None)
    async with service.running():
        await service.handle_message(b'{"id": "r1", "verb": "login", "agent": "1001"}')
        await service.handle_message(
            b'{"id": "r2", "verb": "pause", "agent": "1001", "reason": "break"}'
        )
        await service.handle_message(b'{"id": "r3", "verb": "resume", "agent": "4242"}')
        await service.handle_message(b'{"id": "r4", "verb": "pause", "agent": "1001"}')
        await service.handle_message(b"not json")  # no id to answer: logged only
        roster.write_text('agents: {"1001": {skills: {risk: 2}}, "1002": {}}')
        await service.handle_message(b'{"id": "r5", "verb": "reload"}')
    replies = {t: p for t, p in pub.out if t.startswith("acd/reply/")}
    assert (
        replies["acd/reply/r1"]["ok"] and replies["acd/reply/r1"]["agents"][0]["state"] == "ready"
    )
    assert replies["acd/reply/r2"]["agents"][0]["state"] == "paused"
    assert replies["acd/reply/r2"]["agents"][0]["reason"] == "break"
    assert not replies["acd/reply/r3"]["ok"] and "4242" in replies["acd/reply/r3"]["error"]
    assert replies["acd/reply/r4"] == {"id": "r4", "ok": False, "error": "pause needs a reason"}
    assert [a["agent"] for a in replies["acd/reply/r5"]["agents"]] == ["1001", "1002"]
    assert replies["acd/reply/r5"]["agents"][0]["skills"] == {"risk": 2}
    assert len(replies) == 5


def test_a_bad_roster_stops_start_up_naming_the_file(tmp_path: Path) -> None:
    roster = tmp_path / "agents.yaml"
    roster.write_text('agents: {"1001": {skills: {cards: 0}}}')
    with pytest.raises(ConfigError, match=r"agents\.yaml: agents\.1001"):
        AcdService(roster, AmiClient(AmiSettings()), Recorder(), None)


WAIT_ROSTER = """
queues:
  general: {operator: true, wrapup: 0}
  vip: {callback: false}
agents:
  "1001": {skills: {mandarin: 8, cantonese: 6}}
"""


async def test_announcement_says_place_wait_and_keys_in_the_callers_language(
    tmp_path: Path,
) -> None:
    roster = tmp_path / "agents.yaml"
    roster.write_text(WAIT_ROSTER)
    service = AcdService(
        roster,
        AmiClient(AmiSettings()),
        Recorder(),
        None,
        catalogue=PromptCatalogue.load(REPO / "prompts"),
    )
    router = service.router
    async with service.running():
        router.login("1001")
        router.register(
            "busy",
            queue="general",
            requirement="mandarin",
            priority=5,
            language="cmn",
            screen_pop={},
        )
        router.call_waiting("busy", "PJSIP/b")
        router.answered("busy", "1001")
        for n, lang in ((1, "cmn"), (2, "yue")):
            router.register(
                f"c{n}",
                queue="general",
                requirement="mandarin",
                priority=5,
                language=lang,
                screen_pop={},
                caller="13800138000",
            )
            router.call_waiting(f"c{n}", f"PJSIP/c-{n}")
        found = service.announcement("c2")
        assert found is not None
        utterances, keys, said = found
        # second in line, one working agent, 180 s default handle: 6 minutes
        assert said == {
            "position": 2,
            "estimate": 360.0,
            "minutes": 6,
            "agents": 1,
            "handle_time": 180.0,
            "keys": "10",
            "language": "yue",
        }
        text = "".join(u.text for u in utterances)
        assert "第二" in text and "六分鐘" in text and "請按一字" in text and "請按零字" in text
        assert {u.lang for u in utterances} == {"yue"}
        # not waiting (connected) or unknown: nothing to say
        assert service.announcement("busy") is None and service.announcement("x") is None
        router.register(
            "v1",
            queue="vip",
            requirement="mandarin",
            priority=10,
            language="en",
            screen_pop={},
        )
        router.call_waiting("v1", "PJSIP/v-1")
        found = service.announcement("v1")
        assert found is not None and found[1] == ""  # no callback in vip, no operator key
        assert "first in the queue" in " ".join(u.text for u in found[0]).lower()


class FakeAmi:
    """The AMI actions the bridge's rebuild uses, answered from a table of channels."""

    def __init__(self, channels: list[dict[str, str]], variables: dict[str, dict[str, str]]):
        self.channels = channels
        self.variables = variables
        self.actions: list[dict[str, str]] = []
        self.connected = True

    async def list_action(self, action: Mapping[str, str]) -> list[AmiEvent]:
        self.actions.append(dict(action))
        return [AmiEvent("CoreShowChannel", Fields(list(c.items()))) for c in self.channels]

    async def action(self, action: Mapping[str, str], **_: Any) -> AmiResponse:
        self.actions.append(dict(action))
        if action["Action"] == "Getvar" and "Channel" in action:
            value = self.variables[action["Channel"]].get(action["Variable"], "")
        else:
            value = "NOT_INUSE"  # DEVICE_STATE(...) of the agents' phones
        fields = Fields([("Response", "Success"), ("Value", value)])
        return AmiResponse("Getvar", "1", "Success", "", fields)

    def subscribe(self, name: str, callback: Any) -> Any:
        return lambda: None


async def test_rebuild_reenters_callers_waiting_in_acd_wait_from_their_variables() -> None:
    router = Router(Roster.parse(ROSTER), FakePbx(), FakePublisher())
    pop = encode_pop({"tier": "vip", "caller": "*******0001"})
    ami = FakeAmi(
        [
            {"Channel": "PJSIP/devtrunk-1", "Uniqueid": "u1", "Context": "acd-wait"},
            {"Channel": "PJSIP/devtrunk-2", "Uniqueid": "u2", "Context": "acd-connect"},
            {"Channel": "PJSIP/devtrunk-3", "Uniqueid": "u3", "Context": "acd-wait"},
        ],
        {
            "PJSIP/devtrunk-1": {
                "IVR_QUEUE": "vip",
                "IVR_SKILLS": "cantonese and private_banking",
                "IVR_PRIORITY": "10",
                "IVR_LANGUAGE": "yue",
                "ACD_CALLER": "13926000001",
                "ACD_POP": pop,
            },
            "PJSIP/devtrunk-3": {"IVR_QUEUE": "vip", "IVR_SKILLS": "cantonese and and"},
        },
    )
    bridge = AcdAmiBridge(ami, router)  # type: ignore[arg-type]
    async with router:
        await bridge.rebuild_all()  # agents first: 1001's phone is up, so it is logged in
        await router.drain()
        call = router.calls["u1"]
        assert (call.queue, call.priority, call.language, call.caller) == (
            "vip",
            0,
            "yue",
            "13926000001",
        )
        assert call.screen_pop == {"tier": "vip", "caller": "*******0001"}
        assert call.state == "ringing" and call.agent == "1001"
        pbx = router.pbx
        assert isinstance(pbx, FakePbx)
        # u2 was ringing an agent (not waiting): left alone; u3's description is refused:
        # the operators take it instead of endless music
        assert ("redirect", "PJSIP/devtrunk-3", OPERATORS, "s") in pbx.commands
        assert "u2" not in router.calls and "u3" not in router.calls
        # a second (re)connect finds u1 known: nothing twice
        assert await bridge.rebuild_waiting() == 0
