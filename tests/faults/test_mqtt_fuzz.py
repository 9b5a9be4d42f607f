"""Bad input on the ACD's MQTT topics (issue 8): agent commands (`<prefix>/acd/command`) and
non-voice task submissions (`<prefix>/acd/task/submit|cancel|list`, `agent/<id>/task/reply`).

Hypothesis generates payloads (wrong types, missing and unknown fields, raw bytes that are not
UTF-8 or not JSON, nesting, unknown agents and queues, ids good and bad) and feeds them to

1. the parsers (`acd_gateway.parse_command`, `tasks.schema.parse_submission` / `parse_cancel`
   / `parse_agent_reply`): each either accepts or raises its own refusal, nothing else;
2. the services in process (`AcdService.handle_message`, `TaskService.handle` over a real
   `Router`): never an exception; every refusal that carries a usable id is answered with
   `ok: false` and a reason on its reply topic; a refusal changes no agent, no call, no task;
3. the real daemon (`ivr-engine serve`) on a private Mosquitto: a fixed batch of the worst
   kinds at once (wrong types, missing fields, 200 KB payloads, unknown agents and queues, not
   JSON, nesting thousands deep, 5,000-digit numbers); each one with an id is answered on its
   reply topic, the id-less task payloads on `acd/task/rejected`; the daemon stays up, agents
   and tasks are as they were, and good messages still work afterwards.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
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
from tests.faults.support import MqttCapture, agent_states
from tests.support.daemon import Daemon
from tests.support.mqtt_broker import PrivateBroker, free_port

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


# ----------------------------------------------------------------------------- 3. the daemon

COMMAND = "ivr/acd/command"
SUBMIT = "ivr/acd/task/submit"
CANCEL = "ivr/acd/task/cancel"
CHAT = {"channel": "chat", "queue": "general", "skills": "cards", "body": "hello"}


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


#: (topic, request id or None, payload, a word the refusal must contain). The ids are where
#: the daemon can find them: valid JSON, or a payload that starts with its id.
BAD: list[tuple[str, str | None, bytes, str]] = [
    (COMMAND, "c-verb-number", _json({"id": "c-verb-number", "verb": 5}), "verb must be"),
    (COMMAND, "c-no-verb", _json({"id": "c-no-verb", "agent": "9901"}), "verb must be one"),
    (COMMAND, "c-no-agent", _json({"id": "c-no-agent", "verb": "pause", "reason": "x"}), "agent"),
    (
        COMMAND,
        "c-no-reason",
        _json({"id": "c-no-reason", "verb": "pause", "agent": "9901"}),
        "reason",
    ),
    (
        COMMAND,
        "c-unknown-agent",
        _json({"id": "c-unknown-agent", "verb": "login", "agent": "4242"}),
        "not in the roster",
    ),
    (
        COMMAND,
        "c-unknown-field",
        _json({"id": "c-unknown-field", "verb": "list", "sudo": True}),
        "unknown field",
    ),
    (
        COMMAND,
        "c-reason-list",
        _json({"id": "c-reason-list", "verb": "pause", "agent": "9901", "reason": ["break"]}),
        "reason must be a string",
    ),
    (
        COMMAND,
        "c-illegal",
        _json({"id": "c-illegal", "verb": "resume", "agent": "9901"}),
        "not allowed",
    ),
    (
        COMMAND,
        "c-huge",
        b'{"id": "c-huge", "verb": "login", "agent": "' + b"x" * 200_000 + b'"}',
        "bytes",
    ),
    (
        COMMAND,
        "c-deep",
        f'{{"id": "c-deep", "verb": "list", "agent": {_nested(2_000)}}}'.encode(),
        "nested too deeply",
    ),
    (
        COMMAND,
        "c-big-number",
        b'{"id": "c-big-number", "verb": "list", "agent": ' + b"9" * 5_000 + b"}",
        "bytes",
    ),
    (COMMAND, "c-truncated", b'{"id": "c-truncated", "verb": "list"', "not JSON"),
    (
        SUBMIT,
        "t-no-channel",
        _json({"id": "t-no-channel", "queue": "general", "skills": "cards"}),
        "missing field",
    ),
    (SUBMIT, "t-voice", _json({"id": "t-voice", **CHAT, "channel": "voice"}), "channel must be"),
    (
        SUBMIT,
        "t-unknown-queue",
        _json({"id": "t-unknown-queue", **CHAT, "queue": "nosuch"}),
        "unknown queue",
    ),
    (
        SUBMIT,
        "t-priority-text",
        _json({"id": "t-priority-text", **CHAT, "priority": "high"}),
        "priority must be",
    ),
    (
        SUBMIT,
        "t-priority-bool",
        _json({"id": "t-priority-bool", **CHAT, "priority": True}),
        "priority must be",
    ),
    (
        SUBMIT,
        "t-customer-text",
        _json({"id": "t-customer-text", **CHAT, "customer": "Wang"}),
        "customer must be",
    ),
    (
        SUBMIT,
        "t-bad-skills",
        _json({"id": "t-bad-skills", **CHAT, "skills": "cards and and"}),
        "skills",
    ),
    (
        SUBMIT,
        "t-nobody",
        _json({"id": "t-nobody", **CHAT, "skills": "private_banking"}),
        "no agent in the roster",
    ),
    (
        SUBMIT,
        "t-callback-on-chat",
        _json({"id": "t-callback-on-chat", **CHAT, "callback_number": "13800138000"}),
        "callback_number",
    ),
    (SUBMIT, "t-huge", _json({"id": "t-huge", **CHAT, "body": "x" * 200_000}), "bytes"),
    (
        SUBMIT,
        "t-deep",
        f'{{"id": "t-deep", "channel": "chat", "body": {_nested(5_000)}}}'.encode(),
        "nested too deeply",
    ),
    (
        SUBMIT,
        "t-big-number",
        b'{"id": "t-big-number", "channel": "chat", "priority": ' + b"9" * 5_000 + b"}",
        "not JSON",
    ),
    (SUBMIT, "t-truncated", b'{"id": "t-truncated", "channel": "chat"', "not JSON"),
    (CANCEL, "t-cancel-unknown", _json({"id": "t-cancel-unknown"}), "no task"),
    # Without a usable id: commands are logged and dropped, tasks answered on acd/task/rejected.
    (COMMAND, None, b"[]", ""),
    (COMMAND, None, b"not json at all", ""),
    (COMMAND, None, _json({"verb": "list"}), ""),
    (COMMAND, None, _json({"id": "a/b#", "verb": "list"}), ""),
    (COMMAND, None, b"\xff\xfe\x00", ""),
    (SUBMIT, None, _json(CHAT), "missing field"),
    (SUBMIT, None, b"[1, 2, 3]", "JSON object"),
    (SUBMIT, None, b"not json at all", "not JSON"),
    (SUBMIT, None, _json({"id": 5, **CHAT}), "id must be"),
    (SUBMIT, None, _json({"id": "../../x", **CHAT}), "id must be"),
]

FUZZ_ROSTER = """
defaults: {join_empty: true, wrapup: 1}
queues:
  general: {}
