"""The queue log: rows as Asterisk's queue_log has them; a locked or full database never
blocks routing, the buffer is bounded, and nothing buffered is lost when SQLite returns."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from acd.queue_events import QueueEvent
from ivr_engine.errors import StoreError
from ivr_engine.queue_log import QueueLog, QueueLogWriter, event_row, store_path


def ev(i: int, verb: str = "ENTERQUEUE", **data: Any) -> QueueEvent:
    if verb == "ENTERQUEUE" and not data:
        data = {"priority": 5, "language": "cmn", "channel": f"PJSIP/trunk-{i}"}
    return QueueEvent(1_764_000_000.0 + i, verb, f"call-{i}", "vip", "", data)


def test_rows_put_values_where_asterisk_puts_them() -> None:
    connect = QueueEvent(1.0, "CONNECT", "c1", "vip", "1001", {"holdtime": 8.4, "ringtime": 2.6})
    assert event_row(connect)[:10] == (1.0, "c1", "vip", "1001", "CONNECT", "8", "", "3", "", "")
    rna = QueueEvent(2.0, "RINGNOANSWER", "c1", "vip", "1002",
                     {"ringtime": 15.004, "status": "NOANSWER"})
    assert event_row(rna)[5:7] == ("15004", "NOANSWER")  # Asterisk: milliseconds
    abandon = QueueEvent(3.0, "ABANDON", "c2", "vip", "", {"waittime": 41.5, "ringing": True})
    assert event_row(abandon)[5:10] == ("", "", "42", "1", "")
    end = QueueEvent(4.0, "COMPLETEAGENT", "c1", "vip", "1001", {"holdtime": 8.4, "calltime": 61})
    assert event_row(end)[5:7] == ("8", "61")
    assert event_row(end)[10] == '{"holdtime":8.4,"calltime":61}'  # exact values as JSON
    pause = QueueEvent(5.0, "PAUSE", "", "", "1002", {"reason": "no-answer"})
    assert event_row(pause)[1:6] == ("", "", "1002", "PAUSE", "no-answer")


async def test_events_are_written_in_order_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "ivr.sqlite3"
    async with QueueLogWriter(lambda: QueueLog.open(path), batch=3) as writer:
        for i in range(10):
            writer(ev(i))
        writer(QueueEvent(1_764_000_011.0, "CONNECT", "call-3", "vip", "1001",
                          {"holdtime": 11.0, "ringtime": 1.5}))
        assert await writer.flush() == 0
    assert writer.stats.written == 11 and writer.stats.dropped == 0
    async with await QueueLog.open(path, readonly=True) as log:
        events = await log.events(1_764_000_000.0, 1_764_000_100.0)
        rows = await log.rows()
        part = await log.events(1_764_000_002.0, 1_764_000_004.0)
    assert [e.call_id for e in events[:10]] == [f"call-{i}" for i in range(10)]
    assert events[10].verb == "CONNECT" and events[10].data == {"holdtime": 11.0, "ringtime": 1.5}
    assert rows[10]["data1"] == "11" and rows[10]["agent"] == "1001"
    assert [e.call_id for e in part] == ["call-2", "call-3"]  # [since, until)


async def test_a_locked_database_buffers_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ivr.sqlite3"
    async with await QueueLog.open(path):  # the schema first
        pass
    store = await QueueLog.open(path, busy_timeout=0.05)
    holder = sqlite3.connect(path, timeout=0.1)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        caplog.set_level(logging.WARNING, logger="ivr_engine.queue_log")

        async def opener() -> QueueLog:
            return store

        writer = QueueLogWriter(opener, retry_interval=0.05, flush_timeout=1.0)
        writer.start()
        started = asyncio.get_running_loop().time()
        for i in range(50):
            writer(ev(i))  # the listener call returns at once
        assert asyncio.get_running_loop().time() - started < 0.05
        await asyncio.sleep(0.5)
        assert writer.stats.in_outage and writer.stats.written == 0 and writer.pending == 50
        assert writer.stats.write_failures >= 2  # retried on its timer
        loud = [r for r in caplog.records if "QUEUE LOG CANNOT BE WRITTEN" in r.getMessage()]
        assert len(loud) == 1  # said once, not once per try
    finally:
        holder.rollback()
        holder.close()
    await asyncio.sleep(0.5)
    assert writer.pending == 0 and writer.stats.written == 50 and not writer.stats.in_outage
    assert any("writing again" in r.getMessage() for r in caplog.records)
    await writer.stop()
    async with await QueueLog.open(path, readonly=True) as log:
        assert [e.call_id for e in await log.events(0, 2e9)] == [f"call-{i}" for i in range(50)]


async def test_a_full_database_keeps_the_newest_within_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "ivr.sqlite3"
    store = await QueueLog.open(path)
    db: Any = store._db
    async with db.execute("PRAGMA page_count") as cur:
        row = await cur.fetchone()
    await db.execute(f"PRAGMA max_page_count = {row[0]}")  # SQLITE_FULL from now on

    async def opener() -> QueueLog:
        return store

    writer = QueueLogWriter(opener, max_pending=20, batch=500, retry_interval=0.05)
    writer.start()
    big = "x" * 2000  # a page per row at least: the file must grow
    for i in range(30):
        writer(ev(i, "PAUSE", reason=big))
    await asyncio.sleep(0.3)
    assert writer.stats.in_outage and writer.stats.written == 0
    assert writer.pending == 20 and writer.stats.dropped == 10  # the oldest 10 went
    await db.execute("PRAGMA max_page_count = 1073741823")  # space again
    await asyncio.sleep(0.3)
    assert writer.pending == 0 and writer.stats.written == 20
    await writer.stop()
    async with await QueueLog.open(path, readonly=True) as log:
        got = [e.call_id for e in await log.events(0, 2e9)]
    assert got == [f"call-{i}" for i in range(10, 30)]


async def test_a_store_that_cannot_be_opened_is_retried_and_shutdown_reports_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the directory should be")
    path = blocker / "ivr.sqlite3"
    writer = QueueLogWriter(lambda: QueueLog.open(path), retry_interval=0.05, flush_timeout=0.2)
    writer.start()
    writer(ev(1))
    await asyncio.sleep(0.2)
    assert writer.stats.in_outage and writer.stats.write_failures >= 2
    caplog.set_level(logging.ERROR, logger="ivr_engine.queue_log")
    assert await writer.stop() == 1
    assert any("could not be written before shutdown" in r.getMessage() for r in caplog.records)


async def test_bad_periods_and_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="retry_interval"):
        QueueLogWriter(lambda: QueueLog.open(tmp_path / "x"), max_pending=0)
    async with await QueueLog.open(tmp_path / "q.sqlite3") as log:
        with pytest.raises(StoreError, match="before its start"):
            await log.events(10, 5)
    other = tmp_path / "other.sqlite3"  # a store file the ACD never wrote to
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE schema_version (component TEXT, version INTEGER)")
    db.close()
    with pytest.raises(StoreError, match="holds no queue_log data"):
        await QueueLog.open(other, readonly=True)


def test_the_store_path_comes_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ivr_engine.config import Settings, StoreSettings

    service: Any = SimpleNamespace(settings=Settings(store=StoreSettings(path="var/x.db")),
                                   base=tmp_path)
    assert store_path(service) == tmp_path / "var/x.db"
    monkeypatch.setenv("IVR_ENGINE_STORE_PATH", str(tmp_path / "env.sqlite3"))
    monkeypatch.delenv("IVR_ENGINE_CONFIG", raising=False)
    assert store_path(SimpleNamespace()) == tmp_path / "env.sqlite3"  # type: ignore[arg-type]
