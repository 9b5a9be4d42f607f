"""Today's call counts, counted at once and written in the background.

A caller's lookup must never wait on a write: with another process holding the database's
write lock, an awaited `INSERT ... call_counts` sat in SQLite's busy timeout and the caller
heard two seconds of silence at the greeting (then was served as unknown). So the lookup only
*notes* the call here (`add`, synchronous), and a writer task writes the increments on a
connection of its own, in one transaction per batch, the way `records.CallRecorder` buffers
call records: on failure the increments stay in memory and are retried on a timer, the outage
is logged loudly once (and its end once). Until they are written, `pending()` lets the lookup
add them to what the database says, so a repeat caller is still seen as one during an outage.

```
counts = CallCounts(write_batch)      # write_batch([(customer_id, day, n), ...]) -> None
counts.add(1005, "2026-11-25")        # sync, never raises for storage reasons
await counts.aclose()                 # flush (bounded), stop the writer
```
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Row = tuple[int, str, int]  # customer id, ISO day, calls to add
WriteBatch = Callable[[list[Row]], Awaitable[None]]


class CallCounts:
    """Buffered call-count increments and the task that writes them (named "cif-call-counts",
    owned here: started on the first `add`, stopped by `aclose`)."""

    def __init__(self, write: WriteBatch, *, retry_interval: float = 2.0) -> None:
        if retry_interval <= 0:
            raise ValueError("retry_interval must be positive")
        self._write = write
        self._retry_interval = retry_interval
        self._pending: Counter[tuple[int, str]] = Counter()
        self._in_flight: Counter[tuple[int, str]] = Counter()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.in_outage = False
        self.outages = 0
        self.written = 0
        self.write_failures = 0

    def add(self, customer_id: int, day: str) -> None:
        """Count one call now; the database learns it when it can."""
        self._pending[(customer_id, day)] += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._writer(), name="cif-call-counts"
            )
        self._wake.set()

    def pending(self, customer_id: int, day: str) -> int:
        """Calls noted but not yet in the database (in flight included)."""
        key = (customer_id, day)
        return self._pending[key] + self._in_flight[key]

    @property
    def unwritten(self) -> int:
        return sum(self._pending.values()) + sum(self._in_flight.values())

    async def flush(self) -> int:
        """Try once to write everything now; returns how many calls are still unwritten."""
        # The lock inside waits for a batch the writer task has in flight.
        while self._pending or self._in_flight:
            if not await self._write_once():
                break
        return self.unwritten

    async def aclose(self, flush_timeout: float = 10.0) -> int:
        """Flush (bounded by `flush_timeout`), stop the writer; returns the calls left unwritten."""
        try:
            async with asyncio.timeout(flush_timeout):
                left = await self.flush()
        except TimeoutError:
            left = self.unwritten
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if left:
            log.error("CIF call counts: %d call(s) could not be counted before shutdown", left)
        return left

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                if not await self._write_once():
                    # Outage: retry on a timer; new calls do not hammer a locked database.
                    await asyncio.sleep(self._retry_interval)

    async def _write_once(self) -> bool:
        async with self._lock:
            if not self._pending:
                return True
            batch, self._pending = self._pending, Counter()
            self._in_flight = batch
            try:
                await self._write([(cid, day, n) for (cid, day), n in batch.items()])
            except asyncio.CancelledError:
                self._pending.update(batch)  # shutdown deadline: left for aclose to report
                raise
            except Exception as exc:
                # StoreError is the expected case (locked, disk full); anything else is handled
                # the same way so the writer never dies silently. CancelledError is not caught.
                self._pending.update(batch)
                self.write_failures += 1
                if not self.in_outage:
                    self.in_outage = True
                    self.outages += 1
                    log.error(
                        "CIF CALL COUNTS CANNOT BE WRITTEN (%s); calls continue, counts are kept "
                        "in memory and retried every %.1fs",
                        exc,
                        self._retry_interval,
                    )
                return False
            finally:
                self._in_flight = Counter()
            self.written += sum(batch.values())
            if self.in_outage:
                self.in_outage = False
                log.warning("CIF call counts: writing again")
            return True
