"""Call records: what happened on every call, for an admin to read (`ivr-engine calls ...`).

A `CallRecord` is built up while the call runs (steps, announcements, queue, events, outcome)
and handed to a `CallRecorder`, which writes it in the background. Writing must never block
or fail a call: `CallRecorder.submit()` is synchronous and only puts the record in a bounded
in-memory buffer (keyed by call id: a newer version of the same call replaces the older one).
The writer task drains the buffer; when SQLite fails (disk full, database locked, read-only
file) the records stay buffered and are retried on a timer, the outage is logged loudly ONCE
(and its end once), and `stats` counts failures and drops. When the buffer is full the oldest
record is dropped and counted. `flush()` on shutdown writes what it can and reports the rest.

Masking happens when a record is built, so nothing sensitive ever sits in memory, in the
buffer or on disk: sensitive step inputs are `******`; the caller number keeps its first 3 and
last 4 digits; free text goes through `scrub` (8+ digit runs cut to the last 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiosqlite

from ivr_engine.cif.masking import SECRET_MASK, mask_caller, mask_mapping, scrub
from ivr_engine.cif.sqlite import Migration, SqliteStore, open_database, store_errors
from ivr_engine.errors import StoreError

log = logging.getLogger(__name__)

COMPONENT = "call_records"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "call records",
        (
            """CREATE TABLE call_records (
                id TEXT PRIMARY KEY,
                started TEXT NOT NULL,
                ended TEXT,
                caller TEXT NOT NULL,
                customer_id INTEGER,
                tier TEXT,
                region TEXT,
                language TEXT,
                flow_name TEXT,
                flow_version TEXT,
                queue_name TEXT,
                outcome TEXT,
                body TEXT NOT NULL
            ) WITHOUT ROWID""",
            "CREATE INDEX call_records_started ON call_records(started)",
            "CREATE INDEX call_records_customer ON call_records(customer_id, started)",
        ),
    ),
)


class Outcome(StrEnum):
    HANGUP_BY_CALLER = "hangup-by-caller"
    QUEUED = "queued"
    TRANSFERRED = "transferred"
    FALLBACK = "fallback"
    ERROR = "error"
    COMPLETED = "completed"  # self-service finished and the IVR hung up


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Step:
    node_id: str
    type: str
    at: str
    inputs: dict[str, Any]
    sensitive: bool = False
    result: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.node_id, "type": self.type, "at": self.at,
                               "inputs": self.inputs}
        if self.sensitive:
            out["sensitive"] = True
        if self.result is not None:
            out["result"] = self.result
        return out


@dataclass(slots=True)
class QueueInfo:
    name: str
    skills: tuple[str, ...]
    priority: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "skills": list(self.skills), "priority": self.priority}


@dataclass(slots=True)
class CallRecord:
    """One call. Build it with the methods below; they mask as they go."""

    id: str  # the Asterisk uniqueid
    caller: str  # masked
    started: str = field(default_factory=_now)
    ended: str | None = None
    customer_id: int | None = None
    tier: str | None = None
    region: str | None = None
    language: str | None = None
    flow_name: str | None = None
    flow_version: str | None = None
    steps: list[Step] = field(default_factory=list)
    announcements: list[str] = field(default_factory=list)
    queue: QueueInfo | None = None
    outcome: Outcome | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def start(cls, call_id: str, caller_number: str | None, **fields: Any) -> CallRecord:
        """A new record; `caller_number` is masked here and the full number is not kept."""
        if not call_id or len(call_id) > 128:
            raise StoreError("a call record needs an id (the Asterisk uniqueid), max 128 chars")
        return cls(id=call_id, caller=mask_caller(caller_number), **fields)

    def step(
        self,
        node_id: str,
        type: str,
        inputs: dict[str, Any] | None = None,
        *,
        sensitive: bool = False,
        result: str | None = None,
    ) -> Step:
        """Record a visited node. With `sensitive=True` every input value is stored as
        `******` (PINs, card numbers); otherwise values are masked by key and scrubbed."""
        if sensitive:
            masked = {str(k): SECRET_MASK for k in (inputs or {})}
        else:
            masked = mask_mapping(inputs or {})
        s = Step(str(node_id), str(type), _now(), masked, sensitive,
                 None if result is None else scrub(str(result)))
        self.steps.append(s)
        return s

    def announce(self, prompt: str) -> None:
        self.announcements.append(scrub(str(prompt)))

    def queued(self, name: str, skills: tuple[str, ...] | list[str], priority: int) -> None:
        self.queue = QueueInfo(str(name), tuple(str(s) for s in skills), int(priority))

    def event(self, kind: str, **data: Any) -> None:
        self.events.append({"at": _now(), "kind": str(kind), **mask_mapping(data)})

    def end(self, outcome: Outcome | str) -> None:
        self.outcome = Outcome(outcome)
        self.ended = _now()

    def body(self) -> dict[str, Any]:
        return {
            "steps": [s.to_json() for s in self.steps],
            "announcements": list(self.announcements),
            "queue": self.queue.to_json() if self.queue else None,
            "events": list(self.events),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "started": self.started,
            "ended": self.ended,
            "caller": self.caller,
            "customer_id": self.customer_id,
            "tier": self.tier,
            "region": self.region,
            "language": self.language,
            "flow": {"name": self.flow_name, "version": self.flow_version},
            "outcome": str(self.outcome) if self.outcome else None,
            **self.body(),
        }

    def _row(self) -> tuple[Any, ...]:
        return (
            self.id, self.started, self.ended, self.caller, self.customer_id, self.tier,
            self.region, self.language, self.flow_name, self.flow_version,
            self.queue.name if self.queue else None,
            str(self.outcome) if self.outcome else None,
            json.dumps(self.body(), ensure_ascii=False, separators=(",", ":"), default=str),
        )


_UPSERT = (
    "INSERT INTO call_records (id, started, ended, caller, customer_id, tier, region, language,"
    " flow_name, flow_version, queue_name, outcome, body) VALUES"
    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET started = excluded.started, ended = excluded.ended,"
    " caller = excluded.caller, customer_id = excluded.customer_id, tier = excluded.tier,"
    " region = excluded.region, language = excluded.language, flow_name = excluded.flow_name,"
    " flow_version = excluded.flow_version, queue_name = excluded.queue_name,"
    " outcome = excluded.outcome, body = excluded.body"
)


def _from_row(row: Any) -> dict[str, Any]:
    body = json.loads(row["body"])
    return {
        "id": row["id"],
        "started": row["started"],
        "ended": row["ended"],
        "caller": row["caller"],
        "customer_id": row["customer_id"],
        "tier": row["tier"],
        "region": row["region"],
        "language": row["language"],
        "flow": {"name": row["flow_name"], "version": row["flow_version"]},
        "outcome": row["outcome"],
        **body,
    }


class CallRecordStore(SqliteStore):
    """The call_records table. Raises StoreError; `CallRecorder` is what calls should use."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, busy_timeout: float = 2.0, readonly: bool = False
    ) -> CallRecordStore:
        p = Path(path)
        db = await open_database(
            p, COMPONENT, MIGRATIONS, busy_timeout=busy_timeout, readonly=readonly
        )
        return cls(db, p)

    async def write_many(self, records: list[CallRecord]) -> None:
        """Upsert records in one transaction (all or nothing)."""
        await self.write_rows([r._row() for r in records])

    async def write_rows(self, rows: list[tuple[Any, ...]]) -> None:
        async with store_errors("call records write"):
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                await self._db.executemany(_UPSERT, rows)
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    with contextlib.suppress(Exception):
                        await self._db.execute("ROLLBACK")
                raise

    async def get(self, call_id: str) -> dict[str, Any] | None:
        async with store_errors("call records read"):
            rows = await self._db.execute_fetchall(
                "SELECT * FROM call_records WHERE id = ?", (call_id,)
            )
        row = next(iter(rows), None)
        return _from_row(row) if row is not None else None

    async def list(self, *, limit: int = 50) -> list[dict[str, Any]]:
        if limit < 1:
            raise StoreError("limit must be at least 1")
        async with store_errors("call records read"):
            rows = await self._db.execute_fetchall(
                "SELECT * FROM call_records ORDER BY started DESC, id DESC LIMIT ?", (limit,)
            )
        return [_from_row(r) for r in rows]


