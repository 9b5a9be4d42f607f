"""`ivr-engine report` over a real queue log file, and the `ivr-engine stats` table."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
from pathlib import Path

import pytest

from acd.queue_events import QueueEvent
from ivr_engine.acd_stats import ALL, QueueStats, replay_today, report
from ivr_engine.cli import main
from ivr_engine.commands.stats import render
from ivr_engine.queue_log import QueueLog, event_row
from tests.unit.test_acd_stats import STORY, enter

DAY = dt.date(2026, 11, 20)
BASE = dt.datetime.combine(DAY, dt.time(10, 0)).timestamp()  # local 10:00


def shifted(events: list[QueueEvent], base: float) -> list[QueueEvent]:
    return [dataclasses.replace(e, time=base + e.time - 1000) for e in events]


async def write_log(path: Path, events: list[QueueEvent]) -> None:
    async with await QueueLog.open(path) as log:
        await log.write_rows([event_row(e) for e in events])


@pytest.fixture
def logfile(tmp_path: Path) -> Path:
    """A real queue log file (the CLI runs its own event loop: the tests are synchronous)."""
    path = tmp_path / "ivr.sqlite3"
    day_before = shifted([STORY[0]], BASE - 86_400)  # yesterday: not in today's report
    asyncio.run(write_log(path, day_before + shifted(STORY, BASE)))
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_day_report_in_json_has_the_hand_computed_figures(
    logfile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "report", "--path", str(logfile), "--date", "2026-11-20",
                         "--json")
    assert code == 0, err
    body = json.loads(out)
    assert body["since"].startswith("2026-11-20T00:00:00")
    assert body["until"].startswith("2026-11-21T00:00:00")
    assert body["events"] == len(STORY)
    vip, general, total = body["queues"]["vip"], body["queues"]["general"], body["all"]
    assert (vip["offered"], vip["answered"], vip["answered_in_sl"], vip["overflowed"]) == (
        4, 2, 1, 2)
    assert (vip["service_level"], vip["asa"], vip["aht"]) == (0.25, 19.0, 45.0)
    assert (general["offered"], general["abandoned"], general["abandon_rate"]) == (2, 1, 0.5)
    assert (total["offered"], total["answered"], total["abandoned"], total["overflowed"]) == (
        5, 3, 1, 1)
    assert (total["service_level"], total["abandon_rate"], total["asa"]) == (0.2, 0.2, 26.0)
    assert body["agents"] == {
        "1001": {"offered": 1, "answered": 1, "ring_no_answer": 0, "completed": 1,
                 "talk_time": 60.0, "aht": 60.0},
        "1002": {"offered": 1, "answered": 0, "ring_no_answer": 1, "completed": 0,
                 "talk_time": 0.0, "aht": None},
        "1003": {"offered": 1, "answered": 1, "ring_no_answer": 0, "completed": 1,
                 "talk_time": 30.0, "aht": 30.0},
        "1004": {"offered": 0, "answered": 1, "ring_no_answer": 0, "completed": 0,
                 "talk_time": 0.0, "aht": None},
    }


def test_report_and_live_figures_agree() -> None:
    stats = QueueStats(window=100.0, is_acd_queue=lambda q: q == "general",
                       day_of=lambda t: "d")
    for event in STORY:
        stats.on_event(event)
    live = stats.snapshot(1141.0)
    body = report(STORY)
    for queue in ("vip", "general"):
        assert {**body["queues"][queue], "date": "d"} == live[queue]["today"]
    assert {**body["all"], "date": "d"} == live["_all"]["today"]


def test_periods_and_the_text_table(
    logfile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    since = dt.datetime.fromtimestamp(BASE + 30).isoformat()  # c1 c2 c3 entered before
    code, out, _ = run(capsys, "report", "--path", str(logfile), "--since", since, "--json")
    assert code == 0
    body = json.loads(out)
    assert body["all"]["offered"] == 2 and body["all"]["answered"] == 2  # c4 c5; c2, c4
    code, out, _ = run(capsys, "report", "--path", str(logfile), "--date", "2026-11-20")
    assert code == 0
    lines = out.splitlines()
    vip = next(line for line in lines if line.startswith("vip "))
    assert vip.split() == ["vip", "4", "2", "1", "0", "2", "25.0%", "0.0%", "19.0s", "45.0s"]
    assert any(line.split()[:4] == ["1002", "1", "0", "1"] for line in lines)
    code, out, _ = run(capsys, "report", "--path", str(logfile), "--date", "2026-11-19",
                       "--json")
    assert json.loads(out)["all"]["offered"] == 1  # yesterday's one call


def test_bad_options_and_a_missing_log_are_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "report", "--path", str(tmp_path / "none.sqlite3"))
    assert code == 1 and "no queue log at" in err
    code, _, err = run(capsys, "report", "--date", "2026-11-20", "--since", "2026-11-19")
    assert code == 2 and "cannot be combined" in err
    code, _, err = run(capsys, "report", "--since", "2026-11-20", "--until", "2026-11-19")
    assert code == 2 and "after --since" in err
    with pytest.raises(SystemExit) as exc:
        main(["report", "--date", "20/11/2026"])
    assert exc.value.code == 2 and "not a date" in capsys.readouterr().err


def test_the_stats_table_shows_the_figures_and_staleness() -> None:
    stats = QueueStats(window=900.0, day_of=lambda t: "d")
    for event in STORY[:4]:
        stats.on_event(event)
    snap = stats.snapshot(1006.0, agents={"1001": "reserved", "1002": "ready"},
                          serving={"vip": {"1001", "1002"}})
    table = render(snap, 1006.0)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["queue", "wait", "ring", "longest"]
    vip = next(line for line in lines if line.startswith("vip "))
    assert vip.split() == ["vip", "2", "1", "6s", "2", "0", "0", "-", "-", "-", "-",
                           "rdy:1", "res:1"]
    assert lines[-2].startswith("_all ") and "STALE" not in table
    assert "SL = answered within 20 s" in lines[-1]
    assert "STALE: no update for 60s" in render(snap, 1066.0)
    assert "(no queue statistics yet)" in render({}, 1.0)


async def test_after_a_restart_the_days_figures_are_rebuilt_from_the_queue_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ivr.sqlite3"
    waiting = enter(1150, "c7")  # still waiting when the daemon stopped
    await write_log(path, shifted([STORY[0]], BASE - 86_400) + shifted([*STORY, waiting], BASE))
    stats = QueueStats(window=900.0, is_acd_queue=lambda q: q == "general")
    now = BASE + 200
    assert await replay_today(stats, path, now=now) == len(STORY) + 1  # not yesterday's
    snap = stats.snapshot(now)
    assert (snap["vip"]["today"]["offered"], snap["vip"]["today"]["answered"]) == (5, 2)
    assert snap[ALL]["today"]["service_level"] == 0.2  # 1 / (3 + 1 + 1) as before
    assert snap[ALL]["waiting"] == 0 and snap["vip"]["tasks_waiting"] == {}
    assert snap[ALL]["recent"]["offered"] == 6  # the window is rebuilt too (all within 900 s)
    # The router rebuilds c7, which still waits: the same call, not a new one.
    stats.on_event(dataclasses.replace(enter(0, "c7"), time=now + 1))
    again = stats.snapshot(now + 2)["vip"]
    assert again["waiting"] == 1 and again["today"]["offered"] == 5
    # No log (a first start): the figures start from zero, said once.
    caplog.set_level(logging.INFO, logger="ivr_engine.acd_stats")
    assert await replay_today(QueueStats(), tmp_path / "none.sqlite3", now=now) == 0
    assert any("start from zero" in r.getMessage() for r in caplog.records)


def test_a_call_rebuilt_after_a_restart_is_offered_once_in_the_report() -> None:
    events = [enter(1000, "c1"), enter(1100, "c1"),
              QueueEvent(1110, "CONNECT", "c1", "vip", "1001", {"holdtime": 10.0})]
    body = report(events)
    assert body["all"]["offered"] == 1 and body["queues"]["vip"]["answered"] == 1
