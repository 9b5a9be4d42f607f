"""Non-voice tasks (ivr_engine/tasks): the submission schema, masking, and the task service as
the real Router's TaskSink (fake PBX, a recording publisher, a fake callback dialer)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from typing import Any

import pytest

from acd.queue_events import QueueEvent
from acd.roster import Roster
from acd.router import Router
from ivr_engine.config import AcdSettings
from ivr_engine.errors import AmiError
from ivr_engine.protocol.ami import AmiEvent, Fields, OriginateResponse
from ivr_engine.tasks.callback import AmiCallbackDialer
from ivr_engine.tasks.schema import (
    MAX_BODY,
    MAX_PAYLOAD_BYTES,
    TaskRejected,
    mask_cards,
    parse_agent_reply,
    parse_cancel,
    parse_submission,
    request_id_of,
)
from ivr_engine.tasks.service import TaskService, task_extension

ROSTER = Roster.parse(
    """
queues:
  general: {wrapup: 0}
  vip: {wrapup: 0, steps: [{after: 30, accept: private_banking}]}
agents:
  "1001": {skills: {private_banking: 8, mandarin: 9}}
  "1007": {skills: {mandarin: 9, cards: 6}, channels: {voice: 1, callback: 1, email: 2}}
  "1008": {skills: {mandarin: 8, cards: 5}, channels: {voice: 1, chat: 3}}