@dataclass(slots=True)
class RecorderStats:
    submitted: int = 0
    written: int = 0
    write_failures: int = 0
    outages: int = 0
    dropped: int = 0
    pending: int = 0
    in_outage: bool = False


class CallRecorder:
    """Buffers call records and writes them in the background; never blocks or fails a call.

    ```
    async with CallRecorder(store) as recorder:   # owns the task "call-records-writer"
        recorder.submit(record)                    # sync, never raises for storage reasons
    # on exit: flush (bounded by flush_timeout), then the writer is cancelled
    ```
    """

    def __init__(
        self,
        store: CallRecordStore,
        *,
        max_pending: int = 10_000,
        retry_interval: float = 2.0,
        batch: int = 200,
        flush_timeout: float = 10.0,
    ) -> None:
        if max_pending < 1 or batch < 1 or retry_interval <= 0:
            raise StoreError("max_pending and batch must be >= 1, retry_interval > 0")
        self._store = store
        # Snapshots (rows), not the live objects: the call may go on changing its record.
        self._pending: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self._max_pending = max_pending
        self._retry_interval = retry_interval
        self._batch = batch
        self._flush_timeout = flush_timeout
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self.stats = RecorderStats()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start(self) -> None:
        if self._task is not None:
            raise StoreError("the call recorder is already running")
        self._task = asyncio.create_task(self._writer(), name="call-records-writer")

    async def stop(self) -> int:
        """Flush (up to `flush_timeout`), stop the writer; returns the records left unwritten."""
        try:
            async with asyncio.timeout(self._flush_timeout):
                left = await self.flush()
        except TimeoutError:
            left = len(self._pending)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if left:
            log.error("call records: %d records could not be written before shutdown", left)
        return left

    def submit(self, record: CallRecord) -> None:
        """Queue a record (a newer version of the same call replaces the queued one)."""
        self.stats.submitted += 1
        self._pending.pop(record.id, None)
        self._pending[record.id] = record._row()
        while len(self._pending) > self._max_pending:
            dropped_id, _ = self._pending.popitem(last=False)
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 1000 == 0:
                log.error(
                    "call records: buffer full (%d): dropped the oldest record %s (%d dropped)",
                    self._max_pending, dropped_id, self.stats.dropped,
                )
        self.stats.pending = len(self._pending)
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        """Try once to write everything now; returns how many records are still pending.
        Bound it with `asyncio.timeout()` (a locked database waits `busy_timeout` per try)."""
        while self._pending:
            if not await self._write_batch():
                break
        return len(self._pending)

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                if not await self._write_batch():
                    # Outage: retry on a timer; a new submit does not hammer a full disk.
                    await asyncio.sleep(self._retry_interval)

    async def _write_batch(self) -> bool:
        async with self._write_lock:
            if not self._pending:
                return True
            batch = list(self._pending.items())[: self._batch]
            try:
                await self._store.write_rows([row for _, row in batch])
            except Exception as exc:
                # StoreError is the expected case (disk full, locked); anything else (a closed
                # connection, a driver bug) is handled the same way so that the writer task
                # never dies and silently stops writing. CancelledError is not caught.
                self.stats.write_failures += 1
                if not self.stats.in_outage:
                    self.stats.in_outage = True
                    self.stats.outages += 1
                    log.error(
                        "CALL RECORDS CANNOT BE WRITTEN (%s); calls continue, records are kept "
                        "in memory (up to %d) and retried every %.1fs",
                        exc, self._max_pending, self._retry_interval,
                        exc_info=not isinstance(exc, StoreError),
                    )
                return False
            for call_id, row in batch:
                # Only drop what was written: a newer version submitted meanwhile stays queued.
                if self._pending.get(call_id) is row:
                    del self._pending[call_id]
            self.stats.written += len(batch)
            self.stats.pending = len(self._pending)
            if self.stats.in_outage:
                self.stats.in_outage = False
                log.warning("call records: writing again; %d still pending", len(self._pending))
            return True
