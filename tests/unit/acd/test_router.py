"""Router: PBX events in, matcher decisions, PBX commands out (fake PBX, fake publisher)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from acd.errors import UnknownAgent
from acd.roster import Roster, RosterError
from acd.router import (
    CONNECT_CONTEXT,
    DEFAULT_HANDLE_TIME,
    OPERATORS,
    VOICEMAIL_CONTEXT,
    Router,
    acd_priority,
)

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


# ---------------------------------------------------------------------- the caller's side

CALLER_ROSTER = """
queues:
  vip: {wrapup: 0, join_empty: false, overflow: voicemail}
  general: {wrapup: 2, leave_when_empty: true, operator: true}
  risk: {wrapup: 0, callback: false, overflow: general}
agents:
  "1001": {skills: {private_banking: 8, mandarin: 9}}
  "1002": {skills: {mandarin: 8, cards: 5}}
  "1003": {skills: {mandarin: 7}}
"""


class FakePlacer:
    def __init__(self) -> None:
        self.placed: list[tuple[str, str, str, str]] = []

    async def place(self, call: Any, agent: str, endpoint: str) -> None:
        self.placed.append((call.call_id, agent, endpoint, call.caller))


def caller_router() -> tuple[Router, FakePbx, FakePublisher, FakePlacer, list[Any]]:
    pbx = FakePbx()
    pub = FakePublisher()
    router = Router(Roster.parse(CALLER_ROSTER), pbx, pub, ring_timeout=0.2, guard_margin=0.1)
    placer = FakePlacer()
    router.callback_placer = placer
    events: list[Any] = []
    router.listeners.append(events.append)
    return router, pbx, pub, placer, events


def verbs(events: list[Any], call: str) -> list[str]:
    return [e.verb for e in events if e.call_id == call]


async def test_join_empty_false_sends_the_caller_to_the_overflow_at_once() -> None:
    router, pbx, _, _, events = caller_router()
    async with router:
        register(router, "c1", queue="vip")
        router.call_waiting("c1", "PJSIP/t-1")
        await router.drain()
        # nobody who could ever take it (even after relaxation) is logged in: voicemail
        assert pbx.commands == [("redirect", "PJSIP/t-1", VOICEMAIL_CONTEXT, "s")]
        assert verbs(events, "c1") == ["ENTERQUEUE", "EXITWITHTIMEOUT"]
        assert events[-1].data["reason"] == "empty" and events[-1].data["target"] == "voicemail"
        assert "c1" not in router.calls and router.m.call_state("c1") is None
        # a paused agent who could take it counts as "not empty" (app_queue's sense)
        router.login("1001")
        router.pause("1001", "lunch")
        register(router, "c2", queue="vip")
        router.call_waiting("c2", "PJSIP/t-2")
        assert router.m.call_state("c2") == "waiting"


async def test_leave_when_empty_overflows_waiting_callers_when_the_last_agent_leaves() -> None:
    router, pbx, _, _, events = caller_router()
    async with router:
        router.login("1003")
        register(router, "c1", queue="general", skills="mandarin")
        router.call_waiting("c1", "PJSIP/t-1")
        router.answered("c1", "1003")  # 1003 busy; c2 waits behind it
        register(router, "c2", queue="general", skills="mandarin")
        router.call_waiting("c2", "PJSIP/t-2")
        assert router.m.call_state("c2") == "waiting"
        router.channel_gone("PJSIP/t-1")  # wrap-up
        router.logout("1003")
        await router.drain()
        assert ("redirect", "PJSIP/t-2", OPERATORS, "s") in pbx.commands
        assert verbs(events, "c2")[-1] == "EXITWITHTIMEOUT"
        assert events[-1].data["reason"] == "empty"
        assert "c2" not in router.calls


async def test_wait_info_position_and_estimate_from_handle_times() -> None:
    router, _, _, _, _ = caller_router()
    t = [1000.0]
    router._clock = lambda: t[0]
    async with router:
        router.login("1002")
        router.login("1003")
        for n in (1, 2):  # both agents busy
            register(router, f"a{n}", queue="general", skills="mandarin")
            router.call_waiting(f"a{n}", f"PJSIP/a-{n}")
            agent = router.calls[f"a{n}"].agent
            router.answered(f"a{n}", agent)
        for n in (1, 2, 3):
            register(router, f"w{n}", queue="general", skills="mandarin")
            router.call_waiting(f"w{n}", f"PJSIP/w-{n}")
        info = router.wait_info("w3")
        assert info is not None and info.position == 3 and info.agents == 2
        # no history yet: the default handle time plus the queue's wrap-up (2 s)
        assert info.handle_time == DEFAULT_HANDLE_TIME + 2
        assert info.estimate == pytest.approx(3 * (DEFAULT_HANDLE_TIME + 2) / 2)
        t[0] += 58.0  # a1 talked 58 s
        router.channel_gone("PJSIP/a-1")
        info = router.wait_info("w3")
        assert info is not None and info.handle_time == 60.0
        assert router.wait_info("a2") is None  # connected, not waiting
        assert router.wait_info("nobody") is None


async def test_operator_key_only_where_the_queue_allows_it() -> None:
    router, _, _, _, events = caller_router()
    async with router:
        router.login("1001")
        router.pause("1001", "x")
        register(router, "r1", queue="risk", skills="mandarin")
        router.call_waiting("r1", "PJSIP/r-1")
        assert router.key_pressed("r1", "0") == ""  # risk: no operator key
        assert router.key_pressed("r1", "7") == ""
        register(router, "g1", queue="general", skills="mandarin")
        router.call_waiting("g1", "PJSIP/g-1")
        assert router.key_pressed("g1", "0") == "operator"
        assert "g1" not in router.calls and router.m.call_state("g1") is None
        assert verbs(events, "g1")[-1] == "EXITWITHTIMEOUT"
        assert events[-1].data == {"waittime": 0.0, "target": "operators", "reason": "key:0"}


async def test_callback_keeps_the_place_and_rings_the_agent_first() -> None:
    router, pbx, pub, placer, events = caller_router()
    async with router:
        router.login("1002")
        register(router, "busy", queue="general", skills="mandarin")
        router.call_waiting("busy", "PJSIP/b-1")
        router.answered("busy", "1002")
        router.register(
            "c1",
            queue="general",
            requirement="mandarin",
            priority=5,
            language="cmn",
            screen_pop={},
            caller="13800138000",
        )
        router.call_waiting("c1", "PJSIP/t-1")
        register(router, "c2", queue="general", skills="mandarin", priority=5)
        router.call_waiting("c2", "PJSIP/t-2")
        # a withheld caller (no number) cannot ask for a callback
        assert router.key_pressed("c2", "1") == ""
        assert router.key_pressed("c1", "1") == "callback"
        router.channel_gone("PJSIP/t-1")  # the caller hangs up after the confirmation
        assert router.m.call_state("c1") == "waiting" and router.calls["c1"].channel == ""
        router.channel_gone("PJSIP/b-1")
        await asyncio.sleep(2.1)  # general's wrap-up
        await router.drain()
        # c1 kept its place ahead of c2: the agent is called first, the caller is not redirected
        assert placer.placed == [("c1", "1002", "PJSIP/1002", "13800138000")], pbx.commands
        assert not [c for c in pbx.commands if c[0] == "redirect" and c[1] == "PJSIP/t-2"]
        assert "agent/1002/screenpop" in pub.topics()
        router.answered("c1", "1002", "/rec/c1.wav")
        router.callback_result("c1", "1002", "ANSWER")
        assert verbs(events, "c1")[-2:] == ["CONNECT", "COMPLETEAGENT"]
        assert dict(pub.events)["acd/call/c1/callback"]["event"] == "CallbackDone"
        connect = [e for e in events if e.call_id == "c1" and e.verb == "CONNECT"][0]
        assert connect.data["recording"] == "/rec/c1.wav" and connect.data["callback"] is True


async def test_unanswered_callback_is_recorded_failed_and_retried_once() -> None:
    router, _, pub, placer, events = caller_router()
    router.callback_retry_after = 0.05
    async with router:
        router.login("1003")
        router.pause("1003", "x")
        router.register(
            "c1",
            queue="general",
            requirement="mandarin",
            priority=5,
            language="cmn",
            screen_pop={},
            caller="13800138000",
        )
        router.call_waiting("c1", "PJSIP/t-1")
        assert router.key_pressed("c1", "1") == "callback"
        router.channel_gone("PJSIP/t-1")
        router.resume("1003")
        await router.drain()
        assert [p[0] for p in placer.placed] == ["c1"]
        router.answered("c1", "1003")
        router.callback_result("c1", "1003", "NOANSWER")
        failed = [p for t, p in pub.events if t == "acd/call/c1/callback" and "status" in p]
        assert failed[0]["event"] == "CallbackFailed" and failed[0]["retry"] is True
        await asyncio.sleep(2.2)  # retry_after, then general's wrap-up of 1003
        await router.drain()
        assert [p[0] for p in placer.placed] == ["c1", "c1"]
        router.answered("c1", "1003")
        router.callback_result("c1", "1003", "BUSY")
        await asyncio.sleep(0.1)
        assert "c1" not in router.calls  # tried twice: given up, not retried again
        failed = [p for t, p in pub.events if t == "acd/call/c1/callback" and "status" in p]
        assert [(f["attempt"], f["retry"], f["status"]) for f in failed] == [
            (1, True, "NOANSWER"),
            (2, False, "BUSY"),
        ]


async def test_rebuild_waiting_reenters_a_caller_once() -> None:
    router, pbx, _, _, events = caller_router()
    async with router:
        router.login("1002")
        args = dict(
            queue="general",
            requirement="mandarin",
            priority=5,
            language="cmn",
            screen_pop={"caller": "*******8000"},
            caller="13800138000",
        )
        assert router.rebuild_waiting("c1", "PJSIP/t-1", **args) is True
        assert router.rebuild_waiting("c1", "PJSIP/t-1", **args) is False
        await router.drain()
        assert ("redirect", "PJSIP/t-1", CONNECT_CONTEXT, "1002") in pbx.commands
        assert verbs(events, "c1")[:1] == ["ENTERQUEUE"]


async def test_voicemail_result_is_recorded() -> None:
    router, _, pub, _, events = caller_router()
    async with router:
        router.voicemail_result("c9", "vip", "SUCCESS", "4008@hotline")
    assert dict(pub.events)["acd/call/c9/voicemail"] == {
        "event": "VoicemailLeft",
        "call_id": "c9",
        "queue": "vip",
        "status": "SUCCESS",
        "mailbox": "4008@hotline",
    }
    assert events == []  # not a queue_events verb (yet)
