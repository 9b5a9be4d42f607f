"""The queue log: every ACD queue event in SQLite, in the spirit of Asterisk's queue_log.

Where: the table `queue_log` lives in the daemon's main store file, `store.path` (beside the
call records; component `queue_log` in `schema_version`), so `ivr-engine report` and
`ivr-engine calls` read the same file and an admin backs up one file.

Columns, as Asterisk's queue_log has them, plus the event's exact data as JSON:

    id        INTEGER   rowid, the order in which the router emitted the events
    time      REAL      epoch seconds (wall clock, milliseconds)
    callid    TEXT      the Asterisk uniqueid of the call (task id for non-voice work); "" for
                        agent events
    queuename TEXT      the flow's queue (vip, general, ...); "" for agent events
    agent     TEXT      the agent's extension, or ""
    event     TEXT      the verb (acd/queue_events.py): ENTERQUEUE, CONNECT, ...
    data1..5  TEXT      the verb's values in Asterisk's positions where the verb exists there,
                        seconds as integers as Asterisk writes them (see `DATA_FIELDS`)
    data      TEXT      the event's data as a JSON object, seconds as floats (what reports read)

Writing never blocks or fails routing: `QueueLogWriter` is a router listener (synchronous, O(1):
it appends a row to a bounded in-memory buffer); its writer task inserts batches. When SQLite
fails (database locked, disk full, read-only file, the file cannot even be opened) the rows
stay buffered and are retried every `retry_interval`; the outage is logged loudly ONCE and its
end once. When the buffer is full the oldest rows are dropped and counted (`stats.dropped`,
logged at the first drop and every 1,000th). On shutdown the writer flushes what it can within
`flush_timeout` and logs what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import aiosqlite

from acd.queue_events import VERBS, QueueEvent
from ivr_engine.cif.sqlite import Migration, SqliteStore, open_database, store_errors
from ivr_engine.errors import StoreError

if TYPE_CHECKING:
    from ivr_engine.acd_gateway import AcdService

log = logging.getLogger(__name__)

COMPONENT = "queue_log"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "queue log",
        (
            """CREATE TABLE queue_log (
                id INTEGER PRIMARY KEY,
                time REAL NOT NULL,
                callid TEXT NOT NULL,
                queuename TEXT NOT NULL,
                agent TEXT NOT NULL,
                event TEXT NOT NULL,
                data1 TEXT NOT NULL DEFAULT '',
                data2 TEXT NOT NULL DEFAULT '',
                data3 TEXT NOT NULL DEFAULT '',
                data4 TEXT NOT NULL DEFAULT '',
                data5 TEXT NOT NULL DEFAULT '',
                data TEXT NOT NULL DEFAULT '{}'
            )""",
            "CREATE INDEX queue_log_time ON queue_log(time)",
            "CREATE INDEX queue_log_call ON queue_log(callid, time)",
        ),
    ),
)

#: Which data key fills data1..data5 per verb ("" = left empty). Asterisk's positions where the
#: verb exists there (ENTERQUEUE url|callerid, CONNECT holdtime|bridged uniqueid|ringtime,
#: COMPLETE* holdtime|calltime|origposition, ABANDON and EXITWITHTIMEOUT
#: position|origposition|waittime, RINGNOANSWER ringtime in ms, PAUSE reason); we keep neither
#: URLs, caller numbers nor positions, so those stay empty, and our extra values follow.
DATA_FIELDS: Mapping[str, tuple[str, ...]] = {
    "ENTERQUEUE": ("", "", "priority", "language", "channel"),
    "RINGING": ("waited",),
    "RINGNOANSWER": ("ringtime_ms", "status"),
    "CONNECT": ("holdtime", "", "ringtime"),
    "COMPLETECALLER": ("holdtime", "calltime"),
    "COMPLETEAGENT": ("holdtime", "calltime"),
    "ABANDON": ("", "", "waittime", "ringing"),
    "EXITWITHTIMEOUT": ("", "", "waittime", "target", "reason"),
    "AGENTLOGIN": ("", "paused"),
    "AGENTLOGOFF": (),
    "PAUSE": ("reason",),
    "UNPAUSE": (),
}
_SECONDS = frozenset({"waited", "holdtime", "ringtime", "calltime", "waittime"})

_INSERT = (
    "INSERT INTO queue_log (time, callid, queuename, agent, event, data1, data2, data3, data4,"
    " data5, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

Row = tuple[Any, ...]


def _column(key: str, data: Mapping[str, Any]) -> str:
    if not key:
        return ""
    if key == "ringtime_ms":
        value = data.get("ringtime")
        return "" if value is None else str(round(float(value) * 1000))
    value = data.get(key)
    if value is None:
        return ""
    if key in _SECONDS:
        return str(round(float(value)))
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def event_row(event: QueueEvent) -> Row:
    """The table row of one event (without the id)."""
    data = dict(event.data)
    columns = [_column(key, data) for key in DATA_FIELDS.get(event.verb, ())]
    columns += [""] * (5 - len(columns))
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return (
        round(event.time, 3),
        event.call_id,
        event.queue,
        event.agent,
        event.verb,
        *columns,
        body,
    )


def _event(row: Any) -> QueueEvent:
    try:
        data = json.loads(row["data"])
    except (TypeError, ValueError):
        data = {}
    return QueueEvent(
        float(row["time"]),
        str(row["event"]),
        str(row["callid"]),
        str(row["queuename"]),
        str(row["agent"]),
        data if isinstance(data, dict) else {},
    )


class QueueLog(SqliteStore):
    """The queue_log table. Raises StoreError; the daemon writes through `QueueLogWriter`."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, busy_timeout: float = 2.0, readonly: bool = False
    ) -> QueueLog:
        p = Path(path)
        db = await open_database(
            p, COMPONENT, MIGRATIONS, busy_timeout=busy_timeout, readonly=readonly
        )
        return cls(db, p)

    async def write_rows(self, rows: Sequence[Row]) -> None:
        """Insert rows in one transaction (all or nothing)."""
        async with store_errors("queue log write"):
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                await self._db.executemany(_INSERT, rows)
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    with contextlib.suppress(Exception):
                        await self._db.execute("ROLLBACK")
                raise

    async def events(self, since: float, until: float) -> list[QueueEvent]:
        """The events with since <= time < until, in the order they were emitted."""
        if until < since:
            raise StoreError("the end of the period is before its start")
        async with store_errors("queue log read"):
            rows = await self._db.execute_fetchall(
                "SELECT time, callid, queuename, agent, event, data FROM queue_log"
                " WHERE time >= ? AND time < ? ORDER BY id",
                (since, until),
            )
        return [_event(r) for r in rows if r["event"] in VERBS]

    async def count(self) -> int:
        async with store_errors("queue log read"):
            rows = await self._db.execute_fetchall("SELECT COUNT(*) FROM queue_log")
        return int(next(iter(rows))[0])

    async def rows(self) -> list[dict[str, Any]]:
        """Every row as a dict (tests, debugging)."""
        async with store_errors("queue log read"):
            rows = await self._db.execute_fetchall("SELECT * FROM queue_log ORDER BY id")
        return [dict(r) for r in rows]


