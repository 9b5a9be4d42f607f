"""The CIF store: customers, their phones, cards, accounts, bills, risk flags, call counts.

```
async with await CifStore.open("var/ivr-engine.sqlite3") as cif:
    profile = await cif.profile("13926000001")      # always a profile (tier unknown/anonymous)
    if profile.customer and await cif.verify_pin(profile.customer.id, keyed_pin):
        ...
```

Design notes
- A caller lookup is ONE SQL statement (JSON sub-selects for cards, bills, flags), so it costs
  one hop to the aiosqlite thread: well under a millisecond at 10,000 customers
  (`ivr-engine cif bench`).
- Full card numbers are never stored: a card is found by HMAC-SHA256(pan_key, number). The key
  is passed in, or kept in `<db>.pan-key` (mode 0600) next to the database. Someone holding the
  database alone cannot brute-force numbers from the hashes.
- PINs are salted scrypt hashes (`ivr_engine.cif.pin`), checked in a worker thread.
- "Today" (call counts) is the bank's day in China Standard Time (UTC+8, no DST) unless a tz
  is passed.
- Service tiers: vip > group > out_of_region > local. Out-of-region means the customer's home
  province differs from the bank's (`bank_province`, default "Beijing": the personas' bank is
  a Beijing-headquartered bank whose hotline serves the whole country). The home province
  comes from the CIF; when the CIF has none, the number's province stands in.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from ivr_engine.cif import schema
from ivr_engine.cif.counts import CallCounts
from ivr_engine.cif.errors import (
    CardStateError,
    CifError,
    InvalidCardNumber,
    InvalidRequest,
    UnknownCard,
    UnknownCustomer,
)
from ivr_engine.cif.masking import luhn_ok, mask_caller, mask_last4
from ivr_engine.cif.model import (
    Account,
    Bill,
    CallerProfile,
    Card,
    CardStatus,
    Customer,
    Language,
    RiskFlag,
    ServiceRequest,
    ServiceTier,
    Tier,
    Title,
)
from ivr_engine.cif.pin import check_pin, hash_pin
from ivr_engine.cif.sqlite import SqliteStore, open_database, store_errors
from ivr_engine.errors import StoreError
from ivr_engine.region import (
    Region,
    is_cantonese_region,
    normalise,
    normalise_province,
    parse_number,
    province_for_city,
    region_of,
)

log = logging.getLogger(__name__)

CHINA_TZ = dt.timezone(dt.timedelta(hours=8), "CST")
MAX_PIN_FAILURES = 3
INSTALMENT_TERMS = (3, 6, 12, 24)
MAX_CREDIT_LIMIT_CENTS = 100_000_000  # 1,000,000 yuan

_CUSTOMER_COLUMNS = (
    "c.id, c.cif_no, c.surname, c.surname_zh, c.given_name, c.title, c.tier,"
    " c.preferred_language, c.home_province, c.home_city, c.locked"
)

_LOOKUP_SQL = f"""
SELECT {_CUSTOMER_COLUMNS}, p.bound, p.verified,
  (SELECT json_group_array(json_array(k.id, k.kind, k.masked, k.last4, k.status,
                                      k.credit_limit_cents))
     FROM cards k WHERE k.customer_id = c.id) AS cards_json,
  (SELECT json_array(b.id, b.card_id, k.masked, b.statement_date, b.statement_cents,
                     b.minimum_cents, b.due_date)
     FROM cards k JOIN bills b ON b.card_id = k.id
    WHERE k.customer_id = c.id AND b.paid = 0
    ORDER BY b.due_date LIMIT 1) AS bill_json,
  (SELECT json_group_array(json_array(r.code, r.text))
     FROM risk_flags r WHERE r.customer_id = c.id AND r.active = 1) AS risks_json,
  (SELECT json_group_array(pr.name) FROM products pr WHERE pr.customer_id = c.id)
     AS products_json,
  (SELECT cc.count FROM call_counts cc WHERE cc.customer_id = c.id AND cc.day = ?) AS calls_today
