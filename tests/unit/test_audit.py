"""The audit chain: intact verifies; edited, deleted, reordered or truncated records are named."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from ivr_engine.audit import AuditLog
from ivr_engine.cli import main
from ivr_engine.errors import AuditError, StoreError

ACCOUNT = "6222021234567890123"


async def build(path: Path, n: int = 5, key: bytes | None = None) -> None:
    async with await AuditLog.open(path, key=key) as log:
        for i in range(1, n + 1):
            await log.append(
                "transfer",
                outcome="confirmed" if i % 2 else "cancelled",
                details={"amount_cents": 1000 * i, "target_account": ACCOUNT, "pin": "123456",
                         "memo": f"rent {i} to {ACCOUNT}"},
                call_id=f"1732000000.{i}",
                customer_id=2,
            )


def tamper(path: Path, *sql: str) -> None:
    """What an attacker with the file does: drop the triggers, then edit."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
        for statement in sql:
            conn.execute(statement)
    finally:
        conn.close()


async def verify(path: Path, **kw: object) -> tuple[bool, int | None, str]:
    async with await AuditLog.open(path, key=kw.pop("key", None)) as log:  # type: ignore[arg-type]
        r = await log.verify(**kw)  # type: ignore[arg-type]
    return r.ok, r.first_bad_seq, r.reason


def _raw(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.is_file())


