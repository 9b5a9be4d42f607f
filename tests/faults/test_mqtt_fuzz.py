"""Bad input on the ACD's MQTT topics (issue 8): agent commands (`<prefix>/acd/command`) and
non-voice task submissions (`<prefix>/acd/task/submit|cancel|list`, `agent/<id>/task/reply`).

Hypothesis generates payloads (wrong types, missing and unknown fields, raw bytes that are not
UTF-8 or not JSON, nesting, unknown agents and queues, ids good and bad) and feeds them to

1. the parsers (`acd_gateway.parse_command`, `tasks.schema.parse_submission` / `parse_cancel`
   / `parse_agent_reply`): each either accepts or raises its own refusal, nothing else;
2. the services in process (`AcdService.handle_message`, `TaskService.handle` over a real
   `Router`): never an exception; every refusal that carries a usable id is answered with
   `ok: false` and a reason on its reply topic; a refusal changes no agent, no call, no task;
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acd.roster import Roster
from acd.router import Router
from ivr_engine.acd_gateway import VERBS, AcdService, CommandError, parse_command
from ivr_engine.config import AmiSettings
from ivr_engine.tasks.schema import (
    TaskRejected,
    TaskRequest,
    parse_agent_reply,
    parse_cancel,
    parse_submission,
)
from ivr_engine.tasks.service import TaskService
from ivr_engine.transport.ami import AmiClient

# ----------------------------------------------------------------------------- strategies

ROSTER_TEXT = """
defaults: {join_empty: true, wrapup: 1}
queues:
  general: {}
agents:
  "9901": {skills: {mandarin: 8, cards: 5}, channels: {voice: 1, chat: 2},
           login: manual, endpoint: PJSIP/fuzz-9901}
  "9902": {skills: {cantonese: 8}, login: manual, endpoint: PJSIP/fuzz-9902}