FROM phones p JOIN customers c ON c.id = p.customer_id
WHERE p.number = ?
"""


# --- input records (seed, import) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewBill:
    statement_date: dt.date
    statement_cents: int
    minimum_cents: int
    due_date: dt.date
    paid: bool = False


@dataclass(frozen=True, slots=True)
class NewCard:
    number: str  # the full number: hashed and masked on insert, never stored
    kind: str = "debit"
    status: CardStatus = CardStatus.ACTIVE
    credit_limit_cents: int = 0
    bills: tuple[NewBill, ...] = ()


@dataclass(frozen=True, slots=True)
class NewAccount:
    number: str  # masked on insert
    kind: str = "savings"
    balance_cents: int = 0
    eod_balance_cents: int | None = None
    currency: str = "CNY"


@dataclass(frozen=True, slots=True)
class NewPhone:
    number: str
    bound: bool = True
    verified: bool = True


@dataclass(frozen=True, slots=True)
class NewCustomer:
    cif_no: str
    surname: str
    title: Title
    tier: Tier
    surname_zh: str = ""
    given_name: str = ""
    preferred_language: Language | None = None
    home_province: str | None = None
    home_city: str | None = None
    pin_hash: str | None = None
    phones: tuple[NewPhone, ...] = ()
    cards: tuple[NewCard, ...] = ()
    accounts: tuple[NewAccount, ...] = ()
    risk_flags: tuple[tuple[str, str], ...] = ()
    products: tuple[tuple[str, str], ...] = ()
    call_counts: tuple[tuple[dt.date, int], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class PinState:
    has_pin: bool
    failures: int
    locked: bool


# --- pure helpers ---------------------------------------------------------------------------


def compute_service_tier(
    customer: Customer | None, number_region: Region, *, bank_province: str
) -> ServiceTier:
    if customer is None:
        return ServiceTier.UNKNOWN if number_region.known else ServiceTier.ANONYMOUS
    if customer.tier is Tier.VIP:
        return ServiceTier.VIP
    if customer.tier is Tier.GROUP:
        return ServiceTier.GROUP
    home = (
        normalise_province(customer.home_province)
        or province_for_city(customer.home_city)
        or number_region.province
        or None
    )
    bank = normalise_province(bank_province) or bank_province
    if home and home != bank:
        return ServiceTier.OUT_OF_REGION
    return ServiceTier.LOCAL


def resolve_language(customer: Customer | None, number_region: Region) -> Language:
    """Stated preference > the number's region > the customer's home region > Mandarin."""
    if customer is not None and customer.preferred_language is not None:
        return customer.preferred_language
    if number_region.province:
        return Language.CANTONESE if number_region.is_cantonese_region else Language.MANDARIN
    if customer is not None and is_cantonese_region(
        customer.home_province or province_for_city(customer.home_city)
    ):
        return Language.CANTONESE
    return Language.MANDARIN


def card_digits(number: str) -> str:
    """A keyed card number -> its digits, or InvalidCardNumber (never echoing the number)."""
    digits = "".join(ch for ch in str(number) if ch not in " -")
    if not digits.isascii() or not digits.isdigit() or not 13 <= len(digits) <= 19:
        raise InvalidCardNumber("a card number has 13 to 19 digits")
    if not luhn_ok(digits):
        raise InvalidCardNumber("the card number fails the check digit (Luhn)")
    return digits


def _customer_from_row(row: sqlite3.Row | tuple[Any, ...]) -> Customer:
    return Customer(
        id=int(row[0]),
        cif_no=str(row[1]),
        surname=str(row[2]),
        surname_zh=str(row[3]),
        given_name=str(row[4]),
        title=Title(row[5]),
        tier=Tier(row[6]),
        preferred_language=Language(row[7]) if row[7] else None,
        home_province=row[8],
        home_city=row[9],
        locked=bool(row[10]),
    )


def _card_from_row(row: Sequence[Any], customer_id: int) -> Card:
    return Card(
        id=int(row[0]),
        customer_id=customer_id,
        kind=str(row[1]),
        masked=str(row[2]),
        last4=str(row[3]),
        status=CardStatus(row[4]),
        credit_limit_cents=int(row[5]),
    )


def _load_pan_key(db_path: Path) -> bytes:
    """The per-installation key for card-number hashes, created on first use (mode 0600)."""
    key_path = db_path.with_name(db_path.name + ".pan-key")
    try:
        data = key_path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        try:
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return _load_pan_key(db_path)
        except OSError as exc:
            raise StoreError(
                f"cannot create the card-number key {key_path}: {exc.strerror}"
            ) from exc
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.hex().encode())
        return key
    except OSError as exc:
        raise StoreError(f"cannot read the card-number key {key_path}: {exc.strerror}") from exc
    try:
        key = bytes.fromhex(data.decode().strip())
    except ValueError:
        key = b""
    if len(key) < 16:
        raise StoreError(f"{key_path}: not a card-number key (expected at least 32 hex digits)")
    return key


async def _connect(
    path: Path, busy_timeout: float, *, query_only: bool = False
) -> aiosqlite.Connection:
    """A further connection to a CIF file `open_database` has already migrated."""
    db = await aiosqlite.connect(str(path), timeout=busy_timeout, isolation_level=None)
    try:
        db.row_factory = sqlite3.Row
        async with store_errors(f"CIF store {path}: cannot set up"):
            await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            await db.execute("PRAGMA foreign_keys = ON")
            if query_only:
                await db.execute("PRAGMA query_only = ON")
    except BaseException:
        await db.close()
        raise
    return db


# --- the store --------------------------------------------------------------------------------


class CifStore(SqliteStore):
    """The CIF on one SQLite file, over three connections (each is one aiosqlite thread, and a
    statement waiting on SQLite's busy timeout holds its thread):

    - `_reader` (query_only) answers the caller lookup (`profile`, `balance`): in WAL mode a
      reader never waits on a writer, so a locked database cannot delay a greeting;
    - `_db` does everything else, reads and writes of the self-services;
    - the call counts' own connection (opened by their writer task when first needed) writes
      today's call counts in the background (`count_call`, `ivr_engine.cif.counts`).
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
        *,
        path: Path,
        pan_key: bytes,
        bank_province: str = "Beijing",
        tz: dt.tzinfo = CHINA_TZ,
        read_timeout: float = 2.0,
        reader: aiosqlite.Connection | None = None,
        busy_timeout: float = 5.0,
    ) -> None:
        self._db = db
        self._reader = reader or db
        self.path = path
        self._pan_key = pan_key
        self.bank_province = normalise_province(bank_province) or bank_province
        self._tz = tz
        self._write_lock = asyncio.Lock()
        self.read_timeout = read_timeout
        self._busy_timeout = busy_timeout
        self._counts_db: aiosqlite.Connection | None = None
        self.counts = CallCounts(self._write_counts)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        pan_key: bytes | None = None,
        bank_province: str = "Beijing",
        tz: dt.tzinfo = CHINA_TZ,
        busy_timeout: float = 5.0,
        read_timeout: float = 2.0,
    ) -> CifStore:
        p = Path(path)
        db = await open_database(p, schema.COMPONENT, schema.MIGRATIONS, busy_timeout=busy_timeout)
        reader: aiosqlite.Connection | None = None
        try:
            key = pan_key if pan_key is not None else await asyncio.to_thread(_load_pan_key, p)
            reader = await _connect(p, busy_timeout, query_only=True)
        except BaseException:
            if reader is not None:
                await reader.close()
            await db.close()
            raise
        return cls(
            db, path=p, pan_key=key, bank_province=bank_province, tz=tz,
            read_timeout=read_timeout, reader=reader, busy_timeout=busy_timeout,
        )

    async def close(self) -> None:
        """Write the call counts still buffered (bounded by the busy timeout), then close."""
        try:
            await self.counts.aclose(flush_timeout=self._busy_timeout + 1.0)
        finally:
            for conn in (self._counts_db, self._reader if self._reader is not self._db else None):
                if conn is not None:
                    await conn.close()
            self._counts_db = None
            await self._db.close()

    def today(self) -> dt.date:
        return dt.datetime.now(self._tz).date()

    def pan_hash(self, number: str) -> str:
        return hmac.new(self._pan_key, card_digits(number).encode(), hashlib.sha256).hexdigest()

    # --- lookups ---------------------------------------------------------------------------

    async def profile(self, number: str | None, *, day: dt.date | None = None) -> CallerProfile:
        """The caller's profile; for a number the CIF does not know, tier unknown/anonymous."""
        region = region_of(number)
        e164 = normalise(number) if region.known else None
        row = None
        if e164 is not None:
            day_s = (day or self.today()).isoformat()
            try:
                async with asyncio.timeout(self.read_timeout), store_errors("CIF lookup"):
                    # execute_fetchall: one hop to the database thread instead of three.
                    rows = await self._reader.execute_fetchall(_LOOKUP_SQL, (day_s, e164))
            except TimeoutError:
                raise StoreError(f"CIF lookup: no answer within {self.read_timeout}s") from None
            row = next(iter(rows), None)
        masked = mask_caller(e164 or number)
        if row is None:
            return self._unknown(masked, region)
        found = self._from_row(row, masked, region)
        if found.customer is not None and e164 is not None:
            # calls noted but not yet written (a locked database) count as well
            unwritten = self.counts.pending(found.customer.id, day_s)
            if unwritten:
                found = dataclasses.replace(found, calls_today=found.calls_today + unwritten)
        return found

    async def safe_profile(
        self, number: str | None, *, day: dt.date | None = None
    ) -> CallerProfile:
        """`profile()` that never fails a call: if the CIF cannot answer (locked, disk error,
        timeout) the caller is served as unknown, with `degraded=True`, and it is logged."""
        try:
            return await self.profile(number, day=day)
        except StoreError as exc:
            log.error("CIF unavailable, caller %s served as unknown: %s",
                      mask_caller(number), exc)
            return dataclasses.replace(
                self._unknown(mask_caller(number), region_of(number)), degraded=True
            )

    def _unknown(self, masked: str, region: Region) -> CallerProfile:
        return CallerProfile(
            number_masked=masked,
            region=region,
            customer=None,
            service_tier=compute_service_tier(None, region, bank_province=self.bank_province),
            language=resolve_language(None, region),
            bound=False,
            verified_number=False,
            unpaid_bill=None,
            risk_flags=(),
            calls_today=0,
            cards=(),
            products=(),
        )

    def _from_row(self, row: sqlite3.Row, masked: str, region: Region) -> CallerProfile:
        customer = _customer_from_row(row)
        cards = tuple(_card_from_row(c, customer.id) for c in json.loads(row["cards_json"]))
        bill = None
        if row["bill_json"]:
            b = json.loads(row["bill_json"])
            bill = Bill(
                id=int(b[0]),
                card_id=int(b[1]),
                card_masked=str(b[2]),
                statement_date=dt.date.fromisoformat(b[3]),
                statement_cents=int(b[4]),
                minimum_cents=int(b[5]),
                due_date=dt.date.fromisoformat(b[6]),
                paid=False,
            )
        return CallerProfile(
            number_masked=masked,
            region=region,
            customer=customer,
            service_tier=compute_service_tier(customer, region, bank_province=self.bank_province),
            language=resolve_language(customer, region),
            bound=bool(row["bound"]),
            verified_number=bool(row["verified"]),
            unpaid_bill=bill,
            risk_flags=tuple(RiskFlag(str(c), str(t)) for c, t in json.loads(row["risks_json"])),
            calls_today=int(row["calls_today"] or 0),
            cards=cards,
            products=tuple(str(p) for p in json.loads(row["products_json"])),
        )

    async def lookup_by_caller(
        self, number: str | None, *, day: dt.date | None = None
    ) -> CallerProfile | None:
        """The profile of the customer this number is registered to, or None."""
        found = await self.profile(number, day=day)
        return found if found.customer is not None else None

    async def customer(self, customer_id: int) -> Customer:
        async with store_errors("CIF customer"):
            async with self._db.execute(
                f"SELECT {_CUSTOMER_COLUMNS} FROM customers c WHERE c.id = ?", (customer_id,)
            ) as cur:
                row = await cur.fetchone()
        if row is None:
            raise UnknownCustomer(f"no customer with id {customer_id}")
        return _customer_from_row(row)

    async def customer_by_cif_no(self, cif_no: str) -> Customer | None:
        async with store_errors("CIF customer"):
            async with self._db.execute(
                f"SELECT {_CUSTOMER_COLUMNS} FROM customers c WHERE c.cif_no = ?", (cif_no,)
            ) as cur:
                row = await cur.fetchone()
        return _customer_from_row(row) if row else None

    async def count_customers(self) -> int:
        async with store_errors("CIF count"):
            async with self._db.execute("SELECT count(*) FROM customers") as cur:
                row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def cards(self, customer_id: int) -> list[Card]:
        async with store_errors("CIF cards"):
            async with self._db.execute(
                "SELECT id, kind, masked, last4, status, credit_limit_cents FROM cards"
                " WHERE customer_id = ? ORDER BY id",
                (customer_id,),
            ) as cur:
                rows = await cur.fetchall()
        return [_card_from_row(r, customer_id) for r in rows]

    async def card(self, card_id: int, *, customer_id: int | None = None) -> Card:
        """A card by id; with `customer_id`, only if it belongs to that customer."""
        async with store_errors("CIF card"):
            async with self._db.execute(
                "SELECT id, kind, masked, last4, status, credit_limit_cents, customer_id"
                " FROM cards WHERE id = ?",
                (card_id,),
            ) as cur:
                row = await cur.fetchone()
        if row is None or (customer_id is not None and int(row[6]) != customer_id):
            raise UnknownCard(f"no card {card_id}" + (f" for customer {customer_id}"
                                                      if customer_id is not None else ""))
        return _card_from_row(row, int(row[6]))

    async def card_by_last4(self, customer_id: int, last4: str) -> Card | None:
        for card in await self.cards(customer_id):
            if card.last4 == last4:
                return card
        return None

    async def card_by_number(self, full_number: str) -> Card | None:
        """The card a caller keyed in full; InvalidCardNumber if it is not a card number."""
        digest = self.pan_hash(full_number)
        async with store_errors("CIF card lookup"):
            async with self._db.execute(
                "SELECT id, kind, masked, last4, status, credit_limit_cents, customer_id"
                " FROM cards WHERE pan_hash = ?",
                (digest,),
            ) as cur:
                row = await cur.fetchone()
        return _card_from_row(row, int(row[6])) if row else None

    async def balance(self, customer_id: int) -> list[Account]:
        async with store_errors("CIF balance"):
            # execute_fetchall: one hop to the database thread instead of three (execute,
            # fetchall, close): on the greeting's path at hundreds of calls a second.
            rows = await self._reader.execute_fetchall(
                "SELECT id, kind, masked, currency, balance_cents, eod_balance_cents"
                " FROM accounts WHERE customer_id = ? ORDER BY id",
                (customer_id,),
            )
        if not rows:
            await self.customer(customer_id)  # UnknownCustomer if there is no such customer
        return [
            Account(
                id=int(r[0]),
                customer_id=customer_id,
                kind=str(r[1]),
                masked=str(r[2]),
                currency=str(r[3]),
                balance_cents=int(r[4]),
                eod_balance_cents=int(r[5]),
            )
            for r in rows
        ]

    async def unpaid_bills(self, customer_id: int) -> list[Bill]:
        async with store_errors("CIF bills"):
            async with self._db.execute(
                "SELECT b.id, b.card_id, k.masked, b.statement_date, b.statement_cents,"
                " b.minimum_cents, b.due_date FROM cards k JOIN bills b ON b.card_id = k.id"
                " WHERE k.customer_id = ? AND b.paid = 0 ORDER BY b.due_date",
                (customer_id,),
            ) as cur:
                rows = await cur.fetchall()
        return [
            Bill(
                id=int(r[0]),
                card_id=int(r[1]),
                card_masked=str(r[2]),
                statement_date=dt.date.fromisoformat(r[3]),
                statement_cents=int(r[4]),
                minimum_cents=int(r[5]),
                due_date=dt.date.fromisoformat(r[6]),
                paid=False,
            )
            for r in rows
        ]

    async def debit(
        self,
        customer_id: int,
        amount_cents: int,
        *,
        kind: str,
        counterparty_last4: str = "",
    ) -> str:
        """Pay `amount_cents` out of the customer's first account (a transfer or a wealth
        purchase the caller confirmed); returns the payment reference. Refuses an amount the
        balance does not cover. Only the counterparty's last 4 digits are kept."""
        if kind not in {"transfer", "wealth_purchase"}:
            raise InvalidRequest(f"unknown payment kind {kind!r}")
        if not isinstance(amount_cents, int) or isinstance(amount_cents, bool) or amount_cents <= 0:
            raise InvalidRequest("the amount must be a positive whole number of cents")
        last4_ok = counterparty_last4.isdigit() and len(counterparty_last4) == 4
        if counterparty_last4 and not last4_ok:
            raise InvalidRequest("only the last 4 digits of the counterparty are kept")
        async with self._write_lock, store_errors(f"CIF {kind}"):
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                async with self._db.execute(
                    "SELECT id, balance_cents FROM accounts WHERE customer_id = ?"
                    " ORDER BY id LIMIT 1",
                    (customer_id,),
                ) as cur:
                    row = await cur.fetchone()
                if row is None:
                    raise InvalidRequest(f"customer {customer_id} has no account")
                if int(row[1]) < amount_cents:
                    raise InvalidRequest("the balance does not cover the amount")
                await self._db.execute(
                    "UPDATE accounts SET balance_cents = balance_cents - ? WHERE id = ?",
                    (amount_cents, row[0]),
                )
                async with self._db.execute(
                    "INSERT INTO payments (customer_id, account_id, kind, amount_cents,"
                    " counterparty_last4) VALUES (?, ?, ?, ?, ?) RETURNING id",
                    (customer_id, row[0], kind, amount_cents, counterparty_last4),
                ) as cur:
                    pay = await cur.fetchone()
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise
        if pay is None:
            raise StoreError(f"CIF {kind}: no row returned")
        prefix = "T" if kind == "transfer" else "W"
        return f"{prefix}-{int(pay[0]):06d}"

    # --- PIN ---------------------------------------------------------------------------------

    async def pin_state(self, customer_id: int) -> PinState:
        async with store_errors("CIF PIN state"):
            async with self._db.execute(
                "SELECT pin_hash IS NOT NULL, pin_failures, locked FROM customers WHERE id = ?",
                (customer_id,),
            ) as cur:
                row = await cur.fetchone()
        if row is None:
            raise UnknownCustomer(f"no customer with id {customer_id}")
        return PinState(has_pin=bool(row[0]), failures=int(row[1]), locked=bool(row[2]))

    async def verify_pin(self, customer_id: int, pin: str) -> bool:
        """Check the phone-banking PIN. A wrong PIN counts a failure; the third consecutive
        failure locks the customer (`PinState.locked`, `Customer.locked`); a locked customer
        never verifies. A right PIN resets the count. The PIN is never logged."""
        async with store_errors("CIF PIN check"):
            async with self._db.execute(
                "SELECT pin_hash, locked FROM customers WHERE id = ?", (customer_id,)
            ) as cur:
                row = await cur.fetchone()
        if row is None:
            raise UnknownCustomer(f"no customer with id {customer_id}")
        stored, locked = row[0], bool(row[1])
        # The hash runs even when locked or unset, so timing does not reveal either.
        ok = await asyncio.to_thread(check_pin, pin, stored)
        if locked:
            log.info("PIN check refused: customer %d is locked", customer_id)
            return False
        async with self._write_lock, store_errors("CIF PIN update"):
            if ok:
                await self._db.execute(
                    "UPDATE customers SET pin_failures = 0 WHERE id = ?", (customer_id,)
                )
                return True
            async with self._db.execute(
                "UPDATE customers SET pin_failures = pin_failures + 1,"
                " locked = CASE WHEN pin_failures + 1 >= ? THEN 1 ELSE locked END"
                " WHERE id = ? RETURNING pin_failures, locked",
                (MAX_PIN_FAILURES, customer_id),
            ) as cur:
                upd = await cur.fetchone()
        if upd is not None and upd[1]:
            log.warning(
                "customer %d locked after %d wrong PINs", customer_id, int(upd[0])
            )
        return False

    async def set_pin(self, customer_id: int, pin: str) -> None:
        """Set a new PIN (hashed) and clear failures and the lock."""
        hashed = await asyncio.to_thread(hash_pin, pin)
        async with self._write_lock, store_errors("CIF set PIN"):
            cur = await self._db.execute(
                "UPDATE customers SET pin_hash = ?, pin_failures = 0, locked = 0 WHERE id = ?",
                (hashed, customer_id),
            )
            if cur.rowcount != 1:
                raise UnknownCustomer(f"no customer with id {customer_id}")

    async def unlock(self, customer_id: int) -> None:
        async with self._write_lock, store_errors("CIF unlock"):
            cur = await self._db.execute(
                "UPDATE customers SET pin_failures = 0, locked = 0 WHERE id = ?", (customer_id,)
            )
            if cur.rowcount != 1:
                raise UnknownCustomer(f"no customer with id {customer_id}")

    # --- calls today -------------------------------------------------------------------------

    def count_call(self, customer_id: int, day: dt.date | None = None) -> None:
        """Count one more call today, without waiting: written in the background (a caller's
        lookup never waits on a write); `profile()` includes it at once."""
        self.counts.add(customer_id, (day or self.today()).isoformat())

    async def _write_counts(self, rows: list[tuple[int, str, int]]) -> None:
        """CallCounts' writer: one transaction on the counts' own connection. A row for a
        customer that no longer exists is dropped (logged), not retried for ever."""
        async with store_errors("CIF call counts"):
            if self._counts_db is None:
                self._counts_db = await _connect(self.path, self._busy_timeout)
            db = self._counts_db
            await db.execute("BEGIN IMMEDIATE")
            try:
                for customer_id, day, n in rows:
                    try:
                        await db.execute(
                            "INSERT INTO call_counts (customer_id, day, count) VALUES (?, ?, ?)"
                            " ON CONFLICT (customer_id, day) DO UPDATE SET count = count + ?",
                            (customer_id, day, n, n),
                        )
                    except sqlite3.IntegrityError:
                        log.warning("call count of unknown customer %d dropped", customer_id)
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(Exception):
                        await db.execute("ROLLBACK")
                raise

    async def record_call(self, customer_id: int, day: dt.date | None = None) -> int:
        """Count one more call today for the customer, now; returns the new count (CLI and
        tools; a call in progress uses `count_call`)."""
        async with self._write_lock, store_errors("CIF call count"):
            try:
                async with self._db.execute(
                    "INSERT INTO call_counts (customer_id, day, count) VALUES (?, ?, 1)"
                    " ON CONFLICT (customer_id, day) DO UPDATE SET count = count + 1"
                    " RETURNING count",
                    (customer_id, (day or self.today()).isoformat()),
                ) as cur:
                    row = await cur.fetchone()
            except sqlite3.IntegrityError as exc:
                raise UnknownCustomer(f"no customer with id {customer_id}") from exc
        if row is None:
            raise StoreError("CIF call count: no row returned")
        return int(row[0])

    async def set_call_count(self, customer_id: int, day: dt.date, count: int) -> None:
        """Set the day's call count (seeding, corrections)."""
        if count < 0:
            raise InvalidRequest("a call count cannot be negative")
        async with self._write_lock, store_errors("CIF call count"):
            await self._db.execute(
                "INSERT INTO call_counts (customer_id, day, count) VALUES (?, ?, ?)"
                " ON CONFLICT (customer_id, day) DO UPDATE SET count = excluded.count",
                (customer_id, day.isoformat(), count),
            )

    async def reset_unpaid_bill(
        self,
        customer_id: int,
        *,
        statement_date: dt.date,
        due_date: dt.date,
        statement_cents: int,
        minimum_cents: int,
    ) -> None:
        """Make the customer's first credit card carry exactly one unpaid statement (demo data)."""
        credit = [c for c in await self.cards(customer_id) if c.kind == "credit"]
        if not credit:
            raise InvalidRequest(f"customer {customer_id} has no credit card")
        card_id = credit[0].id
        async with self._write_lock, store_errors("CIF reset bill"):
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                await self._db.execute("DELETE FROM bills WHERE card_id = ? AND paid = 0",
                                       (card_id,))
                await self._db.execute(
                    "INSERT INTO bills (card_id, statement_date, statement_cents, minimum_cents,"
                    " due_date, paid) VALUES (?, ?, ?, ?, ?, 0)",
                    (card_id, statement_date.isoformat(), statement_cents, minimum_cents,
                     due_date.isoformat()),
                )
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise

    # --- card services -----------------------------------------------------------------------

    async def _set_card_status(
        self,
        card_id: int,
        new: CardStatus,
        allowed_from: frozenset[CardStatus],
        *,
        customer_id: int | None,
        what: str,
    ) -> Card:
        async with self._write_lock:
            card = await self.card(card_id, customer_id=customer_id)
            if card.status is new:
                return card
            if card.status not in allowed_from:
                raise CardStateError(f"cannot {what} card {card.masked}: it is {card.status}")
            async with store_errors(f"CIF {what} card"):
                await self._db.execute(
                    "UPDATE cards SET status = ?, updated_at = strftime('%Y-%m-%dT%H:%M:%SZ',"
                    " 'now') WHERE id = ? AND status = ?",
                    (str(new), card_id, str(card.status)),
                )
        log.info("card %s of customer %d: %s -> %s", card.masked, card.customer_id,
                 card.status, new)
        return await self.card(card_id)

    async def block_card(self, card_id: int, *, customer_id: int | None = None) -> Card:
        """Report loss: block at once. Blocking a blocked card is a no-op."""
        return await self._set_card_status(
            card_id,
            CardStatus.BLOCKED,
            frozenset({CardStatus.ACTIVE, CardStatus.INACTIVE}),
            customer_id=customer_id,
            what="block",
        )

    async def activate_card(self, card_id: int, *, customer_id: int | None = None) -> Card:
        """Activate a new (inactive) card. A blocked or cancelled card cannot be activated."""
        return await self._set_card_status(
            card_id,
            CardStatus.ACTIVE,
            frozenset({CardStatus.INACTIVE}),
            customer_id=customer_id,
            what="activate",
        )

    async def cancel_card(self, card_id: int, *, customer_id: int | None = None) -> Card:
        return await self._set_card_status(
            card_id,
            CardStatus.CANCELLED,
            frozenset({CardStatus.ACTIVE, CardStatus.INACTIVE, CardStatus.BLOCKED}),
            customer_id=customer_id,
            what="cancel",
        )

    async def _insert_request(
        self, card: Card, kind: str, amount_cents: int | None, months: int | None
    ) -> ServiceRequest:
        async with self._write_lock, store_errors(f"CIF {kind} request"):
            async with self._db.execute(
                "INSERT INTO service_requests (customer_id, card_id, kind, amount_cents, months)"
                " VALUES (?, ?, ?, ?, ?) RETURNING id, status, created_at",
                (card.customer_id, card.id, kind, amount_cents, months),
            ) as cur:
                row = await cur.fetchone()
        if row is None:
            raise StoreError(f"CIF {kind} request: no row returned")
        return ServiceRequest(
            id=int(row[0]),
            customer_id=card.customer_id,
            card_id=card.id,
            kind=kind,
            amount_cents=amount_cents,
            months=months,
            status=str(row[1]),
            created_at=str(row[2]),
        )

    async def request_limit_raise(
        self, card_id: int, new_limit_cents: int, *, customer_id: int | None = None
    ) -> ServiceRequest:
        """File a credit-limit raise for review (the decision is not the IVR's)."""
        card = await self.card(card_id, customer_id=customer_id)
        if card.kind != "credit":
            raise InvalidRequest(f"card {card.masked} is not a credit card")
        if card.status is not CardStatus.ACTIVE:
            raise CardStateError(f"card {card.masked} is {card.status}")
        if not isinstance(new_limit_cents, int) or isinstance(new_limit_cents, bool):
            raise InvalidRequest("the new limit must be a whole number of cents")
        if new_limit_cents <= card.credit_limit_cents:
            raise InvalidRequest("the new limit must be above the current limit")
        if new_limit_cents > MAX_CREDIT_LIMIT_CENTS:
            raise InvalidRequest("the new limit is above what the hotline may request")
        return await self._insert_request(card, "limit_raise", new_limit_cents, None)

    async def request_instalment(
        self,
        card_id: int,
        months: int,
        *,
        amount_cents: int | None = None,
        customer_id: int | None = None,
    ) -> ServiceRequest:
        """Ask to repay the card's oldest unpaid statement over `months` (3, 6, 12, 24)."""
        if months not in INSTALMENT_TERMS:
            raise InvalidRequest(f"instalment terms are {', '.join(map(str, INSTALMENT_TERMS))}"
                                 " months")
        card = await self.card(card_id, customer_id=customer_id)
        if card.kind != "credit":
            raise InvalidRequest(f"card {card.masked} is not a credit card")
        bills = [b for b in await self.unpaid_bills(card.customer_id) if b.card_id == card.id]
        if not bills:
            raise InvalidRequest(f"card {card.masked} has no unpaid statement")
        bill = bills[0]
        amount = bill.statement_cents if amount_cents is None else amount_cents
        if not 0 < amount <= bill.statement_cents:
            raise InvalidRequest("the instalment amount must be positive and at most the statement")
        return await self._insert_request(card, "instalment", amount, months)

    # --- loading -----------------------------------------------------------------------------

    async def existing(
        self, cif_nos: Iterable[str], numbers: Iterable[str]
    ) -> tuple[set[str], set[str]]:
        """Which of these customer numbers and (E.164) phone numbers are already taken."""
        taken_cif: set[str] = set()
        taken_phone: set[str] = set()
        async with store_errors("CIF existing"):
            for values, sql, out in (
                (list(cif_nos), "SELECT cif_no FROM customers WHERE cif_no IN ", taken_cif),
                (list(numbers), "SELECT number FROM phones WHERE number IN ", taken_phone),
            ):
                for i in range(0, len(values), 500):
                    chunk = values[i : i + 500]
                    marks = ",".join("?" * len(chunk))
                    async with self._db.execute(f"{sql}({marks})", chunk) as cur:
                        out.update(str(r[0]) for r in await cur.fetchall())
        return taken_cif, taken_phone

    async def add_customers(self, customers: Sequence[NewCustomer]) -> list[int]:
        """Insert customers with everything they hold, in one transaction; returns their ids.

        Phone numbers must be valid (normalised to E.164); card numbers must pass Luhn. A
        duplicate customer number or phone raises CifError and nothing is inserted.
        """
        rows = _Rows()
        for new in customers:
            rows.validate(new, self)
        async with self._write_lock, store_errors("CIF add customers"):
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                async with self._db.execute("SELECT COALESCE(MAX(id), 0) FROM customers") as cur:
                    r = await cur.fetchone()
                async with self._db.execute("SELECT COALESCE(MAX(id), 0) FROM cards") as cur:
                    rc = await cur.fetchone()
                ids = rows.assign(int(r[0]) if r else 0, int(rc[0]) if rc else 0, customers)
                for sql, params in rows.statements():
                    if params:
                        await self._db.executemany(sql, params)
                await self._db.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                await self._db.execute("ROLLBACK")
                raise CifError(f"cannot add customers: {exc}") from exc
            except BaseException:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise
        return ids


