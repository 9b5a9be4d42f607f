"""`ivr-engine supervise`: argument checks, and the AMI conversation against a fake PBX that
answers Getvar like Asterisk does (the real one is in tests/integration/test_agent_phone.py)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from ivr_engine.cli import main
from ivr_engine.commands.supervise import (
    Refused,
    Request,
    UsageError,
    check_args,
    supervise,
)
from ivr_engine.protocol.ami import AmiEvent, AmiResponse, Fields, OriginateResponse


def test_check_args_accepts_a_supervision():
    assert check_args("whisper", "1005", "1010") == Request("whisper", "1005", "1010")
    assert Request("listen", "1005", "1010").exten == "listen-1005"


@pytest.mark.parametrize(
    ("mode", "agent", "supervisor", "message"),
    [
        ("spy", "1005", "1010", "mode must be one of listen, whisper, barge"),
        ("listen", "10a5", "1010", "AGENT must be an extension"),
        ("listen", "1005,qsEB", "1010", "AGENT must be an extension"),
        ("listen", "", "1010", "AGENT must be an extension"),
        ("listen", "1005", "", "--from SUPERVISOR_EXT is required"),
        ("listen", "1005", "PJSIP/1010", "--from must be an extension"),
        ("barge", "1005", "1005", "the same phone"),
    ],
)
def test_check_args_refuses(mode, agent, supervisor, message):
    with pytest.raises(UsageError, match=message):
        check_args(mode, agent, supervisor)


def test_cli_bad_agent_is_a_usage_error(capsys):
    assert main(["supervise", "listen", "10a5", "--from", "1010"]) == 2
    assert "AGENT must be an extension" in capsys.readouterr().err


def test_cli_needs_from(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["supervise", "listen", "1005"])
    assert exc.value.code == 2
    assert "--from" in capsys.readouterr().err


def test_cli_refuses_unknown_mode(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["supervise", "record", "1005", "--from", "1010"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


class FakePbx:
    """Getvar of DIALPLAN_EXISTS and DEVICE_STATE from tables; Originate recorded."""

    def __init__(
        self,
        *,
        supervisors: tuple[str, ...] = ("1010",),
        agents: tuple[str, ...] = ("1005",),
        states: Mapping[str, str] | None = None,
        answer: bool = True,
    ) -> None:
        self.supervisors = supervisors
        self.agents = agents
        self.states = dict(states or {})
        self.answer = answer
        self.actions: list[dict[str, str]] = []
        self.originated: list[dict[str, object]] = []

    def _value(self, expression: str) -> str:
        if expression.startswith("DIALPLAN_EXISTS(supervise,"):
            exten = expression.split(",")[1]
            kind, _, ext = exten.partition("-")
            if kind == "supervisor":
                return "1" if ext in self.supervisors else "0"
            return "1" if kind in ("listen", "whisper", "barge") and ext in self.agents else "0"
        if expression.startswith("DEVICE_STATE(PJSIP/"):
            return self.states.get(expression[len("DEVICE_STATE(PJSIP/") : -1], "INVALID")
        raise AssertionError(f"unexpected Getvar {expression}")

    async def action(self, action, *, timeout=None) -> AmiResponse | list[AmiEvent]:  # noqa: ASYNC109
        self.actions.append(dict(action))
        assert action["Action"] == "Getvar"
        value = self._value(str(action["Variable"]))
        fields = Fields([("Response", "Success"), ("Value", value)])
        return AmiResponse("Getvar", "x", "Success", "", fields)

    async def originate(self, **kw: object) -> str:
        self.originated.append(kw)
        return "orig-1"

    async def originate_response(
        self,
        action_id: str,
        *,
        timeout: float,  # noqa: ASYNC109 (AmiClient's signature)
    ) -> OriginateResponse:
        assert action_id == "orig-1"
        ok = self.answer
        fields = Fields([])
        return OriginateResponse(
            "OriginateResponse",
            fields,
            "Success" if ok else "Failure",
            "PJSIP/1010-00000001" if ok else "",
            "",
            4 if ok else 3,
            "supervise",
            "",
            "",
            "",
            "",
        )


ON_CALL = {"1005": "INUSE", "1010": "NOT_INUSE"}


async def test_supervisor_rung_into_the_supervise_context_never_an_application():
    pbx = FakePbx(states=ON_CALL)
    said = await supervise(pbx, Request("listen", "1005", "1010"), ring_timeout=12)
    assert said == "supervisor 1010 is listening to agent 1005 (PJSIP/1010-00000001)"
    assert pbx.originated == [
        {
            "channel": "PJSIP/1010",
            "context": "supervise",
            "exten": "listen-1005",
            "priority": 1,
            "caller_id": '"listen 1005" <1005>',
            "ring_timeout": 12,
        }
    ]


@pytest.mark.parametrize("mode", ["whisper", "barge"])
async def test_whisper_and_barge_use_their_extensions(mode):
    pbx = FakePbx(states=ON_CALL)
    await supervise(pbx, Request(mode, "1005", "1010"))
    assert pbx.originated[0]["exten"] == f"{mode}-1005"


async def test_unknown_supervisor_refused_before_anything_rings():
    pbx = FakePbx(states={**ON_CALL, "1008": "NOT_INUSE"})
    with pytest.raises(Refused, match="1008 is not a supervisor"):
        await supervise(pbx, Request("listen", "1005", "1008"))
    assert pbx.originated == []


@pytest.mark.parametrize("state", ["NOT_INUSE", "RINGING", "UNAVAILABLE", "INVALID"])
async def test_agent_not_on_a_call_refused(state):
    pbx = FakePbx(states={"1005": state, "1010": "NOT_INUSE"})
    with pytest.raises(Refused, match="agent 1005 is not on a call"):
        await supervise(pbx, Request("barge", "1005", "1010"))
    assert pbx.originated == []


async def test_agent_outside_the_supervise_patterns_refused():
    pbx = FakePbx(agents=(), states=ON_CALL)
    with pytest.raises(Refused, match="no extension for listen-1005"):
        await supervise(pbx, Request("listen", "1005", "1010"))
    assert pbx.originated == []


async def test_unregistered_supervisor_phone_refused():
    pbx = FakePbx(states={"1005": "INUSE", "1010": "UNAVAILABLE"})
    with pytest.raises(Refused, match="supervisor phone 1010 is not registered"):
        await supervise(pbx, Request("listen", "1005", "1010"))
    assert pbx.originated == []


async def test_supervisor_not_answering_is_reported():
    pbx = FakePbx(states=ON_CALL, answer=False)
    with pytest.raises(Refused, match=r"did not answer \(no answer\)"):
        await supervise(pbx, Request("listen", "1005", "1010"))
    assert len(pbx.originated) == 1
