"""The router's queue events (acd/queue_events.py): what queue_log and live statistics see."""

from __future__ import annotations

import asyncio

import pytest

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