"""
)

GOOD: dict[str, Any] = {
    "id": "web-1",
    "channel": "chat",
    "queue": "general",
    "skills": "cards",
    "priority": 3,
    "language": "cmn",
    "customer": {"number": "13800138000", "name": "Wang", "email": "wang.li@example.com"},
    "subject": "card limit",
    "body": "Hello, my card 6222 0212 3456 7890 123 was declined",
}


def raw(body: Any) -> bytes:
    return json.dumps(body).encode()


def with_(**changes: Any) -> bytes:
    body = {**GOOD, **changes}
    return raw({k: v for k, v in body.items() if v is not DROP})


DROP = object()

# (payload, the reason the customer's system gets back)
BAD: list[tuple[bytes, str]] = [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (raw([1, 2]), "a JSON object, got a list"),
    (b"[" * 100_000 + b"]" * 100_000, f"at most {MAX_PAYLOAD_BYTES}"),
    (with_(body="x" * (MAX_PAYLOAD_BYTES + 10)), f"at most {MAX_PAYLOAD_BYTES}"),
    (with_(body="x" * (MAX_BODY + 1)), f"body is {MAX_BODY + 1} characters; at most {MAX_BODY}"),
    (with_(subject="x" * 201), "subject is 201 characters; at most 200"),
    (with_(extra=1), "unknown field(s): extra"),
    (with_(id=DROP), "missing field(s): id"),
    (with_(channel=DROP, skills=DROP), "missing field(s): channel, skills"),
    (with_(id=7), "id must be 1-64 characters"),
    (with_(id="../x"), "id must be 1-64 characters"),
    (with_(id="x" * 65), "id must be 1-64 characters"),
    (with_(channel="voice"), "channel must be one of sms, email, chat, callback, got 'voice'"),
    (with_(channel="fax"), "channel must be one of"),
    (with_(queue=3), "queue must be a string, got a number"),
    (with_(queue="nosuch"), "unknown queue 'nosuch'; the roster has general, vip"),
    (with_(queue="*"), "unknown queue '*'"),
    (with_(skills=["cards"]), "skills must be a string, got a list"),
    (with_(skills="cards and and"), "skills:"),
    (with_(skills="cards >= 11"), "skills:"),
    (with_(skills="x " * 300), "skills is 600 characters; at most 512"),
    (with_(priority="high"), "priority must be an integer 0..10"),
    (with_(priority=True), "priority must be an integer 0..10"),
    (with_(priority=11), "priority must be an integer 0..10"),
    (with_(priority=2.5), "priority must be an integer 0..10"),
    (
        with_(priority=10**100),
        "priority must be an integer 0..10 (higher is more urgent), got a huge",
    ),
    (with_(channel=[[["chat"]]]), "channel must be one of sms, email, chat, callback, got a list"),
    (raw(GOOD).replace(b'"priority": 3', b'"priority": ' + b"9" * 5000), "not JSON: Exceeds"),
    (raw(GOOD).replace(b'"priority": 3', b'"priority": ' + b"[" * 3000 + b"]" * 3000), "not JSON"),
    (with_(language="fr"), "language must be one of cmn, yue, en"),
    (with_(customer="Wang"), "customer must be an object, got a string"),
    (with_(customer={"number": 13800138000}), "customer.number must be a string, got a number"),
    (with_(customer={"number": "138-0013"}), "customer.number must be 3-20 digits"),
    (with_(customer={"email": "not-an-address"}), "customer.email is not an e-mail address"),
    (with_(customer={"pin": "123456"}), "unknown customer field(s): pin"),
    (with_(customer={"name": "a\x00b"}), "name contains control characters"),
    (with_(subject="two\nlines"), "subject contains control characters"),
    (with_(body="bell\x07"), "body contains control characters"),
    (with_(body=None), "body must be a string, got null"),
    (with_(callback_number="13800138000"), "callback_number is for callback tasks, not chat"),
    (with_(channel="callback", skills="cards"), "a callback task needs callback_number"),
    (
        with_(channel="callback", callback_number="call me"),
        "callback_number must be 3-20 digits",
    ),
    (with_(channel="email", subject=""), "a email task needs subject"),
    (with_(channel="sms", body="  "), "a sms task needs body"),
    # Well-formed, but nobody could ever take it: refused rather than left waiting.
    (with_(skills="private_banking"), "no agent in the roster takes chat tasks in queue general"),
    (with_(channel="sms"), "no agent in the roster takes sms tasks"),
    (with_(skills="cards >= 6"), "no agent in the roster takes chat tasks"),
]


@pytest.mark.parametrize(("payload", "reason"), BAD, ids=[r for _, r in BAD])
def test_bad_submissions_are_refused_with_their_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(TaskRejected) as info:
        parse_submission(payload, ROSTER)
    assert reason in str(info.value)


def test_a_good_submission_and_what_is_published_of_it() -> None:
    request = parse_submission(raw(GOOD), ROSTER)
    assert (request.id, request.channel, request.queue, request.priority) == (
        "web-1",
        "chat",
        "general",
        3,
    )
    view = request.view()
    text = json.dumps(view)
    assert "13800138000" not in text and "wang.li" not in text
    assert view["customer"] == {
        "number": "*******8000",
        "name": "Wang",
        "email": "w***@example.com",
    }
    assert "6222 0212 3456 7890 123" not in view["body"]
    assert view["body"].endswith("**** **** **** ***0 123 was declined")
    callback = parse_submission(
        with_(channel="callback", callback_number="+8613800138000", queue="vip"), ROSTER
    )
    assert callback.callback_number == "+8613800138000"  # kept whole for the PBX only
    assert callback.view()["callback_number"] == "**********8000"


def test_relaxation_steps_count_for_eligibility() -> None:
    # vip relaxes to private_banking after 30 s; 1001 has it but takes voice only, 1007 takes
    # callbacks but lacks it: a callback "mandarin >= 9 and private_banking" has nobody ever.
    with pytest.raises(TaskRejected, match="no agent"):
        parse_submission(
            with_(
                channel="callback",
                queue="vip",
                skills="mandarin >= 9 and private_banking",
                callback_number="13800138000",
            ),
            ROSTER,
        )
    ok = with_(channel="callback", queue="vip", skills="corporate", callback_number="555123")
    with pytest.raises(TaskRejected, match="no agent"):
        parse_submission(ok, ROSTER)


def test_card_masking_leaves_ordinary_numbers() -> None:
    assert mask_cards("call 13800138000 or card 4111111111111111") == (
        "call 13800138000 or card ************1111"
    )
    assert mask_cards("order 12345") == "order 12345"


def test_cancel_and_agent_reply_schemas() -> None:
    assert parse_cancel(raw({"id": "t1", "reason": "solved"})).reason == "solved"
    for payload, reason in [
        (raw({"id": "t1", "why": "x"}), "unknown field(s): why"),
        (raw({}), "id must be"),
    ]:
        with pytest.raises(TaskRejected, match=re.escape(reason)):
            parse_cancel(payload)
    assert parse_agent_reply(raw({"task_id": "t1", "action": "accept"})).action == "accept"
    for payload, reason in [
        (raw({"task_id": "t1", "action": "maybe"}), "action must be one of accept, reject, done"),
        (raw({"action": "accept"}), "task_id must be"),
        (raw({"task_id": "t1", "action": "done", "x": 1}), "unknown field"),
    ]:
        with pytest.raises(TaskRejected, match=re.escape(reason)):
            parse_agent_reply(payload)


def test_request_id_of_finds_the_reply_topic_even_in_oversize_payloads() -> None:
    assert request_id_of(raw(GOOD)) == "web-1"
    assert request_id_of(with_(body="x" * (MAX_PAYLOAD_BYTES + 1))) == "web-1"
    assert request_id_of(with_(id="../../x")) == ""
    assert request_id_of(b"garbage") == ""


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"id": "t-deep", "body": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", "nested too deeply"),
        (b'{"id": "t-digits", "priority": ' + b"9" * 5_000 + b"}", "4300 digits"),
        (b'{"id": "t-cut", "channel": "chat"', "not JSON"),
        (b'{"id": "t-bytes", "body": "\xff"}', "not UTF-8"),
    ],
)
def test_request_id_of_finds_the_id_of_payloads_that_do_not_parse(
    payload: bytes, reason: str
) -> None:
    """Refused, but answered on the sender's reply topic, not on acd/task/rejected (found by
    the fault suite's daemon batch)."""
    assert request_id_of(payload) == payload.split(b'"')[3].decode()
    with pytest.raises(TaskRejected, match=reason):
        parse_submission(payload, ROSTER)


