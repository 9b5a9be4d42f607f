"""Live ACD statistics: event sequences in, every figure checked against hand-computed values."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from acd.queue_events import QueueEvent
from acd.roster import Roster
from acd.router import Router
from ivr_engine.acd_stats import (
    ALL,
    QueueStats,
    ServingAgents,
    Tally,
    acd_stats_extension,
    deltas,
    topic_name,
)
from ivr_engine.config import Settings, StoreSettings


def ev(t: float, verb: str, call: str = "", queue: str = "vip", agent: str = "", **data: Any):
    return QueueEvent(t, verb, call, queue if call else "", agent, data)


def enter(t: float, call: str, queue: str = "vip", channel: str | None = None) -> QueueEvent:
    return ev(t, "ENTERQUEUE", call, queue, priority=5, language="cmn",
              channel=channel or f"PJSIP/trunk-{call}")


def day_of(t: float) -> str:
    return "2026-11-25" if t < 5000 else "2026-11-26"


#: The story every test below refers to (queue vip unless said; general is an ACD queue,
#: operators is not). Times in seconds.
STORY = [
    enter(1000, "c1"),
    enter(1002, "c2"),
    enter(1003, "c3", "general"),
    ev(1005, "RINGING", "c1", agent="1001", waited=5.0),
    # --- snapshot at 1006
    ev(1008, "CONNECT", "c1", agent="1001", holdtime=8.0, ringtime=3.0),
    ev(1010, "RINGING", "c2", agent="1002", waited=8.0),
    ev(1025, "RINGNOANSWER", "c2", agent="1002", ringtime=15.0, status="NOANSWER"),
    ev(1030, "RINGING", "c2", agent="1003", waited=28.0),
    ev(1032, "CONNECT", "c2", agent="1003", holdtime=30.0, ringtime=2.0),
    ev(1040, "ABANDON", "c3", "general", waittime=37.0, ringing=False),
    ev(1062, "COMPLETECALLER", "c2", agent="1003", holdtime=30.0, calltime=30.0),
    ev(1068, "COMPLETEAGENT", "c1", agent="1001", holdtime=8.0, calltime=60.0),
    enter(1070, "c4"),
    ev(1100, "EXITWITHTIMEOUT", "c4", waittime=30.0, target="general", reason="max_wait"),
    # --- snapshot at 1105
    ev(1110, "CONNECT", "c4", "general", agent="1004", holdtime=40.0, ringtime=1.0),
    enter(1120, "c5"),
    ev(1130, "EXITWITHTIMEOUT", "c5", waittime=10.0, target="operators", reason="max_wait"),
    enter(1140, "t1", channel="chat"),
    ev(1140.5, "AGENTLOGIN", agent="1009", paused=None),
]


def feed(stats: QueueStats, until: float) -> None:
    for event in STORY:
        if event.time <= until:
            stats.on_event(event)


def make() -> QueueStats:
    return QueueStats(window=100.0, is_acd_queue=lambda q: q == "general", day_of=day_of)


def test_waiting_ringing_and_longest_wait_while_calls_wait() -> None:
    stats = make()
    feed(stats, 1005)
    snap = stats.snapshot(1006.0)
    assert set(snap) == {"vip", "general", ALL}
    assert (snap["vip"]["waiting"], snap["vip"]["ringing"], snap["vip"]["longest_wait"]) == (
        2, 1, 6.0)
    assert (snap["general"]["waiting"], snap["general"]["longest_wait"]) == (1, 3.0)
    assert (snap[ALL]["waiting"], snap[ALL]["ringing"], snap[ALL]["longest_wait"]) == (3, 1, 6.0)
    assert snap["vip"]["today"]["offered"] == 2 and snap[ALL]["today"]["offered"] == 3
    assert snap["vip"]["today"]["service_level"] is None  # nothing answered or lost yet


def test_an_overflowed_call_waits_on_in_its_target_queue_with_its_whole_wait() -> None:
    stats = make()
    feed(stats, 1100)
    snap = stats.snapshot(1105.0)
    assert snap["vip"]["waiting"] == 0 and snap["vip"]["longest_wait"] == 0.0
    assert snap["general"]["waiting"] == 1
    assert snap["general"]["longest_wait"] == 35.0  # entered the ACD at 1070
    assert snap[ALL]["waiting"] == 1 and snap[ALL]["longest_wait"] == 35.0


def test_the_days_figures() -> None:
    stats = make()
    feed(stats, 2000)
    snap = stats.snapshot(1141.0)
    vip, general, total = snap["vip"]["today"], snap["general"]["today"], snap[ALL]["today"]
    assert vip == {
        "date": "2026-11-25",
        "offered": 4,  # c1 c2 c4 c5
        "answered": 2,  # c1 c2
        "answered_in_sl": 1,  # c1 (8 s); c2 waited 30 s
        "abandoned": 0,
        "overflowed": 2,  # c4 (to general), c5 (to operators)
        "completed": 2,
        "service_level": 0.25,  # 1 / (2 + 0 + 2)
        "abandon_rate": 0.0,
        "asa": 19.0,  # (8 + 30) / 2
        "aht": 45.0,  # (30 + 60) / 2
        "talk_time": 90.0,
    }
    assert general == {
        "date": "2026-11-25",
        "offered": 2,  # c3, and c4 by overflow
        "answered": 1,
        "answered_in_sl": 0,  # c4 answered at 40 s
        "abandoned": 1,
        "overflowed": 0,
        "completed": 0,
        "service_level": 0.0,
        "abandon_rate": 0.5,
        "asa": 40.0,
        "aht": None,
        "talk_time": 0.0,
    }
    assert total == {
        "date": "2026-11-25",
        "offered": 5,  # c1..c5: c4's move to general is not a new call
        "answered": 3,
        "answered_in_sl": 1,
        "abandoned": 1,
        "overflowed": 1,  # only c5 left the ACD
        "completed": 2,
        "service_level": 0.2,  # 1 / (3 + 1 + 1)
        "abandon_rate": 0.2,
        "asa": 26.0,  # (8 + 30 + 40) / 3
        "aht": 45.0,
        "talk_time": 90.0,
    }
    assert snap[ALL]["waiting"] == 0 and snap["general"]["waiting"] == 0
    # The chat task waits, apart from the voice figures.
    assert snap["vip"]["tasks_waiting"] == {"chat": 1} and snap[ALL]["tasks_waiting"] == {
        "chat": 1}
    assert snap["general"]["tasks_waiting"] == {}


def test_the_rolling_window_counts_what_happened_in_its_last_seconds() -> None:
    stats = make()
    feed(stats, 2000)
    snap = stats.snapshot(1141.0)  # window (1041, 1141]: c3's abandon (1040) is out
    vip, general, total = snap["vip"]["recent"], snap["general"]["recent"], snap[ALL]["recent"]
    assert (vip["window"], vip["offered"], vip["answered"], vip["overflowed"]) == (100.0, 2, 0, 2)
    assert (vip["completed"], vip["aht"], vip["asa"], vip["service_level"]) == (2, 45.0, None, 0.0)
    assert (general["offered"], general["answered"], general["asa"]) == (1, 1, 40.0)
    assert (general["abandoned"], general["abandon_rate"]) == (0, 0.0)
    assert (total["offered"], total["answered"], total["overflowed"], total["completed"]) == (
        2, 1, 1, 2)
    assert (total["service_level"], total["asa"], total["aht"]) == (0.0, 40.0, 45.0)
    # Long after: the window is empty, and exactly zero (no float left-overs).
    later = stats.snapshot(1300.0)[ALL]["recent"]
    assert later == {"window": 100.0, **Tally().to_json()}
    assert later["talk_time"] == 0.0 and later["asa"] is None


def test_a_new_day_starts_from_zero_and_a_late_snapshot_rolls_over_too() -> None:
    stats = make()
    feed(stats, 2000)
    rolled = stats.snapshot(6000.0)
    assert rolled[ALL]["today"]["date"] == "2026-11-26" and rolled[ALL]["today"]["offered"] == 0
    stats.on_event(enter(6001, "c6"))
    snap = stats.snapshot(6002.0)
    assert snap["vip"]["today"]["offered"] == 1 and snap[ALL]["today"]["offered"] == 1
    assert snap["vip"]["waiting"] == 1 and snap["vip"]["longest_wait"] == 1.0


def test_agents_by_state_overall_and_per_queue() -> None:
    stats = make()
    feed(stats, 1010)
    agents = {"1001": "on-call", "1002": "reserved", "1003": "ready", "1004": "wrap-up",
              "1005": "paused", "1006": "logged-out"}
    snap = stats.snapshot(1011.0, queues=["risk"], agents=agents,
                          serving={"vip": {"1001", "1002", "1003"}})
    assert snap[ALL]["agents"] == {"ready": 1, "reserved": 1, "on-call": 1, "wrap-up": 1,
                                   "paused": 1, "logged-out": 1}
    assert snap["vip"]["agents"] == {"ready": 1, "reserved": 1, "on-call": 1, "wrap-up": 0,
                                     "paused": 0, "logged-out": 0}
    assert snap["general"]["agents"] is None  # no requirement seen for it
    assert snap["risk"]["waiting"] == 0 and snap["risk"]["today"]["offered"] == 0


def test_an_explicit_requeued_flag_wins_and_unknown_calls_still_count() -> None:
    stats = QueueStats(day_of=day_of)  # knows no ACD queues
    stats.on_event(enter(1000, "c1"))
    stats.on_event(ev(1030, "EXITWITHTIMEOUT", "c1", waittime=30.0, target="general",
                      reason="max_wait", requeued=True))
    assert stats.waiting("general") == 1 and stats.waiting("vip") == 0
    # A call from before a restart: its outcome counts, its wait is unknown.
    stats.on_event(ev(1040, "CONNECT", "x9", agent="1001", holdtime=12.0, ringtime=1.0))
    total = stats.snapshot(1041.0)[ALL]["today"]
    assert (total["offered"], total["answered"], total["answered_in_sl"]) == (1, 1, 1)
    assert stats.waiting(ALL) == 1


def test_the_service_level_threshold_is_inclusive() -> None:
    on_time = ev(1, "CONNECT", "a", holdtime=20.0)
    late = ev(1, "CONNECT", "b", holdtime=20.001)
    assert deltas(on_time, requeued=False)[0][1].answered_in_sl == 1
    assert deltas(late, requeued=False)[0][1].answered_in_sl == 0


def test_tasks_never_enter_the_voice_figures() -> None:
    stats = make()
    for event in (
        enter(1000, "t1", channel="chat"),
        ev(1001, "RINGING", "t1", agent="1008", waited=1.0),
        ev(1002, "CONNECT", "t1", agent="1008", holdtime=2.0, ringtime=1.0),
        ev(1050, "COMPLETEAGENT", "t1", agent="1008", holdtime=2.0, calltime=48.0),
        enter(1060, "t2", channel="sms"),
        ev(1061, "ABANDON", "t2", waittime=1.0, ringing=False),
    ):
        stats.on_event(event)
    snap = stats.snapshot(1062.0)
    assert snap[ALL]["today"] == {"date": "2026-11-25", **Tally().to_json()}
    assert snap[ALL]["waiting"] == 0 and snap[ALL]["tasks_waiting"] == {}


ROSTER = """
queues:
  vip: {wrapup: 0.05, steps: [{after: 0.2, accept: private_banking}]}
  general: {wrapup: 0}
