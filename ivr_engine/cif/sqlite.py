"""Opening the engine's SQLite files: WAL, busy timeout, versioned migrations.

Each component that keeps tables in a file (the CIF, the call records, the audit log) brings
an ordered list of `Migration`s. `open_database` applies the missing ones in order, each in
its own transaction, and records them in `schema_version(component, version, ...)`, so
several components can share one file. A file whose schema is newer than the code is refused
(`SchemaTooNew`): running old code against it could silently misread it.

`sqlite3.Error` and `OSError` are translated into `StoreError` here, at the store boundary.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import aiosqlite

from ivr_engine.errors import StoreError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 5.0


class SqliteStore:
    """Base of the stores on one aiosqlite connection (`_db`): close and `async with`."""

    _db: aiosqlite.Connection

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class SchemaTooNew(StoreError):
    """The file was written by a newer ivr-engine (a migration this code does not know)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


def check_migrations(component: str, migrations: Sequence[Migration]) -> None:
    """Versions must be 1..N in order: a gap or a duplicate is a programming error."""
    for index, migration in enumerate(migrations, start=1):
        if migration.version != index:
            raise StoreError(
                f"{component}: migration #{index} has version {migration.version}, expected {index}"
            )


def translate(exc: BaseException, what: str) -> StoreError:
    """A low-level error as a StoreError that says what we were doing."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorname", "") or type(exc).__name__
        return StoreError(f"{what}: {code}: {exc}")
    if isinstance(exc, OSError):
        return StoreError(f"{what}: {exc.strerror or exc}")
    return StoreError(f"{what}: {exc}")


@contextlib.asynccontextmanager
async def store_errors(what: str) -> AsyncIterator[None]:
    """Translate sqlite3/OS errors raised inside the block into StoreError."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise translate(exc, what) from exc


async def open_database(
    path: str | Path,
    component: str,
    migrations: Sequence[Migration],
    *,
    busy_timeout: float = BUSY_TIMEOUT_S,
    readonly: bool = False,
) -> aiosqlite.Connection:
    """Connect, switch to WAL, migrate `component` to the latest version; return the connection.

    The connection is in autocommit mode (`isolation_level=None`): callers open transactions
    explicitly with `BEGIN IMMEDIATE` so that a writer never upgrades a read lock (the classic
    SQLITE_BUSY deadlock in WAL mode).
    """
    check_migrations(component, migrations)
    p = Path(path)
    where = f"{component} store {p}"
    if not readonly:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise translate(exc, f"{where}: cannot create the directory") from exc
    target = f"file:{p}?mode=ro" if readonly else str(p)
    try:
        db = await aiosqlite.connect(
            target, uri=readonly, timeout=busy_timeout, isolation_level=None
        )
    except (sqlite3.Error, OSError) as exc:
        raise translate(exc, f"{where}: cannot open") from exc
    try:
        db.row_factory = sqlite3.Row
        async with store_errors(f"{where}: cannot set up"):
            await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            if not readonly:
                await db.execute("PRAGMA journal_mode = WAL")
                await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            await _migrate(db, component, migrations, where, readonly=readonly)
    except BaseException:
        await db.close()
        raise
    return db


async def schema_version(db: aiosqlite.Connection, component: str) -> int:
    async with db.execute(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version WHERE component = ?", (component,)
    ) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _migrate(
    db: aiosqlite.Connection,
    component: str,
    migrations: Sequence[Migration],
    where: str,
    *,
    readonly: bool,
) -> None:
    if not readonly:
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " component TEXT NOT NULL, version INTEGER NOT NULL, description TEXT NOT NULL,"
            " applied_at TEXT NOT NULL, PRIMARY KEY (component, version))"
        )
    current = await schema_version(db, component)
    latest = len(migrations)
    if current > latest:
        raise SchemaTooNew(
            f"{where}: schema version {current} is newer than this ivr-engine knows "
            f"({latest}); upgrade ivr-engine"
        )
    if readonly:
        if current == 0:
            raise StoreError(f"{where}: holds no {component} data yet (nothing was written)")
        if current < latest:
            raise StoreError(f"{where}: schema version {current} needs migrating to {latest}"
                             " (open it once with a current ivr-engine that writes)")
        return
    for migration in migrations[current:]:
        await db.execute("BEGIN IMMEDIATE")
        try:
            # Re-check under the write lock: another process may have migrated meanwhile.
            if await schema_version(db, component) >= migration.version:
                await db.execute("ROLLBACK")
                continue
            for statement in migration.statements:
                await db.execute(statement)
            await db.execute(
                "INSERT INTO schema_version (component, version, description, applied_at)"
                " VALUES (?, ?, ?, ?)",
                (
                    component,
                    migration.version,
                    migration.description,
                    dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                ),
            )
            await db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise
        log.info("%s: migrated to version %d (%s)", where, migration.version, migration.description)