def test_an_id_with_a_trailing_newline_is_not_an_id() -> None:
    # `$` matches before a final newline: such an id would have become a topic level.
    assert request_id_of(with_(id="web-1\n")) == ""
    with pytest.raises(TaskRejected, match="id must be"):
        parse_submission(with_(id="web-1\n"), ROSTER)
    with pytest.raises(TaskRejected, match="task_id must be"):
        parse_agent_reply(raw({"task_id": "t1\n", "action": "done"}))


# ---------------------------------------------------------------------- the service


class Publisher:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], int]] = []

    def publish(
        self, topic: str, payload: Mapping[str, Any], *, retain: bool = False, qos: int = 0
    ) -> None:
        self.events.append((topic, dict(payload), qos))

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [p for t, p, _ in self.events if t == topic]

    def events_of(self, topic: str) -> list[str]:
        return [p["event"] for p in self.on(topic)]


class Pbx:
    def __init__(self) -> None:
        self.commands: list[tuple[str, ...]] = []

    async def redirect(self, channel: str, context: str, exten: str, priority: int = 1) -> None:
        self.commands.append(("redirect", channel, context, exten))

    async def set_variable(self, channel: str, name: str, value: str) -> None:
        self.commands.append(("setvar", channel, name, value))

    async def hangup(self, channel: str, cause: int = 16) -> None:
        self.commands.append(("hangup", channel))


class Dialer:
    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.rung: list[tuple[str, str, str, str]] = []
        self.hung_up: list[str] = []
        self.release = asyncio.Event()

    async def ring(
        self, task_id: str, agent: str, endpoint: str, number: str, ring_timeout: float
    ) -> bool:
        self.rung.append((task_id, agent, endpoint, number))
        await self.release.wait()
        return self.answer

    async def hangup(self, channel: str) -> None:
        self.hung_up.append(channel)


def make(
    accept_timeout: float | None = None, dialer: Dialer | None = None
) -> tuple[Router, TaskService, Publisher, list[QueueEvent]]:
    pub = Publisher()
    router = Router(ROSTER, Pbx(), pub, ring_timeout=5, guard_margin=10)
    service = TaskService(router, pub, dialer=dialer, accept_timeout=accept_timeout)
    seen: list[QueueEvent] = []
    router.listeners.append(seen.append)
    return router, service, pub, seen


def submit(service: TaskService, **changes: Any) -> dict[str, Any]:
    return service.submit(with_(**changes))


def reply(service: TaskService, agent: str, task_id: str, action: str) -> None:
    service.agent_reply(agent, raw({"task_id": task_id, "action": action}))


