"""The router's queue events (acd/queue_events.py): what queue_log and live statistics see."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from acd.errors import InvalidEvent
from acd.queue_events import QueueEvent
from acd.router import Router
from tests.unit.acd.test_router import make, register


def listen(router: Router) -> list[QueueEvent]:
    seen: list[QueueEvent] = []
    router.listeners.append(seen.append)
    return seen


def verbs(events: list[QueueEvent]) -> list[tuple[str, str, str]]:
    return [(e.verb, e.call_id, e.agent) for e in events]


async def test_a_call_answered_and_ended_by_the_agent() -> None:
    router, _, _ = make()
    async with router:
        seen = listen(router)
        router.contact_changed("1001", True)
        register(router, "c1")
        router.call_waiting("c1", "PJSIP/t-1")
        await router.drain()
        router.answered("c1", "1001")
        router.dial_result("c1", "1001", "ANSWER")
        await asyncio.sleep(0.1)  # wrap-up 0.05 s
    assert verbs(seen) == [
        ("AGENTLOGIN", "", "1001"),
        ("ENTERQUEUE", "c1", ""),
        ("RINGING", "c1", "1001"),
        ("CONNECT", "c1", "1001"),
        ("COMPLETEAGENT", "c1", "1001"),
    ]
    connect = seen[3]
    assert connect.queue == "vip" and connect.data["holdtime"] >= 0
    assert set(seen[4].data) == {"holdtime", "calltime"}


async def test_ring_no_answer_pause_abandon_and_caller_ending() -> None:
    router, _, _ = make()
    async with router:
        seen = listen(router)
        router.contact_changed("1001", True)
        register(router, "c1")
        router.call_waiting("c1", "PJSIP/t-1")
        router.dial_result("c1", "1001", "NOANSWER")
        router.dial_result("c1", "1001", "NOANSWER")  # second miss: paused
        router.channel_gone("PJSIP/t-1")  # the caller gives up while waiting
        router.resume("1001")
        register(router, "c2")
        router.call_waiting("c2", "PJSIP/t-2")
        await router.drain()
        router.answered("c2", "1001")
        router.channel_gone("PJSIP/t-2")  # the caller ends the conversation
    got = verbs(seen)
    assert got[:8] == [
        ("AGENTLOGIN", "", "1001"),
        ("ENTERQUEUE", "c1", ""),
        ("RINGING", "c1", "1001"),
        ("RINGNOANSWER", "c1", "1001"),
        ("RINGING", "c1", "1001"),
        ("RINGNOANSWER", "c1", "1001"),
        ("PAUSE", "", "1001"),
        ("ABANDON", "c1", ""),
    ]
    assert seen[6].data == {"reason": "no-answer"}
    assert seen[7].data["ringing"] is False
    assert got[8:] == [
        ("UNPAUSE", "", "1001"),
        ("ENTERQUEUE", "c2", ""),
        ("RINGING", "c2", "1001"),
        ("CONNECT", "c2", "1001"),
        ("COMPLETECALLER", "c2", "1001"),
    ]


async def test_a_failing_listener_never_stops_routing() -> None:
    router, pbx, _ = make()

    def broken(event: QueueEvent) -> None:
        raise RuntimeError("listener bug")

    async with router:
        router.listeners.append(broken)
        seen = listen(router)
        router.contact_changed("1001", True)
        register(router, "c1")
        router.call_waiting("c1", "PJSIP/t-1")
        await router.drain()
    assert [c[0] for c in pbx.commands if c[0] == "redirect"] == ["redirect"]
    assert router.listener_errors == len(seen) == 3


def test_unknown_verbs_are_refused() -> None:
    with pytest.raises(ValueError, match="BOGUS"):
        QueueEvent(0.0, "BOGUS")


TASK_ROSTER = """
queues:
  general: {wrapup: 0}
agents:
  "1008": {skills: {mandarin: 8, cards: 5}, channels: {voice: 1, chat: 2}}
"""


class Sink:
    def __init__(self) -> None:
        self.offers: list[tuple[str, str]] = []
        self.dropped: list[tuple[str, str]] = []

    def offer(self, call: Any, agent: str) -> None:
        self.offers.append((call.call_id, agent))

    def dropped_(self, call: Any, reason: str) -> None:
        self.dropped.append((call.call_id, reason))


async def test_chat_tasks_share_the_matcher_and_respect_channel_capacity() -> None:
    from acd.roster import Roster
    from tests.unit.acd.test_router import FakePbx, FakePublisher

    pbx = FakePbx()
    router = Router(Roster.parse(TASK_ROSTER), pbx, FakePublisher(), ring_timeout=5)
    sink = Sink()
    async with router:
        seen = listen(router)
        with pytest.raises(InvalidEvent, match="no task delivery"):
            router.submit_task(
                "t0", queue="general", requirement="cards", priority=0, channel="chat"
            )
        router.task_sink = type("S", (), {"offer": sink.offer, "dropped": sink.dropped_})()
        router.login("1008")
        for n in range(3):
            router.submit_task(
                f"t{n + 1}",
                queue="general",
                requirement="cards",
                priority=0,
                channel="chat",
                payload={"text": "hello"},
            )
        assert sink.offers == [("t1", "1008")]  # one offer at a time
        router.task_accepted("t1", "1008")
        assert sink.offers[-1] == ("t2", "1008")  # chat capacity 2: a second task
        router.task_rejected("t2", "1008")  # declined: back to the head, offered again
        assert sink.offers[-1] == ("t2", "1008") and len(sink.offers) == 3
        router.task_accepted("t2", "1008")
        router.task_done("t1", "1008")
        assert sink.offers[-1] == ("t3", "1008")
        router.task_cancelled("t3")
        with pytest.raises(InvalidEvent):
            router.task_done("t3", "1008")
        with pytest.raises(InvalidEvent, match="voice"):
            router.submit_task(
                "v", queue="general", requirement="cards", priority=0, channel="voice"
            )
    assert [e.verb for e in seen if e.call_id == "t2"] == [
        "ENTERQUEUE",
        "RINGING",
        "RINGNOANSWER",
        "RINGING",
        "CONNECT",
    ]
    assert [e.verb for e in seen if e.call_id == "t3"][-1] == "ABANDON"
    assert not [c for c in pbx.commands if c[0] == "redirect"]  # no PBX command for a chat