"""
ROSTER = Roster.parse(ROSTER_TEXT)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=25,
)
good_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,20}", fullmatch=True)
ids = good_ids | st.text(max_size=80) | json_values


def _encode(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


def _sometimes_extra(fields: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """A dict strategy, sometimes with unknown fields, as JSON bytes."""
    extra = st.dictionaries(st.text(max_size=10), json_values, max_size=2)
    return st.tuples(fields, extra, st.booleans()).map(
        lambda t: _encode({**t[1], **t[0]} if t[2] else t[0])
    )


commands = _sometimes_extra(
    st.fixed_dictionaries(
        {},
        optional={
            "id": ids,
            "verb": st.sampled_from(VERBS) | json_values,
            "agent": st.sampled_from(["9901", "9902", "4242", "", "../x"]) | json_values,
            "reason": st.sampled_from(["break", ""]) | json_values,
        },
    )
)
submissions = _sometimes_extra(
    st.fixed_dictionaries(
        {},
        optional={
            "id": ids,
            "channel": st.sampled_from(["chat", "sms", "email", "callback", "voice"]) | json_values,
            "queue": st.sampled_from(["general", "nosuch", "*"]) | json_values,
            "skills": st.sampled_from(["cards", "cards and and", "private_banking"]) | json_values,
            "priority": st.integers(-3, 13) | json_values,
            "language": st.sampled_from(["cmn", "fr"]) | json_values,
            "customer": st.fixed_dictionaries(
                {},
                optional={
                    "number": st.sampled_from(["13800138000", "12"]) | json_values,
                    "name": st.text(max_size=120) | json_values,
                    "email": st.sampled_from(["a@b.cn", "nope"]) | json_values,
                    "pin": st.just("123456"),
                },
            )
            | json_values,
            "subject": st.text(max_size=220) | json_values,
            "body": st.text(max_size=60) | json_values,
            "callback_number": st.sampled_from(["13800138000", "x"]) | json_values,
        },
    )
)
cancels = _sometimes_extra(
    st.fixed_dictionaries({}, optional={"id": ids, "reason": st.text(max_size=210) | json_values})
)
agent_replies = _sometimes_extra(
    st.fixed_dictionaries(
        {},
        optional={
            "task_id": ids,
            "action": st.sampled_from(["accept", "reject", "done", "nap"]) | json_values,
            "reason": json_values,
        },
    )
)
garbage = (
    st.binary(max_size=300)
    | st.text(max_size=100).map(str.encode)
    | json_values.map(_encode)
    | st.sampled_from(
        [
            b"",
            b"\xff\xfe{\x00",
            b'{"id": "x"',
            b"\xef\xbb\xbf{}",  # a UTF-8 byte-order mark
            '{"id": "\u00e9\u4e2d", "verb": "list"}'.encode("utf-16"),
            b'{"id": "big", "verb": "list", "agent": "' + b"x" * 200_000 + b'"}',
        ]
    )
)
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# ----------------------------------------------------------------------------- 1. parsers


@FUZZ
@given(commands | garbage)
def test_parse_command_accepts_or_refuses_with_a_reason(payload: bytes) -> None:
    try:
        body = parse_command(payload)
    except CommandError as exc:
        assert str(exc)
        return
    assert set(body) <= {"id", "verb", "agent", "reason"}
    assert all(isinstance(v, str) for v in body.values())
    assert body["verb"] in VERBS


@FUZZ
@given(submissions | garbage)
def test_parse_submission_accepts_or_refuses_with_a_reason(payload: bytes) -> None:
    try:
        request = parse_submission(payload, ROSTER)
    except TaskRejected as exc:
        assert str(exc)
        return
    assert isinstance(request, TaskRequest)
    assert request.queue == "general" and request.channel in ("chat", "sms", "email", "callback")
    assert 0 <= request.priority <= 10


@FUZZ
@given(cancels | agent_replies | garbage)
def test_cancel_and_agent_reply_parsers_accept_or_refuse(payload: bytes) -> None:
    for parser in (parse_cancel, parse_agent_reply):
        try:
            parser(payload)
        except TaskRejected as exc:
            assert str(exc)


# ----------------------------------------------------------------------------- 2. services


class Recorder:
    def __init__(self) -> None:
        self.out: list[tuple[str, dict[str, Any]]] = []

    def publish(
        self, topic: str, payload: Mapping[str, Any], *, retain: bool = False, qos: int = 0
    ) -> None:
        self.out.append((topic, dict(payload)))


class Pbx:
    async def redirect(self, channel: str, context: str, exten: str, priority: int = 1) -> None:
        pass

    async def set_variable(self, channel: str, name: str, value: str) -> None:
        pass

    async def hangup(self, channel: str, cause: int = 16) -> None:
        pass


def _usable(request_id: object) -> bool:
    import re

    return isinstance(request_id, str) and bool(re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", request_id))


@FUZZ
@given(payloads=st.lists(commands | garbage, min_size=1, max_size=6))
def test_acd_service_answers_every_bad_command_and_changes_nothing(
    payloads: list[bytes], tmp_path: Path
) -> None:
    roster = tmp_path / "agents.yaml"
    roster.write_text(ROSTER_TEXT)
    asyncio.run(_commands_scenario(roster, payloads))


async def _commands_scenario(roster: Path, payloads: list[bytes]) -> None:
    pub = Recorder()
    service = AcdService(roster, AmiClient(AmiSettings()), pub, None)
    async with service.running():
        service.router.login("9901")
        for payload in payloads:
            before = service.router.agents()
            sent = len(pub.out)
            await service.handle_message(payload)  # never raises
            replies = [(t, p) for t, p in pub.out[sent:] if t.startswith("acd/reply/")]
            assert len(replies) <= 1
            if not replies:
                # Not answerable: then it was not applied either (a command needs a usable id).
                assert service.router.agents() == before
                continue
            topic, reply = replies[0]
            assert topic == f"acd/reply/{reply['id']}" and _usable(reply["id"])
            if not reply["ok"]:
                assert isinstance(reply["error"], str) and reply["error"]
                assert service.router.agents() == before, (payload[:200], reply)


TOPICS = {
    "submit": "ivr/acd/task/submit",
    "cancel": "ivr/acd/task/cancel",
    "list": "ivr/acd/task/list",
    "agent": "ivr/agent/9901/task/reply",
}


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(TOPICS)), submissions | cancels | agent_replies | garbage),
        min_size=1,
        max_size=6,
    )
)
def test_task_service_answers_every_bad_message_and_queues_nothing(
    messages: list[tuple[str, bytes]],
) -> None:
    asyncio.run(_tasks_scenario(messages))


async def _tasks_scenario(messages: list[tuple[str, bytes]]) -> None:
    pub = Recorder()
    router = Router(ROSTER, Pbx(), pub, ring_timeout=5, guard_margin=10)
    service = TaskService(router, pub)
    async with router, service.running():
        router.login("9901")
        for kind, payload in messages:
            calls, tasks = dict(router.calls), dict(service.tasks)
            agents = router.agents()
            sent = len(pub.out)
            service.handle(TOPICS[kind], payload, "ivr")  # never raises
            out = pub.out[sent:]
            if kind == "agent":
                refused = [p for t, p in out if p.get("event") == "TaskReplyRefused"]
                # No task was ever accepted in this run's state unless submitted: a reply
                # about an unknown task is refused on the agent's own topic.
                if not tasks:
                    assert len(refused) == 1 and refused[0]["error"], (payload[:200], out)
                continue
            answers = [
                (t, p)
                for t, p in out
                if t.startswith("acd/task/reply/") or t == "acd/task/rejected"
            ]
            assert len(answers) == 1, (payload[:200], out)
            topic, answer = answers[0]
            if answer["id"] is None:
                assert topic == "acd/task/rejected"
            else:
                assert topic == f"acd/task/reply/{answer['id']}"
            if not answer["ok"]:
                assert isinstance(answer["error"], str) and answer["error"]
                assert router.calls == calls and service.tasks == tasks, (payload[:200], answer)
                assert router.agents() == agents