@dataclass(slots=True)
class WriterStats:
    submitted: int = 0
    written: int = 0
    write_failures: int = 0
    outages: int = 0
    dropped: int = 0
    in_outage: bool = False


class QueueLogWriter:
    """A router listener that buffers queue events and writes them in batches.

    ```
    async with QueueLogWriter(lambda: QueueLog.open(path)) as writer:  # task "queue-log-writer"
        router.listeners.append(writer)                                 # sync, never raises
    ```
    The store is opened by the writer task (and re-opened after a failed open), so a file that
    cannot be opened at start-up delays the log, not the daemon.
    """

    def __init__(
        self,
        opener: Callable[[], Awaitable[QueueLog]],
        *,
        max_pending: int = 50_000,
        batch: int = 500,
        retry_interval: float = 2.0,
        flush_timeout: float = 10.0,
    ) -> None:
        if max_pending < 1 or batch < 1 or retry_interval <= 0:
            raise StoreError("max_pending and batch must be >= 1, retry_interval > 0")
        self._opener = opener
        self._store: QueueLog | None = None
        self._pending: deque[Row] = deque()
        self._max_pending = max_pending
        self._batch = batch
        self._retry_interval = retry_interval
        self._flush_timeout = flush_timeout
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.stats = WriterStats()

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

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is not None:
            raise StoreError("the queue log writer is already running")
        self._task = asyncio.get_running_loop().create_task(self._writer(), name="queue-log-writer")

    async def stop(self) -> int:
        """Flush (up to `flush_timeout`), stop the writer, close the store; returns the rows
        left unwritten (logged)."""
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
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):
                await store.close()
        if left:
            log.error("queue log: %d events could not be written before shutdown", left)
        return left

    def __call__(self, event: QueueEvent) -> None:
        self.submit(event)

    def submit(self, event: QueueEvent) -> None:
        """Buffer one event (the router's listener call): O(1), never blocks, never raises for
        storage reasons."""
        self.stats.submitted += 1
        self._pending.append(event_row(event))
        if len(self._pending) > self._max_pending:
            self._pending.popleft()
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 1000 == 0:
                log.error(
                    "queue log: buffer full (%d events): dropped the oldest (%d dropped so far)",
                    self._max_pending,
                    self.stats.dropped,
                )
        self._wake.set()

    async def flush(self) -> int:
        """Try once to write everything now; returns how many rows are still pending. Bound it
        with `asyncio.timeout()` (a locked database waits its busy timeout per try)."""
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
                    # An outage: retry on a timer; new events do not hammer a locked file.
                    await asyncio.sleep(self._retry_interval)

    async def _write_batch(self) -> bool:
        async with self._lock:
            if not self._pending:
                return True
            count = min(self._batch, len(self._pending))
            rows = [self._pending[i] for i in range(count)]
            dropped_before = self.stats.dropped
            try:
                if self._store is None:
                    self._store = await self._opener()
                await self._store.write_rows(rows)
            except Exception as exc:
                # StoreError is the expected case (locked, full, unopenable); anything else is
                # handled the same way so that the writer never dies and silently stops.
                self.stats.write_failures += 1
                if not self.stats.in_outage:
                    self.stats.in_outage = True
                    self.stats.outages += 1
                    log.error(
                        "QUEUE LOG CANNOT BE WRITTEN (%s); routing continues, events are kept "
                        "in memory (up to %d) and retried every %.1fs",
                        exc,
                        self._max_pending,
                        self._retry_interval,
                        exc_info=not isinstance(exc, StoreError),
                    )
                return False
            # Rows are appended at the right and dropped at the left: the batch is at the left,
            # less what a full buffer dropped while we wrote (those were its oldest rows).
            for _ in range(max(0, count - (self.stats.dropped - dropped_before))):
                self._pending.popleft()
            self.stats.written += count
            if self.stats.in_outage:
                self.stats.in_outage = False
                log.warning("queue log: writing again; %d events still pending", self.pending)
            return True


def store_path(service: AcdService) -> Path:
    """The daemon's `store.path`: from `service.settings` when the composition root hands it
    over, else loaded the way the daemon loads it (`$IVR_ENGINE_CONFIG`, then the
    `IVR_ENGINE_*` environment), relative to `service.base` or the working directory."""
    from ivr_engine import config

    settings = getattr(service, "settings", None)
    if not isinstance(settings, config.Settings):
        settings = config.load()
    path = Path(settings.store.path)
    base = getattr(service, "base", None)
    if not path.is_absolute():
        path = (Path(base) if isinstance(base, str | Path) else Path.cwd()) / path
    return path


@contextlib.asynccontextmanager
async def queue_log_extension(service: AcdService) -> AsyncIterator[QueueLogWriter]:
    """The AcdService extension: the writer runs while the ACD runs."""
    path = store_path(service)
    # A short flush on shutdown: the call records flush too, and SIGTERM has a drain deadline.
    async with QueueLogWriter(lambda: QueueLog.open(path), flush_timeout=5.0) as writer:
        service.router.listeners.append(writer)
        log.info("queue log: writing to %s", path)
        try:
            yield writer
        finally:
            with contextlib.suppress(ValueError):
                service.router.listeners.remove(writer)