async def test_chat_goes_to_the_chat_agent_only_and_is_worked_to_done() -> None:
    router, service, pub, seen = make()
    async with router, service.running():
        assert router.task_sink is service
        router.login("1001")  # voice only: never offered a chat
        router.login("1008")
        answer = submit(service)
        assert answer["ok"] and answer["task"]["state"] == "offered"
        offered = pub.on("agent/1008/task")
        assert [e["event"] for e in offered] == ["TaskOffered"]
        assert offered[0]["task"]["customer"]["number"] == "*******8000"
        assert offered[0]["accept_within"] == 5 and offered[0]["accept_by"] == "mqtt"
        assert {q for t, _, q in pub.events if t == "agent/1008/task"} == {1}  # QoS 1
        assert not pub.on("agent/1001/task")
        reply(service, "1008", "web-1", "accept")
        assert router.calls["web-1"].state == "connected"
        reply(service, "1008", "web-1", "done")
        assert "web-1" not in router.calls and not service.tasks
    assert pub.events_of("acd/task/status/web-1") == [
        "TaskQueued",
        "TaskOffered",
        "TaskAccepted",
        "TaskDone",
    ]
    assert pub.events_of("agent/1008/task") == ["TaskOffered", "TaskAccepted", "TaskDone"]
    assert [e.verb for e in seen if e.call_id == "web-1"] == [
        "ENTERQUEUE",
        "RINGING",
        "CONNECT",
        "COMPLETEAGENT",
    ]
    assert "13800138000" not in json.dumps([p for _, p, _ in pub.events])
    assert not pub.on("agent/1001/task")


async def test_chat_capacity_three_is_respected() -> None:
    router, service, pub, _ = make()
    async with router, service.running():
        router.login("1008")
        for n in range(5):
            submit(service, id=f"c{n}")
            offered = [
                e["task_id"] for e in pub.on("agent/1008/task") if e["event"] == "TaskOffered"
            ]
            if offered[-1] == f"c{n}":  # offered at once while 1008 has a free chat slot
                reply(service, "1008", offered[-1], "accept")
        working = [r.request.id for r in service.tasks.values() if r.state == "working"]
        assert working == ["c0", "c1", "c2"]
        assert [r.state for r in service.tasks.values()][3:] == ["waiting", "waiting"]
        reply(service, "1008", "c1", "done")
        assert service.tasks["c3"].state == "offered"  # a slot freed: the next one
        assert service.tasks["c4"].state == "waiting"
        assert pub.events_of("agent/1008/task")[-2:] == ["TaskDone", "TaskOffered"]


async def test_a_refused_submission_queues_nothing_and_duplicates_are_refused() -> None:
    router, service, pub, seen = make()
    async with router, service.running():
        router.login("1008")
        prefix = "ivr"
        service.handle("ivr/acd/task/submit", with_(queue="nosuch"), prefix)
        assert not router.calls and not service.tasks
        assert pub.on("acd/task/reply/web-1") == [
            {
                "id": "web-1",
                "op": "submit",
                "ok": False,
                "error": "unknown queue 'nosuch'; the roster has general, vip",
            }
        ]
        service.handle("ivr/acd/task/submit", raw(GOOD), prefix)  # corrected: accepted
        assert pub.on("acd/task/reply/web-1")[-1]["ok"] is True
        service.handle("ivr/acd/task/submit", raw(GOOD), prefix)  # a QoS 1 redelivery
        assert pub.on("acd/task/reply/web-1")[-1]["error"].startswith("duplicate id web-1")
        reply(service, "1008", "web-1", "accept")
        reply(service, "1008", "web-1", "done")
        service.handle("ivr/acd/task/submit", raw(GOOD), prefix)  # even after it is done
        assert pub.on("acd/task/reply/web-1")[-1]["error"].startswith("duplicate id")
        service.handle("ivr/acd/task/submit", b'{"channel": "chat"}', prefix)
        assert pub.on("acd/task/rejected") == [
            {
                "id": None,
                "op": "submit",
                "ok": False,
                "error": "missing field(s): id, queue, skills",
            }
        ]
        assert not router.calls and not service.tasks
    assert [e.verb for e in seen].count("ENTERQUEUE") == 1
    assert service.rejected == 4