class _Rows:
    """Turns NewCustomer records into executemany parameter lists with pre-assigned ids."""

    def __init__(self) -> None:
        self.customers: list[tuple[Any, ...]] = []
        self.phones: list[tuple[Any, ...]] = []
        self.cards: list[tuple[Any, ...]] = []
        self.bills: list[tuple[Any, ...]] = []
        self.accounts: list[tuple[Any, ...]] = []
        self.risks: list[tuple[Any, ...]] = []
        self.products: list[tuple[Any, ...]] = []
        self.calls: list[tuple[Any, ...]] = []
        self._phones: dict[int, list[tuple[str, bool, bool]]] = {}
        self._cards: dict[int, list[tuple[str, NewCard]]] = {}

    def validate(self, new: NewCustomer, store: CifStore) -> None:
        phones = []
        for ph in new.phones:
            e164 = normalise(ph.number)
            if e164 is None or parse_number(ph.number) is None:
                raise CifError(f"customer {new.cif_no}: not a valid phone number: "
                               f"{mask_caller(ph.number)}")
            phones.append((e164, ph.bound, ph.verified))
        self._phones[id(new)] = phones
        self._cards[id(new)] = [(store.pan_hash(c.number), c) for c in new.cards]

    def assign(
        self, max_customer: int, max_card: int, customers: Sequence[NewCustomer]
    ) -> list[int]:
        ids: list[int] = []
        cust_id, card_id = max_customer, max_card
        for new in customers:
            cust_id += 1
            ids.append(cust_id)
            self.customers.append((
                cust_id, new.cif_no, new.surname, new.surname_zh, new.given_name, str(new.title),
                str(new.tier), str(new.preferred_language) if new.preferred_language else None,
                normalise_province(new.home_province) or new.home_province, new.home_city,
                new.pin_hash,
            ))
            for e164, bound, verified in self._phones[id(new)]:
                self.phones.append((e164, cust_id, int(bound), int(verified)))
            for digest, card in self._cards[id(new)]:
                card_id += 1
                digits = card_digits(card.number)
                self.cards.append((
                    card_id, cust_id, card.kind, mask_last4(digits), digits[-4:], digest,
                    str(card.status), card.credit_limit_cents,
                ))
                for b in card.bills:
                    self.bills.append((
                        card_id, b.statement_date.isoformat(), b.statement_cents,
                        b.minimum_cents, b.due_date.isoformat(), int(b.paid),
                    ))
            for acc in new.accounts:
                eod = acc.balance_cents if acc.eod_balance_cents is None else acc.eod_balance_cents
                self.accounts.append((
                    cust_id, acc.kind, mask_last4(acc.number), acc.currency, acc.balance_cents, eod,
                ))
            for code, text in new.risk_flags:
                self.risks.append((cust_id, code, text))
            for code, name in new.products:
                self.products.append((cust_id, code, name))
            for day, count in new.call_counts:
                self.calls.append((cust_id, day.isoformat(), count))
        return ids

    def statements(self) -> list[tuple[str, list[tuple[Any, ...]]]]:
        return [
            (
                "INSERT INTO customers (id, cif_no, surname, surname_zh, given_name, title, tier,"
                " preferred_language, home_province, home_city, pin_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self.customers,
            ),
            ("INSERT INTO phones (number, customer_id, bound, verified) VALUES (?, ?, ?, ?)",
             self.phones),
            (
                "INSERT INTO cards (id, customer_id, kind, masked, last4, pan_hash, status,"
                " credit_limit_cents) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                self.cards,
            ),
            (
                "INSERT INTO bills (card_id, statement_date, statement_cents, minimum_cents,"
                " due_date, paid) VALUES (?, ?, ?, ?, ?, ?)",
                self.bills,
            ),
            (
                "INSERT INTO accounts (customer_id, kind, masked, currency, balance_cents,"
                " eod_balance_cents) VALUES (?, ?, ?, ?, ?, ?)",
                self.accounts,
            ),
            ("INSERT INTO risk_flags (customer_id, code, text) VALUES (?, ?, ?)", self.risks),
            ("INSERT INTO products (customer_id, code, name) VALUES (?, ?, ?)", self.products),
            ("INSERT INTO call_counts (customer_id, day, count) VALUES (?, ?, ?)", self.calls),
        ]