async def test_intact_chain_and_masking(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    await build(path)
    assert await verify(path) == (True, None, "")
    async with await AuditLog.open(path) as log:
        records = await log.records()
        assert [r.seq for r in records] == [1, 2, 3, 4, 5]
        assert records[0].details == {
            "amount_cents": 1000, "target_account": "****0123", "pin": "******",
            "memo": "rent 1 to ****0123",
        }
        assert records[1].prev_hash == records[0].hash
        assert (await log.head()) == (5, records[-1].hash)
        assert [r.seq for r in await log.records(limit=2)] == [4, 5]
    raw = _raw(tmp_path)
    assert ACCOUNT.encode() not in raw and b"123456" not in raw


async def test_triggers_refuse_update_and_delete(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    await build(path, 2)
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE audit_log SET outcome = 'confirmed' WHERE seq = 2")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit_log WHERE seq = 1")
    finally:
        conn.close()


async def test_edited_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    await build(path)
    tamper(path, "UPDATE audit_log SET details = replace(details, '3000', '300000') WHERE seq = 3")
    ok, seq, reason = await verify(path)
    assert (ok, seq) == (False, 3) and "altered" in reason


async def test_edited_outcome_with_rehash_breaks_the_next_link(tmp_path: Path) -> None:
    """An attacker who recomputes the edited record's hash (no HMAC key needed for SHA-256)
    still breaks the next record's prev_hash."""
    from ivr_engine.audit import _digest, canonical

    path = tmp_path / "audit.sqlite3"
    await build(path)
    conn = sqlite3.connect(path)
    row = conn.execute("SELECT * FROM audit_log WHERE seq = 2").fetchone()
    conn.close()
    new_hash = _digest(
        canonical(seq=2, time=row[1], call_id=row[2], customer_id=row[3], operation=row[4],
                  details_json=row[5], outcome="confirmed", alg=row[7], prev_hash=row[8]),
        "sha256", None,
    )
    tamper(path, f"UPDATE audit_log SET outcome = 'confirmed', hash = '{new_hash}' WHERE seq = 2")
    ok, seq, reason = await verify(path)
    assert (ok, seq) == (False, 3) and "prev_hash" in reason


async def test_deleted_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    await build(path)
    tamper(path, "DELETE FROM audit_log WHERE seq = 2")
    ok, seq, reason = await verify(path)
    assert (ok, seq) == (False, 2) and "missing" in reason


async def test_reordered_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    await build(path)
    cols = "time, call_id, customer_id, operation, details, outcome, alg, prev_hash, hash"
    tamper(
        path,
        "CREATE TEMP TABLE t AS SELECT * FROM audit_log WHERE seq IN (2, 3)",
        f"UPDATE audit_log SET ({cols}) = (SELECT {cols} FROM t WHERE t.seq = 3) WHERE seq = 2",
        f"UPDATE audit_log SET ({cols}) = (SELECT {cols} FROM t WHERE t.seq = 2) WHERE seq = 3",
    )
    ok, seq, _ = await verify(path)
    assert (ok, seq) == (False, 2)


async def test_renumbered_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    await build(path)
    tamper(path, "DELETE FROM audit_log WHERE seq = 3",
           "UPDATE audit_log SET seq = seq - 1 WHERE seq > 3")
    ok, seq, _ = await verify(path)
    assert (ok, seq) == (False, 3)


async def test_truncated_tail(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    await build(path)
    async with await AuditLog.open(path) as log:
        _, kept_head = await log.head()
    tamper(path, "DELETE FROM audit_log WHERE seq = 5")
    ok, seq, reason = await verify(path)
    assert (ok, seq) == (False, 5) and "head" in reason
    # Rewriting the head too is caught by the head kept outside the database.
    tamper(path, "UPDATE audit_head SET seq = 4, hash = (SELECT hash FROM audit_log WHERE seq = 4)")
    assert (await verify(path))[0]
    ok, seq, _ = await verify(path, expected_head=kept_head)
    assert (ok, seq) == (False, 4)


async def test_hmac_chain(tmp_path: Path) -> None:
    key = b"k" * 32
    path = tmp_path / "audit.sqlite3"
    await build(path, 3, key=key)
    assert (await verify(path, key=key))[0]
    ok, seq, reason = await verify(path)  # no key: cannot vouch for it
    assert (ok, seq) == (False, 1) and "key" in reason
    ok, seq, _ = await verify(path, key=b"x" * 32)
    assert (ok, seq) == (False, 1)


async def test_bad_appends_and_concurrency(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    async with await AuditLog.open(path) as log:
        with pytest.raises(AuditError):
            await log.append("Transfer Money", outcome="ok")
        with pytest.raises(AuditError):
            await log.append("transfer", outcome="")
        await asyncio.gather(*(log.append("card_block", outcome="done", call_id=str(i))
                               for i in range(20)))
        assert (await log.verify()).records == 20
    with pytest.raises(StoreError):
        await AuditLog.open(path, key=b"short")


async def test_audit_on_a_full_disk_raises(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    async with await AuditLog.open(path) as log:
        pages = (await log._db.execute_fetchall("PRAGMA page_count"))[0][0]
        await log._db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StoreError):
            for i in range(200):
                await log.append("transfer", outcome="confirmed", details={"memo": "z" * 3000,
                                                                           "n": i})
        await log._db.execute("PRAGMA max_page_count = 1073741823")
        assert (await log.verify()).ok  # a failed append leaves the chain intact


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.sqlite3"
    asyncio.run(build(path))
    assert main(["audit", "verify", "--path", str(path)]) == 0
    assert "intact: 5 records" in capsys.readouterr().out
    assert main(["audit", "list", "--path", str(path), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 5
    tamper(path, "UPDATE audit_log SET outcome = 'confirmed' WHERE seq = 4")
    assert main(["audit", "verify", "--path", str(path)]) == 1
    assert "record 4" in capsys.readouterr().out


async def test_call_id_is_kept_to_link_the_call_record(tmp_path: Path) -> None:
    async with await AuditLog.open(tmp_path / "audit.sqlite3") as log:
        rec = await log.append("card_block", outcome="done", call_id="1732000000.42",
                               details={"card": "6222021234567890123", "uniqueid": "1732000000.42"})
        assert rec.call_id == "1732000000.42"
        assert rec.details == {"card": "****0123", "uniqueid": "1732000000.42"}
        with pytest.raises(AuditError):
            await log.append("card_block", outcome="done", call_id="x\n" * 3)