async def test_reject_and_offer_timeout_requeue_then_the_agent_is_paused() -> None:
    router, service, pub, seen = make(accept_timeout=0.05)
    async with router, service.running():
        router.login("1008")
        submit(service)
        reply(service, "1008", "web-1", "reject")
        assert service.tasks["web-1"].state == "offered"  # back at the head, offered again
        await asyncio.sleep(0.15)  # not accepted in time: the second miss pauses 1008
        assert service.tasks["web-1"].state == "waiting"
        assert router.agents()[2]["state"] == "paused"
        router.resume("1008")
        assert service.tasks["web-1"].offers == 3
    assert pub.events_of("agent/1008/task") == [
        "TaskOffered",
        "TaskOffered",
        "TaskOfferExpired",
        "TaskOffered",
    ]
    verbs = [e.verb for e in seen if e.call_id == "web-1"]
    assert verbs == ["ENTERQUEUE", "RINGING", "RINGNOANSWER", "RINGING", "RINGNOANSWER", "RINGING"]
    requeued = [p for p in pub.on("acd/task/status/web-1") if p["event"] == "TaskRequeued"]
    assert [p["reason"] for p in requeued] == ["declined", "timeout"]


async def test_agent_replies_that_do_not_fit_are_refused_on_the_agent_topic() -> None:
    router, service, pub, _ = make()
    async with router, service.running():
        router.login("1008")
        router.login("1007")
        submit(service)
        reply(service, "1007", "web-1", "accept")  # not offered to 1007
        reply(service, "1008", "web-1", "done")  # not accepted yet
        reply(service, "1008", "nosuch", "accept")
        service.agent_reply("1008", b"{")
        assert router.calls["web-1"].state == "ringing"
    refused = pub.on("agent/1007/task") + [
        e for e in pub.on("agent/1008/task") if e["event"] == "TaskReplyRefused"
    ]
    assert [e["error"] for e in refused] == [
        "task web-1 is not offered to agent 1007",
        "task web-1 is not being worked by agent 1008",
        "no task nosuch is with the ACD",
        "not JSON: Expecting property name enclosed in double quotes at line 1 column 2",
    ]


async def test_cancel_while_offered_or_worked_tells_the_agent() -> None:
    router, service, pub, seen = make()
    async with router, service.running():
        router.login("1008")
        submit(service, id="a")
        submit(service, id="b")
        answer = service.cancel(raw({"id": "a", "reason": "solved on the web"}))
        assert answer["task"]["state"] == "cancelled"
        assert service.tasks["b"].state == "offered"  # 1008 is free for the next one
        reply(service, "1008", "b", "accept")
        service.cancel(raw({"id": "b"}))
        with pytest.raises(TaskRejected, match="no task b is with the ACD"):
            service.cancel(raw({"id": "b"}))
        assert not router.calls and not service.tasks
    assert pub.events_of("agent/1008/task") == [
        "TaskOffered",
        "TaskCancelled",
        "TaskOffered",
        "TaskAccepted",
        "TaskCancelled",
    ]
    assert [e.verb for e in seen if e.call_id in "ab"][-1] == "COMPLETECALLER"
    assert pub.on("acd/task/status/a")[-1]["reason"] == "solved on the web"


async def test_list_and_a_task_that_overflows_is_reported_dropped() -> None:
    roster = Roster.parse(
        'queues: {general: {max_wait: 0.05}}\nagents: {"1008": {skills: {cards: 5}, '
        "channels: {chat: 1}}}"
    )
    pub = Publisher()
    router = Router(roster, Pbx(), pub)
    service = TaskService(router, pub)
    async with router, service.running():
        submit(service)  # nobody logged in: it waits
        listed = service.list()["tasks"]
        assert [(t["id"], t["state"], t["customer"]["number"]) for t in listed] == [
            ("web-1", "waiting", "*******8000")
        ]
        await asyncio.sleep(0.15)
        assert not service.tasks and not router.calls
    assert pub.on("acd/task/status/web-1")[-1]["event"] == "TaskDropped"
    assert pub.on("acd/task/status/web-1")[-1]["reason"] == "overflow:max-wait"


