"""Router: PBX events in, matcher decisions, PBX commands out (fake PBX, fake publisher)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from acd.errors import UnknownAgent
from acd.roster import Roster, RosterError
from acd.router import CONNECT_CONTEXT, OPERATORS, Router, acd_priority

ROSTER = """
queues:
  vip: {wrapup: 0.05, steps: [{after: 0.2, accept: private_banking}]}
  general: {wrapup: 0}
agents:
  "1001": {skills: {private_banking: 8, mandarin: 9}}
  "1002": {skills: {mandarin: 8, cards: 5}}
  "1005": {skills: {cantonese: 9}, login: manual}
"""


class FakePbx:
    def __init__(self, fail: bool = False) -> None:
        self.commands: list[tuple[str, ...]] = []
        self.fail = fail

    async def redirect(self, channel: str, context: str, exten: str, priority: int = 1) -> None:
        self.commands.append(("redirect", channel, context, exten))
        await asyncio.sleep(0)
        if self.fail:
            raise ConnectionError("AMI away")

    async def set_variable(self, channel: str, name: str, value: str) -> None:
        self.commands.append(("setvar", channel, name, value))

    async def hangup(self, channel: str, cause: int = 16) -> None:
        self.commands.append(("hangup", channel))


class FakePublisher:
    def __init__(self, log: list[tuple[str, ...]] | None = None) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.log = log

    def publish(self, topic: str, payload: Mapping[str, Any], *, retain: bool = False) -> None:
        self.events.append((topic, dict(payload)))
        if self.log is not None:
            self.log.append(("publish", topic))

    def topics(self) -> list[str]:
        return [t for t, _ in self.events]


def make(**kw: Any) -> tuple[Router, FakePbx, FakePublisher]:
    pbx = FakePbx(**kw)
    pub = FakePublisher(pbx.commands)
    return Router(Roster.parse(ROSTER), pbx, pub, ring_timeout=0.2, guard_margin=0.1), pbx, pub


def register(
    router: Router,
    call: str,
    queue: str = "vip",
    skills: str = "mandarin and private_banking",
    priority: int = 10,
) -> None:
    router.register(
        call,
        queue=queue,
        requirement=skills,
        priority=priority,
        language="cmn",
        screen_pop={"customer": "C1", "card": "****1234"},
    )


async def test_registered_agent_with_the_skill_gets_the_call_screen_pop_first() -> None:
    router, pbx, pub = make()
    async with router:
        router.contact_changed("1002", True)
        router.contact_changed("1001", True)
        register(router, "c1")
        router.call_waiting("c1", "PJSIP/trunk-0001")
        await router.drain()
        # the pop is published before the redirect that makes the phone ring
        assert [c for c in pbx.commands if not c[1].endswith("/status")] == [
            ("publish", "acd/call/c1/queued"),
            ("publish", "agent/1001/screenpop"),
            ("redirect", "PJSIP/trunk-0001", CONNECT_CONTEXT, "1001"),
        ]
        pop = dict(pub.events)["agent/1001/screenpop"]
        assert pop["data"] == {"customer": "C1", "card": "****1234"}
        assert pop["priority"] == 0 and pop["queue"] == "vip"
        router.answered("c1", "1001")
        assert router.m.agent_state("1001") == "on-call"
        router.dial_result("c1", "1001", "ANSWER")
        assert router.m.agent_state("1001") == "wrap-up"
        await asyncio.sleep(0.1)
        assert router.m.agent_state("1001") == "ready"
        assert "c1" not in router.calls
        assert len(router.latency.issued) == 1 and len(router.latency.acked) == 1


async def test_unregistered_or_manual_agents_get_nothing_and_call_waits() -> None:
    router, pbx, _ = make()
    async with router:
        router.contact_changed("1005", True)  # manual login: registered is not enough
        register(router, "c1", queue="cantonese", skills="cantonese")
        router.call_waiting("c1", "PJSIP/t-1")
        assert router.m.call_state("c1") == "waiting"
        router.login("1005")
        await router.drain()
        assert ("redirect", "PJSIP/t-1", CONNECT_CONTEXT, "1005") in pbx.commands


async def test_ring_no_answer_requeues_to_the_next_agent_and_pauses_after_misses() -> None:
    router, pbx, pub = make()
    async with router:
        router.contact_changed("1001", True)
        register(router, "c1")
        router.call_waiting("c1", "PJSIP/t-1")
        router.dial_result("c1", "1001", "NOANSWER")
        # only 1001 can take it: offered again (miss 1 of 2), then a second miss pauses
        assert router.calls["c1"].state == "ringing"
        router.dial_result("c1", "1001", "NOANSWER")
        assert router.m.agent_state("1001") == "paused"
        assert router.m.pause_reason("1001") == "no-answer"
        assert router.m.call_state("c1") == "waiting"
        # the relaxation step lets nobody else in (1002 has no private_banking)
        await asyncio.sleep(0.25)
        assert router.m.call_state("c1") == "waiting"
        router.resume("1001")
        await router.drain()
        offers = [c for c in pbx.commands if c[0] == "redirect"]
        assert len(offers) == 3
        assert "agent/1001/state" in pub.topics()


async def test_caller_hangs_up_while_ringing_leaves_agent_ready_and_unrung() -> None:
    router, pbx, _ = make()
    async with router:
        router.contact_changed("1001", True)
        register(router, "c1")
        router.call_waiting("c1", "PJSIP/t-1")
        await router.drain()
        router.channel_gone("PJSIP/t-1")
        assert router.m.agent_state("1001") == "ready"
        assert "c1" not in router.calls
        # the late dial result of the cancelled ring changes nothing
        router.dial_result("c1", "1001", "CANCEL")
        register(router, "c2")
        router.call_waiting("c2", "PJSIP/t-2")
        await router.drain()
        assert [c[1] for c in pbx.commands if c[0] == "redirect"] == ["PJSIP/t-1", "PJSIP/t-2"]


async def test_lost_redirect_is_requeued_by_the_guard_timer() -> None:
    router, pbx, _ = make(fail=True)
    async with router:
        router.contact_changed("1001", True)
        router.contact_changed("1002", True)
        register(router, "c1", queue="general", skills="mandarin")
        router.call_waiting("c1", "PJSIP/t-1")
        await router.drain()
        first = router.calls["c1"].agent
        await asyncio.sleep(0.35)
        assert router.calls["c1"].agent not in ("", first)
        assert router.errors >= 1


async def test_unregistered_phone_logs_out_after_its_call() -> None:
    router, _, _ = make()
    async with router:
        router.contact_changed("1002", True)
        register(router, "c1", queue="general", skills="mandarin")
        router.call_waiting("c1", "PJSIP/t-1")
        router.answered("c1", "1002")
        router.contact_changed("1002", False)
        assert router.m.agent_state("1002") == "on-call"
        router.channel_gone("PJSIP/t-1")
        assert router.m.agent_state("1002") == "logged-out"


async def test_unknown_waiting_call_goes_to_operators_and_bad_requirement_fails_early() -> None:
    router, pbx, _ = make()
    async with router:
        router.call_waiting("nobody", "PJSIP/t-9")
        await router.drain()
        assert pbx.commands == [("redirect", "PJSIP/t-9", OPERATORS, "s")]
        with pytest.raises(Exception, match="requirement"):
            register(router, "c1", skills="mandarin and and")
        with pytest.raises(UnknownAgent):
            router.login("4242")


async def test_max_wait_overflows_to_operators() -> None:
    roster = Roster.parse("queues: {general: {max_wait: 0.05}}\nagents: {}")
    pbx = FakePbx()
    router = Router(roster, pbx, FakePublisher())
    async with router:
        register(router, "c1", queue="general", skills="mandarin")
        router.call_waiting("c1", "PJSIP/t-1")
        await asyncio.sleep(0.1)
        await router.drain()
        assert pbx.commands == [("redirect", "PJSIP/t-1", OPERATORS, "s")]
        assert "c1" not in router.calls


async def test_roster_reload_adds_changes_and_removes_agents() -> None:
    router, _, _ = make()
    async with router:
        router.contact_changed("1001", True)
        router.contact_changed("1002", True)
        router.load_roster(
            Roster.parse('agents: {"1001": {skills: {cantonese: 3}}, "1003": {skills: {risk: 5}}}')
        )
        assert router.m.agent_state("1002") == "logged-out"
        register(router, "c1", queue="cantonese", skills="cantonese")
        router.call_waiting("c1", "PJSIP/t-1")
        assert router.calls["c1"].agent == "1001"
        router.contact_changed("1003", True)
        assert router.m.agent_state("1003") == "ready"


def test_priority_mapping_and_roster_errors_name_the_key() -> None:
    assert [acd_priority(p) for p in (10, 8, 5, 3, 0, 99)] == [0, 1, 4, 6, 9, 0]
    with pytest.raises(RosterError, match=r"agents\.1001: .*level"):
        Roster.parse('agents: {"1001": {skills: {cards: 11}}}')
    with pytest.raises(RosterError, match=r"queues\.vip\.strategy"):
        Roster.parse("queues: {vip: {strategy: fastest}}")
    with pytest.raises(RosterError, match=r"queues\.vip: unknown key"):
        Roster.parse("queues: {vip: {wrap: 3}}")
    with pytest.raises(RosterError, match=r"steps\[0\]\.accept"):
        Roster.parse("queues: {vip: {steps: [{after: 3, accept: 'a and'}]}}")
    with pytest.raises(RosterError, match=r"1:"):
        Roster.parse("agents: [")
    with pytest.raises(RosterError, match="also agent"):
        Roster.parse('agents: {"1001": {endpoint: PJSIP/x}, "1002": {endpoint: PJSIP/x}}')


async def test_calls_that_never_reach_the_wait_context_are_forgotten() -> None:
    router, _, _ = make()
    async with router:
        router.unclaimed_after = 0.05
        register(router, "c1")
        await asyncio.sleep(0.1)
        register(router, "c2")
        assert "c1" not in router.calls and "c2" in router.calls


async def test_ring_waits_for_the_pop_ack_and_never_rings_after_a_hangup() -> None:
    pbx = FakePbx()
    release = asyncio.Event()
    sent: list[str] = []

    async def pop_sender(topic: str, payload: Mapping[str, Any]) -> None:
        await release.wait()
        sent.append(topic)
        pbx.commands.append(("pop-acked", topic))

    router = Router(Roster.parse(ROSTER), pbx, FakePublisher(), pop_sender=pop_sender)
    async with router:
        router.contact_changed("1001", True)
        register(router, "c1")
        router.call_waiting("c1", "PJSIP/t-1")
        await asyncio.sleep(0.01)
        assert not [c for c in pbx.commands if c[0] == "redirect"]  # pop not acked: no ring
        release.set()
        await router.drain()
        assert pbx.commands[-2:] == [
            ("pop-acked", "agent/1001/screenpop"),
            ("redirect", "PJSIP/t-1", CONNECT_CONTEXT, "1001"),
        ]
        # The caller hangs up while the next pop is in flight: the agent is never rung.
        router.dial_result("c1", "1001", "NOANSWER")  # re-offered to 1001 (only agent)
        release.clear()
        await asyncio.sleep(0.01)
        router.channel_gone("PJSIP/t-1")
        release.set()
        await router.drain()
        assert len([c for c in pbx.commands if c[0] == "redirect"]) == 1
        assert router.m.agent_state("1001") == "ready"


async def test_a_pop_that_cannot_be_confirmed_still_rings() -> None:
    pbx = FakePbx()

    async def pop_sender(topic: str, payload: Mapping[str, Any]) -> None:
        raise ConnectionError("broker away")

    pub = FakePublisher()
    router = Router(Roster.parse(ROSTER), pbx, pub, pop_sender=pop_sender)
    async with router:
        router.contact_changed("1001", True)
        register(router, "c1")
        router.call_waiting("c1", "PJSIP/t-1")
        await router.drain()
        assert ("redirect", "PJSIP/t-1", CONNECT_CONTEXT, "1001") in pbx.commands
        assert router.pop_failures == 1 and "agent/1001/screenpop" in pub.topics()
