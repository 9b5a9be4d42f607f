"""Append-only, hash-chained audit log of risky operations (transfers, wealth purchases, card
blocks ...), in its own SQLite file (`settings.store.audit_path`).

Each record: seq (1, 2, 3 ...), time (UTC, ISO 8601), call id, customer id, operation, details
(masked: amounts kept, account and card numbers cut to the last 4, secrets `******`), outcome,
prev_hash, hash. `hash` = SHA-256 (or HMAC-SHA256 when a key is given) over the canonical JSON
of every other field, prev_hash included, so each record seals the whole history before it.

Defences, in order:
1. SQLite triggers refuse UPDATE and DELETE on the log (a first line against accidents).
2. `verify()` recomputes the chain: an edited record breaks its own hash; a deleted one leaves a
   gap in seq and breaks the next record's prev_hash; a reordered one breaks both; a record
   whose seq was rewritten fails its hash (seq is hashed). It still works when someone has
   dropped the triggers.
3. The `audit_head` row (last seq and hash, written in the same transaction as the record)
   catches a truncated tail, unless the attacker rewrites it too. Against that, keep the head
   elsewhere (`audit head` prints it; publish it to the operator's log/MQTT) and pass it to
   `verify(expected_head=...)`, and configure an HMAC key so that a forger cannot recompute
   hashes at all.

A risky operation whose audit record cannot be written must not go ahead: `append` raises
`StoreError` and the flow sends the caller to a person. That is the opposite choice from call
records (which must never stop a call), on purpose.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from ivr_engine.cif.masking import mask_mapping
from ivr_engine.cif.sqlite import Migration, SqliteStore, open_database, store_errors
from ivr_engine.errors import AuditError, StoreError

log = logging.getLogger(__name__)

COMPONENT = "audit"
GENESIS = "0" * 64

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "hash-chained audit log, append-only triggers, head row",
        (
            """CREATE TABLE audit_log (
                seq INTEGER PRIMARY KEY,
                time TEXT NOT NULL,
                call_id TEXT,
                customer_id TEXT,
                operation TEXT NOT NULL,
                details TEXT NOT NULL,
                outcome TEXT NOT NULL,
                alg TEXT NOT NULL CHECK (alg IN ('sha256', 'hmac-sha256')),
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL
            )""",
            """CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
               BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END""",
            """CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
               BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END""",
            """CREATE TABLE audit_head (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                seq INTEGER NOT NULL,
                hash TEXT NOT NULL
            )""",
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '" + GENESIS + "')",
        ),
    ),
)

_OPERATION_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    time: str
    call_id: str | None
    customer_id: str | None
    operation: str
    details: dict[str, Any]
    outcome: str
    alg: str
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "call_id": self.call_id,
            "customer_id": self.customer_id,
            "operation": self.operation,
            "details": self.details,
            "outcome": self.outcome,
            "alg": self.alg,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    records: int
    first_bad_seq: int | None = None
    reason: str = ""
    head_seq: int = 0
    head_hash: str = GENESIS


def canonical(
    *,
    seq: int,
    time: str,
    call_id: str | None,
    customer_id: str | None,
    operation: str,
    details_json: str,
    outcome: str,
    alg: str,
    prev_hash: str,
) -> bytes:
    """The exact bytes a record's hash covers: sorted keys, no whitespace, UTF-8."""
    return json.dumps(
        {
            "seq": seq,
            "time": time,
            "call_id": call_id,
            "customer_id": customer_id,
            "operation": operation,
            "details": details_json,
            "outcome": outcome,
            "alg": alg,
            "prev_hash": prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")


def _digest(data: bytes, alg: str, key: bytes | None) -> str:
    if alg == "hmac-sha256":
        if key is None:
            raise AuditError("record is HMAC-sealed but no audit key was given")
        return hmac.new(key, data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


def _details_json(details: Mapping[str, Any]) -> str:
    return json.dumps(
        mask_mapping(details), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
        default=str,
    )


class AuditLog(SqliteStore):
    """The audit log. One instance per process; appends are serialised and each is one
    `BEGIN IMMEDIATE` transaction, so several processes can append to the same file."""

    def __init__(self, db: aiosqlite.Connection, *, path: Path, key: bytes | None) -> None:
        self._db = db
        self.path = path
        self._key = key
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        key: bytes | None = None,
        busy_timeout: float = 5.0,
        readonly: bool = False,
    ) -> AuditLog:
        if key is not None and len(key) < 16:
            raise StoreError("the audit HMAC key must be at least 16 bytes")
        p = Path(path)
        db = await open_database(
            p, COMPONENT, MIGRATIONS, busy_timeout=busy_timeout, readonly=readonly
        )
        return cls(db, path=p, key=key)

    async def append(
        self,
        operation: str,
        *,
        outcome: str,
        details: Mapping[str, Any] | None = None,
        call_id: str | None = None,
        customer_id: str | int | None = None,
        now: dt.datetime | None = None,
    ) -> AuditRecord:
        """Seal one record onto the chain and return it. Raises StoreError if it cannot be
        written: the caller must then NOT carry out (or report as done) the operation."""
        if not operation or not set(operation) <= _OPERATION_CHARS or len(operation) > 64:
            raise AuditError(f"bad operation name {operation!r}: use [a-z0-9_.-], 1-64 chars")
        if not outcome or len(outcome) > 64:
            raise AuditError("an audit record needs an outcome (1-64 chars)")
        alg = "hmac-sha256" if self._key is not None else "sha256"
        details_json = _details_json(details or {})
        when = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        time_s = when.isoformat(timespec="microseconds").replace("+00:00", "Z")
        cust = None if customer_id is None else str(customer_id)
        call = None if call_id is None else str(call_id)
        if call is not None and (len(call) > 128 or not call.isprintable()):
            raise AuditError("bad call id: at most 128 printable characters")
        async with self._lock, store_errors("audit append"):
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                async with self._db.execute("SELECT seq, hash FROM audit_head WHERE id = 1") as c:
                    head = await c.fetchone()
                if head is None:
                    raise AuditError("audit head row is missing: the file was tampered with")
                seq, prev_hash = int(head[0]) + 1, str(head[1])
                digest = _digest(
                    canonical(
                        seq=seq, time=time_s, call_id=call, customer_id=cust,
                        operation=operation, details_json=details_json, outcome=outcome,
                        alg=alg, prev_hash=prev_hash,
                    ),
                    alg,
                    self._key,
                )
                await self._db.execute(
                    "INSERT INTO audit_log (seq, time, call_id, customer_id, operation, details,"
                    " outcome, alg, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, time_s, call, cust, operation, details_json, outcome, alg, prev_hash,
                     digest),
                )
                await self._db.execute(
                    "UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, digest)
                )
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise
        return AuditRecord(
            seq, time_s, call, cust, operation, json.loads(details_json), outcome, alg,
            prev_hash, digest,
        )

    async def head(self) -> tuple[int, str]:
        async with store_errors("audit head"):
            async with self._db.execute("SELECT seq, hash FROM audit_head WHERE id = 1") as c:
                row = await c.fetchone()
        if row is None:
            raise AuditError("audit head row is missing")
        return int(row[0]), str(row[1])

    async def records(self, *, limit: int | None = None, after: int = 0) -> list[AuditRecord]:
        sql = "SELECT * FROM audit_log WHERE seq > ? ORDER BY seq"
        params: tuple[Any, ...] = (after,)
        if limit is not None:
            sql = ("SELECT * FROM (SELECT * FROM audit_log WHERE seq > ? ORDER BY seq DESC"
                   " LIMIT ?) ORDER BY seq")
            params = (after, limit)
        async with store_errors("audit list"):
            rows = await self._db.execute_fetchall(sql, params)
        return [_record(r) for r in rows]

    async def verify(self, *, expected_head: str | None = None) -> VerifyResult:
        """Walk the chain from seq 1. The first problem found is reported, by seq."""
        count = 0
        expected_seq = 1
        prev_hash = GENESIS
        async with store_errors("audit verify"):
            async with self._db.execute("SELECT * FROM audit_log ORDER BY rowid") as cur:
                async for row in cur:
                    count += 1
                    bad = self._check_row(row, expected_seq, prev_hash)
                    if bad is not None:
                        return VerifyResult(False, count, bad[0], bad[1])
                    prev_hash = str(row["hash"])
                    expected_seq += 1
            async with self._db.execute("SELECT seq, hash FROM audit_head WHERE id = 1") as c:
                head = await c.fetchone()
        last_seq = expected_seq - 1
        if head is None:
            return VerifyResult(False, count, last_seq + 1, "the head row is missing")
        head_seq, head_hash = int(head[0]), str(head[1])
        if head_seq != last_seq or head_hash != prev_hash:
            missing = last_seq + 1 if head_seq > last_seq else head_seq + 1
            return VerifyResult(
                False, count, missing,
                f"the log ends at seq {last_seq} but the head says seq {head_seq}: "
                "records were removed from the end, or the head was altered",
                head_seq, head_hash,
            )
        if expected_head is not None and expected_head != head_hash:
            return VerifyResult(
                False, count, last_seq,
                "the last record's hash differs from the head kept outside the database",
                head_seq, head_hash,
            )
        return VerifyResult(True, count, None, "", head_seq, head_hash)

    def _check_row(
        self, row: sqlite3.Row, expected_seq: int, prev_hash: str
    ) -> tuple[int, str] | None:
        seq = int(row["seq"])
        if seq != expected_seq:
            if seq > expected_seq:
                return expected_seq, (
                    f"record {expected_seq} is missing (next stored record is {seq})"
                )
            return seq, f"record {seq} is out of order (expected {expected_seq})"
        if row["prev_hash"] != prev_hash:
            return seq, f"record {seq} does not follow record {seq - 1} (prev_hash differs)"
        alg = str(row["alg"])
        if alg not in ("sha256", "hmac-sha256"):
            return seq, f"record {seq} has an unknown hash algorithm {alg!r}"
        if alg == "hmac-sha256" and self._key is None:
            return seq, f"record {seq} is HMAC-sealed: verify needs the audit key"
        data = canonical(
            seq=seq, time=str(row["time"]), call_id=row["call_id"], customer_id=row["customer_id"],
            operation=str(row["operation"]), details_json=str(row["details"]),
            outcome=str(row["outcome"]), alg=alg, prev_hash=str(row["prev_hash"]),
        )
        if not hmac.compare_digest(_digest(data, alg, self._key), str(row["hash"])):
            return seq, f"record {seq} was altered (its hash does not match its content)"
        return None

    async def verify_or_raise(self, *, expected_head: str | None = None) -> VerifyResult:
        result = await self.verify(expected_head=expected_head)
        if not result.ok:
            raise AuditError(f"audit chain broken at record {result.first_bad_seq}: "
                             f"{result.reason}", seq=result.first_bad_seq)
        return result


def _record(row: sqlite3.Row) -> AuditRecord:
    try:
        details = json.loads(row["details"])
    except ValueError:
        details = {"_unreadable": True}
    return AuditRecord(
        seq=int(row["seq"]),
        time=str(row["time"]),
        call_id=row["call_id"],
        customer_id=row["customer_id"],
        operation=str(row["operation"]),
        details=details if isinstance(details, dict) else {"_value": details},
        outcome=str(row["outcome"]),
        alg=str(row["alg"]),
        prev_hash=str(row["prev_hash"]),
        hash=str(row["hash"]),
    )