CALLBACK = {"channel": "callback", "callback_number": "13800138000", "body": "", "subject": ""}


async def test_a_callback_rings_the_agent_then_is_done_when_the_agent_hangs_up() -> None:
    dialer = Dialer(answer=True)
    router, service, pub, seen = make(dialer=dialer)
    async with router, service.running():
        router.login("1007")
        submit(service, id="cb1", **CALLBACK)
        await asyncio.sleep(0)
        assert dialer.rung == [("cb1", "1007", "PJSIP/1007", "13800138000")]
        reply(service, "1007", "cb1", "accept")  # a callback is accepted with the phone
        assert router.calls["cb1"].state == "ringing"
        service.callback_answered("cb1", "1007", "PJSIP/1007-00000001")
        dialer.release.set()  # OriginateResponse Success after the UserEvent: no second accept
        await router.drain()
        assert router.calls["cb1"].state == "connected"
        service.callback_result("cb1", "1007", "answer")
        service.callback_ended("cb1", "1007")
        assert not router.calls and not service.tasks
    assert pub.on("agent/1007/task")[0]["accept_by"] == "phone"
    assert pub.on("agent/1007/task")[1]["error"] == "a callback is accepted by answering the phone"
    assert pub.on("acd/task/status/cb1")[-1] == {
        "event": "TaskDone",
        "id": "cb1",
        "channel": "callback",
        "agent": "1007",
        "outcome": "ANSWER",
    }
    assert [e.verb for e in seen if e.call_id == "cb1"] == [
        "ENTERQUEUE",
        "RINGING",
        "CONNECT",
        "COMPLETEAGENT",
    ]


async def test_a_callback_not_answered_requeues_and_a_late_answer_is_hung_up() -> None:
    dialer = Dialer(answer=False)
    router, service, pub, seen = make(dialer=dialer)
    async with router, service.running():
        router.login("1007")
        submit(service, id="cb1", **CALLBACK)
        dialer.release.set()
        await router.drain()  # the phone was not answered: requeued, offered again
        assert [e.verb for e in seen if e.call_id == "cb1"][2] == "RINGNOANSWER"
        assert len(dialer.rung) == 2
        service.cancel(raw({"id": "cb1"}))
        service.callback_answered("cb1", "1007", "PJSIP/1007-00000002")  # answered too late
        await router.drain()
        assert dialer.hung_up == ["PJSIP/1007-00000002"]
        assert not router.calls


async def test_the_extension_plugs_into_an_acd_service() -> None:
    pub = Publisher()
    router = Router(ROSTER, Pbx(), pub)

    subscribed: list[str] = []

    class Ami:
        def subscribe(self, name: str, callback: Any) -> Any:
            subscribed.append(name)
            return lambda: subscribed.remove(name)

    class Service:
        def __init__(self) -> None:
            self.router, self.publisher, self.mqtt = router, pub, None
            self.ami, self.settings = Ami(), AcdSettings()

    async with router:
        async with task_extension(Service()) as tasks:  # type: ignore[arg-type]
            assert router.task_sink is tasks and tasks.dialer is not None
            assert subscribed == ["UserEvent"]  # the callback dialplan's events
        assert router.task_sink is None and subscribed == []


# ---------------------------------------------------------------------- the AMI dialer


class FakeAmi:
    """Just enough of AmiClient: Originate recorded, its OriginateResponse scripted."""

    def __init__(self, response: str = "Success", fail: bool = False) -> None:
        self.response, self.fail = response, fail
        self.originated: list[dict[str, Any]] = []
        self.actions: list[dict[str, str]] = []
        self.callbacks: dict[str, Any] = {}

    def subscribe(self, name: str, callback: Any) -> Any:
        self.callbacks[name] = callback
        return lambda: self.callbacks.pop(name)

    async def originate(self, **kw: Any) -> str:
        if self.fail:
            raise AmiError("not connected")
        self.originated.append(kw)
        return "a-1"

    async def originate_response(  # the real signature
        self,
        action_id: str,
        *,
        timeout: float,  # noqa: ASYNC109
    ) -> OriginateResponse:
        pairs = [("Response", self.response), ("ActionID", action_id), ("Reason", "3")]
        return OriginateResponse.from_fields("OriginateResponse", Fields(pairs))

    async def action(self, fields: dict[str, str], **kw: Any) -> None:
        self.actions.append(fields)


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    def callback_answered(self, task_id: str, agent: str, channel: str) -> None:
        self.seen.append(("answered", task_id, agent, channel))

    def callback_result(self, task_id: str, agent: str, status: str) -> None:
        self.seen.append(("result", task_id, agent, status))

    def callback_ended(self, task_id: str, agent: str) -> None:
        raise RuntimeError("a bug in the service")