agents:
  "9901": {skills: {mandarin: 8, cards: 5}, channels: {voice: 1, chat: 2},
           login: manual, endpoint: PJSIP/fuzz-9901}
  "9902": {skills: {cantonese: 8}, channels: {voice: 1, chat: 1},
           login: manual, endpoint: PJSIP/fuzz-9902}
"""


@pytest.fixture
def fuzz_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    b = PrivateBroker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def fuzz_daemon(fuzz_broker: PrivateBroker, tmp_path: Path) -> Iterator[Daemon]:
    """The daemon with no PBX (AMI and FastAGI on ports where nothing else listens): agent
    commands and chat tasks need none, and a second ACD on the shared dev PBX's AMI would
    take other sessions' waiting callers for unknown calls."""
    roster = tmp_path / "agents.yaml"
    roster.write_text(FUZZ_ROSTER)
    d = Daemon(
        tmp_path,
        extra_env={
            "IVR_ENGINE_ACD_ROSTER": str(roster),
            "IVR_ENGINE_MQTT_PORT": str(fuzz_broker.port),
            "IVR_ENGINE_AMI_PORT": str(free_port()),
            "IVR_ENGINE_AGI_PORT": str(free_port()),
        },
    )
    d.start()
    try:
        yield d
    finally:
        d.stop(timeout=40)


