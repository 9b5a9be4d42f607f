"""CifStore on real SQLite files: personas, tiers, language, PIN lockout, cards, masking."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ivr_engine.cif.errors import CardStateError, InvalidCardNumber, InvalidRequest, UnknownCard
from ivr_engine.cif.model import CardStatus, Language, ServiceTier
from ivr_engine.cif.schema import MIGRATIONS as CIF_MIGRATIONS
from ivr_engine.cif.seed import DEV_PIN, PERSONA_CARDS, PERSONA_NUMBERS, seed
from ivr_engine.cif.sqlite import SchemaTooNew
from ivr_engine.cif.store import CifStore
from ivr_engine.errors import StoreError

TODAY = dt.date(2026, 11, 25)
KEY = b"test-pan-key-0123456789abcdef!!"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CifStore]:
    s = await CifStore.open(tmp_path / "cif.sqlite3", pan_key=KEY)
    try:
        await seed(s, customers=50, today=TODAY)
        yield s
    finally:
        await s.close()


async def test_personas(store: CifStore) -> None:
    chen = await store.lookup_by_caller("13926000001", day=TODAY)
    assert chen is not None and chen.customer is not None
    assert chen.service_tier is ServiceTier.VIP and chen.bound
    assert chen.language is Language.CANTONESE  # no preference, Guangdong number
    assert chen.customer.greeting_name(chen.language) == "陈先生"
    assert chen.customer.greeting_name("en") == "Mr Chen"

    wang = await store.lookup_by_caller("+86 138 0013 8000", day=TODAY)
    assert wang is not None and wang.customer is not None
    assert wang.service_tier is ServiceTier.LOCAL and wang.language is Language.MANDARIN
    assert wang.customer.greeting_name(wang.language) == "王女士"
    bill = wang.unpaid_bill
    assert bill is not None and bill.due_date == TODAY + dt.timedelta(days=3)
    assert str(bill.amount) == "5280.00" and str(bill.minimum) == "528.00"
    assert bill.card_masked.startswith("****")

    assert await store.lookup_by_caller("075582345678", day=TODAY) is None
    landline = await store.profile("075582345678", day=TODAY)
    assert landline.service_tier is ServiceTier.UNKNOWN
    assert landline.language is Language.CANTONESE and landline.region.city == "Shenzhen"

    li = await store.lookup_by_caller("13700000003", day=TODAY)
    assert li is not None and li.customer is not None
    assert li.service_tier is ServiceTier.OUT_OF_REGION  # home Shanghai, bank in Beijing
    assert li.customer.home_province == "Shanghai" and li.region.province == "Liaoning"
    assert [f.code for f in li.risk_flags] == ["SUSPICIOUS_TXN"] and li.risk_flagged

    zhao = await store.lookup_by_caller("13500000004", day=TODAY)
    assert zhao is not None and zhao.service_tier is ServiceTier.GROUP
    assert zhao.calls_today == 3
    assert await store.record_call(zhao.customer.id, TODAY) == 4  # type: ignore[union-attr]
    again = await store.lookup_by_caller("13500000004", day=TODAY)
    assert again is not None and again.calls_today == 4
    tomorrow = await store.lookup_by_caller("13500000004", day=TODAY + dt.timedelta(days=1))
    assert tomorrow is not None and tomorrow.calls_today == 0

    anon = await store.profile("anonymous")
    assert anon.service_tier is ServiceTier.ANONYMOUS and anon.customer is None


async def test_bank_province_is_a_parameter(tmp_path: Path) -> None:
    async with await CifStore.open(tmp_path / "c.db", pan_key=KEY, bank_province="广东") as s:
        await seed(s, customers=0, today=TODAY)
        wang = await s.lookup_by_caller("13800138000", day=TODAY)
        li = await s.lookup_by_caller("13700000003", day=TODAY)
        assert wang is not None and wang.service_tier is ServiceTier.OUT_OF_REGION
        assert li is not None and li.service_tier is ServiceTier.OUT_OF_REGION


async def test_seed_is_idempotent_and_reaims_personas(store: CifStore) -> None:
    later = TODAY + dt.timedelta(days=10)
    result = await seed(store, customers=50, today=later)
    assert (result.personas_added, result.synthetic_added, result.total_customers) == (0, 0, 54)
    wang = await store.lookup_by_caller("13800138000", day=later)
    assert wang is not None and wang.unpaid_bill is not None
    assert wang.unpaid_bill.due_date == later + dt.timedelta(days=3)
    zhao = await store.lookup_by_caller("13500000004", day=later)
    assert zhao is not None and zhao.calls_today == 3


async def test_pin_locks_after_three_failures(store: CifStore) -> None:
    wang = await store.lookup_by_caller("13800138000", day=TODAY)
    assert wang is not None and wang.customer is not None
    cid = wang.customer.id
    assert await store.verify_pin(cid, DEV_PIN)
    assert not await store.verify_pin(cid, "000000")
    assert not await store.verify_pin(cid, "12345x")
    assert (await store.pin_state(cid)).failures == 2
    assert await store.verify_pin(cid, DEV_PIN)  # a success resets the count
    assert (await store.pin_state(cid)).failures == 0
    for _ in range(3):
        assert not await store.verify_pin(cid, "999999")
    state = await store.pin_state(cid)
    assert state.locked and state.failures == 3
    assert not await store.verify_pin(cid, DEV_PIN)  # locked: even the right PIN fails
    locked = await store.lookup_by_caller("13800138000", day=TODAY)
    assert locked is not None and locked.pin_locked
    await store.unlock(cid)
    assert await store.verify_pin(cid, DEV_PIN)


async def test_card_lookup_by_full_number(store: CifStore) -> None:
    card = await store.card_by_number(PERSONA_CARDS["wang"])
    assert card is not None and card.kind == "credit"
    assert card.masked == "****" + PERSONA_CARDS["wang"][-4:]
    spaced = " ".join(PERSONA_CARDS["wang"][i : i + 4] for i in range(0, 16, 4))
    assert await store.card_by_number(spaced) == card
    with pytest.raises(InvalidCardNumber):
        await store.card_by_number(PERSONA_CARDS["wang"][:-1] + "0"
                                   if PERSONA_CARDS["wang"][-1] != "0" else "1")
    with pytest.raises(InvalidCardNumber):
        await store.card_by_number("1234")
    valid_unknown = "4111111111111111"
    assert await store.card_by_number(valid_unknown) is None


async def test_block_activate_and_requests(store: CifStore) -> None:
    wang = await store.lookup_by_caller("13800138000", day=TODAY)
    chen = await store.lookup_by_caller("13926000001", day=TODAY)
    assert wang is not None and chen is not None and wang.customer and chen.customer
    card = wang.cards[0]
    with pytest.raises(UnknownCard):  # not Chen's card
        await store.block_card(card.id, customer_id=chen.customer.id)
    assert (await store.activate_card(card.id)).status is CardStatus.ACTIVE  # already: no-op
    blocked = await store.block_card(card.id, customer_id=wang.customer.id)
    assert blocked.status is CardStatus.BLOCKED
    assert (await store.block_card(card.id)).status is CardStatus.BLOCKED  # idempotent
    with pytest.raises(CardStateError):
        await store.activate_card(card.id)
    with pytest.raises(CardStateError):
        await store.request_limit_raise(card.id, 10_000_000)
    # Instalment on Wang's unpaid statement (status does not matter for a filed request).
    req = await store.request_instalment(card.id, 6, customer_id=wang.customer.id)
    assert req.kind == "instalment" and req.months == 6 and req.amount_cents == 528_000
    with pytest.raises(InvalidRequest):
        await store.request_instalment(card.id, 5)
    with pytest.raises(InvalidRequest):
        await store.request_instalment(chen.cards[0].id, 6)  # a debit card

    zhao = await store.lookup_by_caller("13500000004", day=TODAY)
    assert zhao is not None
    zcard = zhao.cards[0]
    with pytest.raises(InvalidRequest):
        await store.request_limit_raise(zcard.id, zcard.credit_limit_cents)
    raised = await store.request_limit_raise(zcard.id, zcard.credit_limit_cents + 1_000_000)
    assert raised.kind == "limit_raise" and raised.status == "pending"


async def test_activate_inactive_card(store: CifStore) -> None:
    rows = await store._db.execute_fetchall("SELECT id FROM cards WHERE status = 'inactive'")
    if not rows:
        await store._db.execute("UPDATE cards SET status = 'inactive' WHERE id = 1")
        card_id = 1
    else:
        card_id = int(rows[0][0])
    assert (await store.activate_card(card_id)).status is CardStatus.ACTIVE


async def test_balance(store: CifStore) -> None:
    chen = await store.lookup_by_caller("13926000001", day=TODAY)
    assert chen is not None and chen.customer is not None
    accounts = await store.balance(chen.customer.id)
    assert len(accounts) == 1 and str(accounts[0].balance) == "2860000.00"
    assert accounts[0].masked == "****1001"


def _raw(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.is_file())


async def test_database_holds_no_pin_and_no_card_number(tmp_path: Path) -> None:
    path = tmp_path / "cif.sqlite3"
    async with await CifStore.open(path, pan_key=KEY) as s:
        await seed(s, customers=5, today=TODAY)
        wang = await s.lookup_by_caller("13800138000", day=TODAY)
        assert wang is not None and wang.customer is not None
        await s.set_pin(wang.customer.id, "482913")
        assert await s.verify_pin(wang.customer.id, "482913")
    raw = _raw(tmp_path)
    for card in PERSONA_CARDS.values():
        assert card.encode() not in raw
        assert card[-8:].encode() not in raw  # not even a long tail of it
    assert b"482913" not in raw
    assert DEV_PIN.encode() not in raw


async def test_schema_version_and_newer_db_refused(tmp_path: Path) -> None:
    path = tmp_path / "cif.sqlite3"
    async with await CifStore.open(path, pan_key=KEY):
        pass
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT component, version FROM schema_version").fetchall()
        assert rows == [("cif", m.version) for m in CIF_MIGRATIONS]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        future = CIF_MIGRATIONS[-1].version + 1
        conn.execute(
            "INSERT INTO schema_version VALUES ('cif', ?, 'from the future', '2030-01-01')",
            (future,),
        )
    with pytest.raises(SchemaTooNew, match="newer"):
        await CifStore.open(path, pan_key=KEY)


async def test_pan_key_file_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "cif.sqlite3"
    async with await CifStore.open(path) as s:
        h1 = s.pan_hash(PERSONA_CARDS["chen"])
    key_file = tmp_path / "cif.sqlite3.pan-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    async with await CifStore.open(path) as s:
        assert s.pan_hash(PERSONA_CARDS["chen"]) == h1  # same key reused


async def test_persona_numbers_cover_issue(store: CifStore) -> None:
    for name, number in PERSONA_NUMBERS.items():
        found = await store.lookup_by_caller(number, day=TODAY)
        assert (found is None) == (name == "shenzhen_landline")


async def test_safe_profile_degrades_instead_of_failing(tmp_path: Path) -> None:
    path = tmp_path / "cif.sqlite3"
    async with await CifStore.open(path, pan_key=KEY) as s:
        await seed(s, customers=0, today=TODAY)
        with sqlite3.connect(path) as conn:
            conn.execute("ALTER TABLE phones RENAME TO phones_gone")  # a broken CIF
        with pytest.raises(StoreError):
            await s.profile("13926000001")
        p = await s.safe_profile("13926000001")
        assert p.degraded and p.customer is None and p.service_tier is ServiceTier.UNKNOWN
        assert p.language is Language.CANTONESE  # the number still decides the language