async def test_the_ami_dialer_rings_the_agent_into_task_callback() -> None:
    ami, events = FakeAmi(), Events()
    dialer = AmiCallbackDialer(
        ami,  # type: ignore[arg-type]
        events,
        dial="PJSIP/devtrunk/sip:{number}@127.0.0.1:5062",
        customer_ring=30,
    )
    assert await dialer.ring("cb1", "1007", "PJSIP/1007", "13800138000", 15.0) is True
    sent = ami.originated[0]
    assert (sent["channel"], sent["context"], sent["exten"], sent["ring_timeout"]) == (
        "PJSIP/1007",
        "task-callback",
        "s",
        15.0,
    )
    assert sent["variables"] == {
        "TASK_ID": "cb1",
        "TASK_AGENT": "1007",
        "TASK_OWNER": dialer.owner,
        "TASK_NUMBER": "13800138000",
        "TASK_DIAL": "PJSIP/devtrunk/sip:13800138000@127.0.0.1:5062",
        "TASK_RING": "30",
    }
    ami.response = "Failure"
    assert await dialer.ring("cb1", "1007", "PJSIP/1007", "13800138000", 15.0) is False
    ami.fail = True
    assert await dialer.ring("cb1", "1007", "PJSIP/1007", "13800138000", 15.0) is False
    with pytest.raises(ValueError, match="no {number}"):
        AmiCallbackDialer(ami, events, dial="PJSIP/devtrunk")  # type: ignore[arg-type]


def test_the_ami_dialer_turns_user_events_into_callback_steps() -> None:
    ami, events = FakeAmi(), Events()
    dialer = AmiCallbackDialer(ami, events)  # type: ignore[arg-type]
    dialer.start()

    def user_event(owner: str = dialer.owner, **fields: str) -> None:
        pairs = [*fields.items(), ("Owner", owner)]
        ami.callbacks["UserEvent"](AmiEvent("UserEvent", Fields(pairs)))

    user_event(UserEvent="AcdTaskAnswered", Task="cb1", Agent="1007", Channel="PJSIP/1007-01")
    user_event(UserEvent="AcdTaskDialResult", Task="cb1", Agent="1007", Status="ANSWER")
    user_event(UserEvent="AcdTaskEnded", Task="cb1", Agent="1007")  # raises: logged, not raised
    user_event(UserEvent="AcdWaiting", Call="c1")  # the voice ACD's, not ours
    user_event(UserEvent="AcdTaskAnswered", Agent="1007")  # no task id: ignored
    # Another daemon's callback on the same PBX: not ours to accept (nor to hang up).
    user_event("f00", UserEvent="AcdTaskAnswered", Task="cb2", Agent="1007", Channel="x")
    assert events.seen == [
        ("answered", "cb1", "1007", "PJSIP/1007-01"),
        ("result", "cb1", "1007", "ANSWER"),
    ]
    dialer.close()
    assert ami.callbacks == {}


async def test_a_task_that_overflows_on_arrival_is_refused_not_queued() -> None:
    roster = Roster.parse(
        'queues: {general: {max_length: 1}}\nagents: {"1008": {skills: {cards: 5}, '
        "channels: {chat: 1}}}"
    )
    pub = Publisher()
    router = Router(roster, Pbx(), pub)
    service = TaskService(router, pub)
    async with router, service.running():
        submit(service, id="first")  # nobody logged in: it waits, the queue is full
        with pytest.raises(TaskRejected, match=r"queue general cannot take it now \(overflow"):
            submit(service, id="second")
        assert list(service.tasks) == ["first"] and list(router.calls) == ["first"]
        assert pub.on("acd/task/status/second") == []
