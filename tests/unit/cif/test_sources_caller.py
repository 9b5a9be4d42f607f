"""The hotline's `cif.caller` source (ivr_engine/sources.py) on a real CIF file and the real
prompt catalogue: what the greeting gets for a surname the prompts cannot speak, and a lookup
that does not wait on a locked database."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ivr_engine.cif.model import Tier, Title
from ivr_engine.cif.seed import seed
from ivr_engine.cif.store import CifStore, NewAccount, NewCustomer, NewPhone
from ivr_engine.prompts import PromptCatalogue
from ivr_engine.records import CallRecord
from ivr_engine.sources import CallContext, build_sources

ROOT = Path(__file__).resolve().parents[3]
KEY = b"test-pan-key-0123456789abcdef!!"
ZHAO = "13500000004"  # 3 calls today in the seed
OUTSIDE = "13900000011"  # a customer named 乜 (Mat): not in the name tables


@pytest.fixture(scope="module")
def catalogue() -> PromptCatalogue:
    return PromptCatalogue.load(ROOT / "prompts")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CifStore]:
    s = await CifStore.open(tmp_path / "cif.sqlite3", pan_key=KEY, busy_timeout=1.0)
    try:
        await seed(s, customers=0)
        await s.add_customers(
            [
                NewCustomer(
                    cif_no="C9000011",
                    surname="Mat",
                    surname_zh="乜",
                    title=Title.MS,
                    tier=Tier.STANDARD,
                    home_province="Beijing",
                    home_city="Beijing",
                    phones=(NewPhone(OUTSIDE),),
                    accounts=(NewAccount("6222020000000099011", "savings", 100_000),),
                )
            ]
        )
        yield s
    finally:
        await s.close()


def caller_source(store: CifStore, catalogue: PromptCatalogue, call_id: str) -> Any:
    engine = SimpleNamespace(cif=store, recorder=object(), catalogue=catalogue, acd=None)
    ctx = CallContext(call_id=call_id, record=CallRecord.start(call_id, "13900000011"))
    return build_sources(engine, ctx)["cif.caller"], ctx  # type: ignore[arg-type]


async def test_surname_outside_the_tables_is_left_out_of_the_greeting(
    store: CifStore, catalogue: PromptCatalogue
) -> None:
    assert not catalogue.can_say("surname", "Mat", "cmn")
    source, ctx = caller_source(store, catalogue, "c1")
    fields = await source({"number": OUTSIDE})
    assert fields["found"] is True and fields["surname"] == ""  # greeted without the name
    assert fields["region"] != "" and fields["title"] == "ms"  # the rest of the greeting stays
    assert ctx.customer_id is not None
    # a surname in the tables is kept
    source, _ = caller_source(store, catalogue, "c2")
    assert (await source({"number": ZHAO}))["surname"] == "Zhao"


async def test_lookup_does_not_wait_on_a_locked_database(
    store: CifStore, catalogue: PromptCatalogue
) -> None:
    locker = sqlite3.connect(store.path, timeout=1, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")
        locker.execute(
            "INSERT INTO call_counts (customer_id, day, count) VALUES (1, '1999-01-01', 1)"
        )
        source, _ = caller_source(store, catalogue, "c3")
        started = time.monotonic()
        first = await source({"number": ZHAO})
        second = await source({"number": ZHAO})
        took = time.monotonic() - started
        assert first["calls_today"] == 3 and first["surname"] == "Zhao"
        # the first call is counted although it could not be written yet
        assert second["calls_today"] == 4
        assert took < 0.5, took  # the busy timeout is 1 s: a waiting write would show
        await asyncio.sleep(1.5)  # the writer tried and failed on the lock
        assert store.counts.write_failures >= 1 and store.counts.unwritten == 2
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert await store.counts.flush() == 0
    zhao = await store.lookup_by_caller(ZHAO)
    assert zhao is not None and zhao.customer is not None
    with sqlite3.connect(store.path) as conn:
        count = conn.execute(
            "SELECT count FROM call_counts WHERE customer_id = ? AND day = ?",
            (zhao.customer.id, store.today().isoformat()),
        ).fetchone()
    assert count == (5,)
    assert (await store.profile(ZHAO)).calls_today == 5


async def test_counts_left_buffered_are_written_on_close(tmp_path: Path) -> None:
    path = tmp_path / "cif.sqlite3"
    async with await CifStore.open(path, pan_key=KEY) as s:
        await seed(s, customers=0)
        zhao = await s.lookup_by_caller(ZHAO)
        assert zhao is not None and zhao.customer is not None
        s.count_call(zhao.customer.id)
        s.count_call(zhao.customer.id)
    async with await CifStore.open(path, pan_key=KEY) as s:
        again = await s.profile(ZHAO)
        assert again.calls_today == 5