agents:
  "1001": {skills: {private_banking: 8, mandarin: 9}}
  "1002": {skills: {mandarin: 8, cards: 5}}
  "1003": {skills: {private_banking: 3}}
  "1008": {skills: {mandarin: 8}, channels: {chat: 2}}
"""


def test_serving_agents_follow_requirements_steps_and_reloads() -> None:
    roster = Roster.parse(ROSTER)
    serving = ServingAgents()
    assert serving.serving(roster) == {}
    serving.note("vip", "mandarin and private_banking")
    # 1001 by the requirement, 1003 by the relaxation step; 1002 has no private_banking.
    assert serving.serving(roster) == {"vip": frozenset({"1001", "1003"})}
    serving.note("general", "mandarin")
    assert serving.serving(roster)["general"] == frozenset({"1001", "1002"})  # 1008: no voice
    reloaded = Roster.parse(ROSTER.replace('"1002": {skills: {mandarin: 8', '"1002": {skills: {'
                                           'private_banking: 2, mandarin: 8'))
    assert serving.serving(reloaded)["vip"] == frozenset({"1001", "1002", "1003"})


def test_topic_names_are_one_level() -> None:
    assert topic_name("vip") == "vip" and topic_name("a/b+c#") == "a_b_c_"


class Pbx:
    async def redirect(self, channel: str, context: str, exten: str, priority: int = 1) -> None:
        await asyncio.sleep(0)

    async def set_variable(self, channel: str, name: str, value: str) -> None:
        return None

    async def hangup(self, channel: str, cause: int = 16) -> None:
        return None


class Retained:
    def __init__(self) -> None:
        self.latest: dict[str, dict[str, Any]] = {}
        self.count = 0

    def publish(self, topic: str, payload: Mapping[str, Any], *, retain: bool = False) -> None:
        if retain:
            self.latest[topic] = dict(payload)
            self.count += 1


async def test_the_extension_publishes_retained_figures_every_interval(tmp_path: Path) -> None:
    publisher = Retained()
    router = Router(Roster.parse(ROSTER), Pbx(), publisher, ring_timeout=5)
    settings = Settings(store=StoreSettings(path=str(tmp_path / "none.sqlite3")))
    service: Any = SimpleNamespace(router=router, publisher=publisher, settings=settings)
    async with router, acd_stats_extension(service, interval=0.05):
        router.contact_changed("1002", True)  # ready, but without private_banking
        router.register("c1", queue="vip", requirement="mandarin and private_banking",
                        priority=5, language="cmn", screen_pop={})
        router.call_waiting("c1", "PJSIP/trunk-1")
        await asyncio.sleep(0.3)
        vip = publisher.latest["acd/stats/vip"]
        assert (vip["waiting"], vip["ringing"]) == (1, 0)
        assert 0.1 < vip["longest_wait"] < 1.0
        assert vip["agents"] == {"ready": 0, "reserved": 0, "on-call": 0, "wrap-up": 0,
                                 "paused": 0, "logged-out": 2}  # 1001 and 1003 serve vip
        total = publisher.latest["acd/stats/_all"]
        assert total["agents"]["ready"] == 1 and total["agents"]["logged-out"] == 3
        assert publisher.latest["acd/stats/general"]["waiting"] == 0  # a roster queue
        router.contact_changed("1001", True)  # the skilled agent arrives: rung at once
        await asyncio.sleep(0.2)
        vip = publisher.latest["acd/stats/vip"]
        assert (vip["waiting"], vip["ringing"]) == (1, 1)
        assert vip["agents"]["reserved"] == 1
        router.answered("c1", "1001")
        await asyncio.sleep(0.2)
        vip = publisher.latest["acd/stats/vip"]
        assert vip["waiting"] == 0 and vip["today"]["answered"] == 1
        assert vip["agents"]["on-call"] == 1
        seen = publisher.count
    assert router.listeners == []  # the extension took its listener away
    await asyncio.sleep(0.15)
    assert publisher.count == seen  # and stopped publishing


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        QueueStats(threshold=0)


def test_the_local_day_rolls_over_at_local_midnight() -> None:
    import datetime as dt

    midnight = dt.datetime(2026, 11, 21).timestamp()  # local
    stats = QueueStats()  # the real local_day
    stats.on_event(enter(midnight - 2, "late"))
    stats.on_event(ev(midnight - 1, "ABANDON", "late", waittime=1.0, ringing=False))
    before = stats.snapshot(midnight - 0.5)[ALL]["today"]
    assert (before["date"], before["offered"], before["abandoned"]) == ("2026-11-20", 1, 1)
    stats.on_event(enter(midnight + 1, "early"))
    after = stats.snapshot(midnight + 2)
    assert (after[ALL]["today"]["date"], after[ALL]["today"]["offered"]) == ("2026-11-21", 1)
    assert after[ALL]["today"]["abandoned"] == 0 and after[ALL]["waiting"] == 1
