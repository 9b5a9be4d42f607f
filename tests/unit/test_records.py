"""Call records: masking down to the raw file bytes; disk full and locked DB never stop calls."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path

import pytest

from ivr_engine.cli import main
from ivr_engine.errors import StoreError
from ivr_engine.records import CallRecord, CallRecorder, CallRecordStore, Outcome

PIN = "739164"
CARD = "6222021234567890123"


def make_record(call_id: str, number: str = "13800138000") -> CallRecord:
    rec = CallRecord.start(call_id, number, customer_id=2, tier="local", region="Beijing",
                           language="cmn", flow_name="hotline", flow_version="3f2a9c1")
    rec.step("welcome", "play")
    rec.step("menu", "menu", {"digits": "2"})
    rec.step("ask_pin", "input", {"digits": PIN}, sensitive=True, result="ok")
    rec.step("ask_card", "input", {"card_number": CARD})
    rec.announce("bill/amount")
    rec.event("note", text=f"caller read out {CARD} twice", pin=PIN)
    rec.queued("cards", ["lang:cmn", "cards"], 5)
    rec.end(Outcome.QUEUED)
    return rec


def raw_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.is_file())


async def test_sensitive_inputs_never_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    async with await CallRecordStore.open(path) as store:
        async with CallRecorder(store) as recorder:
            for i in range(3):
                recorder.submit(make_record(f"1732000000.{i}"))
        assert recorder.pending == 0 and recorder.stats.written >= 3
        got = await store.get("1732000000.1")
    assert got is not None
    assert got["caller"] == "138****8000"
    pin_step = got["steps"][2]
    assert pin_step["inputs"] == {"digits": "******"} and pin_step["sensitive"]
    assert got["steps"][3]["inputs"] == {"card_number": "****0123"}
    assert got["queue"] == {"name": "cards", "skills": ["lang:cmn", "cards"], "priority": 5}
    assert got["outcome"] == "queued" and got["flow"]["version"] == "3f2a9c1"
    assert got["events"][0]["pin"] == "******" and CARD not in json.dumps(got)
    raw = raw_bytes(tmp_path)
    assert raw, "the database files are empty"
    assert PIN.encode() not in raw
    assert CARD.encode() not in raw and CARD[:12].encode() not in raw
    assert b"13800138000" not in raw and b"8613800138000" not in raw


async def test_disk_full_keeps_calls_going_and_flushes_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store.sqlite3"
    store = await CallRecordStore.open(path)
    try:
        async with CallRecorder(store, retry_interval=0.05) as recorder:
            recorder.submit(make_record("ok.1"))
            assert await recorder.flush() == 0
            pages = (await store._db.execute_fetchall("PRAGMA page_count"))[0][0]
            # Simulate a full disk: the file may not grow by a single page.
            await store._db.execute(f"PRAGMA max_page_count = {pages}")
            caplog.set_level(logging.ERROR, logger="ivr_engine.records")
            for i in range(200):
                rec = make_record(f"full.{i}")
                rec.event("padding", text="x" * 2000)
                recorder.submit(rec)  # must not raise, must not block
            await asyncio.sleep(0.3)  # several retries happen
            assert recorder.pending == 200
            assert recorder.stats.write_failures >= 2
            assert recorder.stats.outages == 1 and recorder.stats.in_outage
            loud = [r for r in caplog.records if "CANNOT BE WRITTEN" in r.getMessage()]
            assert len(loud) == 1, "one loud line per outage, not one per retry"
            await store._db.execute("PRAGMA max_page_count = 1073741823")  # space freed
            for _ in range(100):
                if recorder.pending == 0:
                    break
                await asyncio.sleep(0.05)
            assert recorder.pending == 0 and not recorder.stats.in_outage
        assert len(await store.list(limit=500)) == 201
    finally:
        await store.close()


async def test_locked_database(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = await CallRecordStore.open(path, busy_timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        async with CallRecorder(store, retry_interval=0.05, flush_timeout=2) as recorder:
            other.execute("BEGIN EXCLUSIVE")
            recorder.submit(make_record("locked.1"))
            recorder.submit(make_record("locked.2"))
            await asyncio.sleep(0.2)
            assert recorder.pending == 2 and recorder.stats.write_failures >= 1
            other.execute("COMMIT")
            # flush() on shutdown writes what waited.
            assert await recorder.flush() == 0
        assert {r["id"] for r in await store.list()} == {"locked.1", "locked.2"}
    finally:
        other.close()
        await store.close()


async def test_buffer_is_bounded_and_newest_version_wins(tmp_path: Path) -> None:
    store = await CallRecordStore.open(tmp_path / "s.sqlite3", busy_timeout=0.05)
    other = sqlite3.connect(tmp_path / "s.sqlite3", isolation_level=None)
    try:
        recorder = CallRecorder(store, max_pending=5, retry_interval=0.05, flush_timeout=0.5)
        async with recorder:
            other.execute("BEGIN EXCLUSIVE")
            rec = make_record("same")
            recorder.submit(rec)
            rec.event("more")
            recorder.submit(rec)  # replaces the queued version
            for i in range(8):
                recorder.submit(make_record(f"r{i}"))
            assert recorder.pending == 5 and recorder.stats.dropped == 4
            other.execute("COMMIT")
        assert recorder.pending == 0
        ids = {r["id"] for r in await store.list()}
        assert ids == {"r3", "r4", "r5", "r6", "r7"}
    finally:
        other.close()
        await store.close()


async def test_stop_reports_unwritten_when_disk_stays_full(tmp_path: Path) -> None:
    store = await CallRecordStore.open(tmp_path / "s.sqlite3")
    try:
        pages = (await store._db.execute_fetchall("PRAGMA page_count"))[0][0]
        await store._db.execute(f"PRAGMA max_page_count = {pages}")
        recorder = CallRecorder(store, retry_interval=0.05, flush_timeout=0.5)
        async with recorder:
            rec = make_record("never")
            rec.event("padding", text="y" * 8000)
            recorder.submit(rec)
        assert recorder.pending == 1
    finally:
        await store.close()


async def test_newest_version_written_after_racing_write(tmp_path: Path) -> None:
    async with await CallRecordStore.open(tmp_path / "s.sqlite3") as store:
        async with CallRecorder(store) as recorder:
            rec = CallRecord.start("race", "13800138000")
            recorder.submit(rec)
            await asyncio.sleep(0)
            rec.end(Outcome.HANGUP_BY_CALLER)
            recorder.submit(rec)
        got = await store.get("race")
        assert got is not None and got["outcome"] == "hangup-by-caller"


def test_bad_input() -> None:
    with pytest.raises(StoreError):
        CallRecord.start("", "13800138000")
    with pytest.raises(ValueError):
        CallRecord.start("x", None).end("exploded")
    assert CallRecord.start("x", None).caller == "anonymous"


def test_calls_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "store.sqlite3"

    async def fill() -> None:
        async with await CallRecordStore.open(db) as store:
            await store.write_many([make_record("1732000000.7"), make_record("1732000000.8")])

    asyncio.run(fill())
    assert main(["calls", "list", "--path", str(db), "--json", "--limit", "1"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 1
    assert main(["calls", "show", "--path", str(db), "1732000000.7"]) == 0
    out = capsys.readouterr().out
    assert "138****8000" in out and "digits=******" in out and PIN not in out
    assert main(["calls", "show", "--path", str(db), "nope"]) == 1


async def test_writer_survives_an_unexpected_error(tmp_path: Path) -> None:
    store = await CallRecordStore.open(tmp_path / "s.sqlite3")
    await store.close()  # aiosqlite now raises ValueError, not a StoreError
    recorder = CallRecorder(store, retry_interval=0.05, flush_timeout=0.2)
    async with recorder:
        recorder.submit(make_record("after-close"))
        await asyncio.sleep(0.2)
        assert recorder.stats.write_failures >= 2  # still retrying: the task did not die
        assert recorder.pending == 1
    assert recorder.pending == 1