def _replies(
    capture: MqttCapture, prefix: str, since: float = 0.0
) -> dict[str, list[dict[str, Any]]]:
    """Messages under `prefix` that arrived after `since` (monotonic), by the rest of their
    topic (a reply topic's request id)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for at, topic, payload in list(capture.messages):
        if at >= since and topic.startswith(prefix):
            out.setdefault(topic[len(prefix) :], []).append(json.loads(payload))
    return out


def _tasks(d: Daemon) -> list[dict[str, Any]]:
    tasks = json.loads(d.cli("tasks", "list", "--json").stdout)["tasks"]
    return [{k: v for k, v in t.items() if k != "age"} for t in tasks]


def _states(d: Daemon) -> dict[str, tuple[str, str | None]]:
    return {a: (s["state"], s["reason"]) for a, s in agent_states(d).items()}


@pytest.mark.mqtt
@pytest.mark.slow
def test_the_daemon_answers_a_batch_of_bad_messages_and_stays_up(
    fuzz_daemon: Daemon, fuzz_broker: PrivateBroker
) -> None:
    d, port = fuzz_daemon, fuzz_broker.port
    capture = MqttCapture(port)
    capture.start()
    try:
        d.cli("agents", "login", "9901", "--timeout", "10")
        d.cli("agents", "login", "9902", "--timeout", "10")
        d.cli("agents", "pause", "9902", "break", "--timeout", "10")
        # A task that waits (only 9902, on a break, speaks Cantonese): it must stay as it is.
        capture.publish(SUBMIT, _json({"id": "held-1", **CHAT, "skills": "cantonese"}))
        capture.wait_for(lambda: "held-1" in _replies(capture, "ivr/acd/task/reply/"), 10, "held")
        before = {"agents": _states(d), "tasks": _tasks(d)}
        assert before["agents"] == {"9901": ("ready", None), "9902": ("paused", "break")}
        assert [(t["id"], t["state"]) for t in before["tasks"]] == [("held-1", "waiting")]

        sent = time.monotonic()
        for topic, _, payload, _ in BAD:
            capture.publish(topic, payload)
        answerable = {rid: (topic, word) for topic, rid, _, word in BAD if rid is not None}
        idless_tasks = [word for topic, rid, _, word in BAD if rid is None and topic != COMMAND]
        idless_commands = sum(1 for topic, rid, _, _ in BAD if rid is None and topic == COMMAND)

        def answered() -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
            got = _replies(capture, "ivr/acd/reply/", sent)
            got.update(_replies(capture, "ivr/acd/task/reply/", sent))
            return got, _replies(capture, "ivr/acd/task/rejected", sent).get("", [])

        try:
            capture.wait_for(
                lambda: (
                    set(answerable) <= set(answered()[0])
                    and len(answered()[1]) >= len(idless_tasks)
                ),
                30,
                "every answerable bad message to be answered",
            )
        except AssertionError as exc:
            got, rejected = answered()
            missing = sorted(set(answerable) - set(got))
            raise AssertionError(f"{exc}: no reply to {missing}; rejected: {rejected}") from None
        took = time.monotonic() - sent
        time.sleep(1.0)  # anything more that would come
        replies, rejected = answered()
        logs = d.logs()
        alive = d.proc is not None and d.proc.poll() is None
        after = {"agents": _states(d), "tasks": _tasks(d)}

        # Good messages still work: a command, a task, and a duplicate id is refused.
        d.cli("agents", "resume", "9902", "--timeout", "10")
        capture.wait_for(
            lambda: any(
                t == "ivr/agent/9902/task" and json.loads(p)["event"] == "TaskOffered"
                for _, t, p in list(capture.messages)
            ),
            10,
            "the held task to be offered to 9902",
        )
        capture.publish(SUBMIT, _json({"id": "good-1", **CHAT}))
        capture.wait_for(lambda: "good-1" in _replies(capture, "ivr/acd/task/reply/"), 10, "good")
        capture.publish(SUBMIT, _json({"id": "good-1", **CHAT}))
        capture.wait_for(
            lambda: len(_replies(capture, "ivr/acd/task/reply/")["good-1"]) >= 2, 10, "dup"
        )
        good, duplicate = _replies(capture, "ivr/acd/task/reply/")["good-1"]
        states_end = _states(d)
    finally:
        capture.stop()
    print(
        f"{len(BAD)} bad messages ({len(answerable)} with an id): all answered "
        f"{took:.2f}s after the first was sent"
    )
    assert alive, d.output()[-3000:]
    # Each answerable one exactly once, on its own reply topic, refused with a reason.
    assert set(replies) == set(answerable), sorted(replies)
    for rid, (_, word) in answerable.items():
        (reply,) = replies[rid]
        assert reply["id"] == rid and reply["ok"] is False, reply
        assert word in reply["error"], (rid, reply)
    # The id-less task payloads on the rejected topic; the id-less commands logged, dropped.
    assert len(rejected) == len(idless_tasks), rejected
    for reply, word in zip(rejected, idless_tasks, strict=True):
        assert reply["id"] is None and reply["ok"] is False and word in reply["error"], reply
    assert logs.count("ACD command without a usable id ignored") == idless_commands
    # Nothing escaped a handler (one that did would have been logged with its traceback).
    assert "ACD command not handled" not in logs and "not handled" not in logs
    assert after == before, (before, after)
    assert good["ok"] is True and good["task"]["agent"] == "9901", good
    assert duplicate["ok"] is False and duplicate["error"].startswith("duplicate id good-1")
    assert states_end == {"9901": ("reserved", None), "9902": ("reserved", None)}, states_end
