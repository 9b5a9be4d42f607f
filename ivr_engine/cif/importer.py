"""`ivr-engine cif import FILE.csv`: load customers, reporting bad rows precisely.

One row per customer (UTF-8, a BOM is fine; header row required; column order free):

| column             | required | values                                                    |
|--------------------|----------|-----------------------------------------------------------|
| cif_no             | yes      | the bank's customer number, unique                        |
| surname            | yes      | romanised, e.g. Chen                                      |
| surname_zh         |          | e.g. 陈 (greeting "陈先生")                                |
| given_name         |          |                                                           |
| title              | yes      | mr / ms                                                   |
| tier               | yes      | vip / group / standard                                    |
| preferred_language |          | cmn / yue / en (empty: decided by region)                 |
| home_province      |          | English or Chinese name (Guangdong, 广东省)               |
| home_city          |          | if the province is empty, the city's province is used     |
| phones             | yes      | one or more numbers separated by `;`                      |
| bound              |          | yes/no (caller-ID binding, default yes)                   |
| pin                |          | 4-12 digits, hashed on import (~60 ms each), never stored |
| card_number        |          | full number, Luhn-checked; stored only masked + HMAC      |
| card_kind          |          | credit / debit (default debit)                            |
| card_status        |          | active / inactive / blocked / cancelled (default active)  |
| credit_limit       |          | yuan, e.g. 50000.00                                       |
| account_number     |          | stored masked (last 4)                                    |
| account_kind       |          | savings / current (default savings)                       |
| balance            |          | yuan                                                      |

Good rows are loaded; each bad row is reported as `line N: column: reason` and skipped.
Error messages never repeat a PIN or a card number.
"""

from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path

from ivr_engine.cif.errors import CifError, InvalidCardNumber
from ivr_engine.cif.model import CardStatus, Language, Tier, Title
from ivr_engine.cif.pin import hash_pin, valid_pin
from ivr_engine.cif.store import CifStore, NewAccount, NewCard, NewCustomer, NewPhone, card_digits
from ivr_engine.errors import StoreError
from ivr_engine.region import normalise, normalise_province, province_for_city

REQUIRED = ("cif_no", "surname", "title", "tier", "phones")
OPTIONAL = (
    "surname_zh", "given_name", "preferred_language", "home_province", "home_city", "bound",
    "pin", "card_number", "card_kind", "card_status", "credit_limit", "account_number",
    "account_kind", "balance",
)
MAX_FIELD = 200


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    column: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.column}: {self.reason}"


@dataclass(slots=True)
class ImportResult:
    loaded: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True, slots=True)
class _Parsed:
    line: int
    customer: NewCustomer
    pin: str | None  # hashed just before loading, never kept afterwards
    phones_e164: tuple[str, ...]


class _RowInvalid(Exception):
    def __init__(self, column: str, reason: str) -> None:
        self.column = column
        self.reason = reason


def _yuan_to_cents(text: str, column: str) -> int:
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:
        raise _RowInvalid(column, f"not an amount: {text!r}") from None
    if not value.is_finite() or value < 0 or value > Decimal("1e12"):
        raise _RowInvalid(column, "amount out of range")
    if value != value.quantize(Decimal("0.01")):
        raise _RowInvalid(column, "more than 2 decimal places")
    return int(value * 100)


def _choice(text: str, column: str, allowed: tuple[str, ...]) -> str:
    value = text.strip().lower()
    if value not in allowed:
        raise _RowInvalid(column, f"{text!r} is not one of {', '.join(allowed)}")
    return value


def _parse_row(line: int, row: dict[str, str]) -> _Parsed:
    def get(col: str) -> str:
        value = (row.get(col) or "").strip()
        if len(value) > MAX_FIELD:
            raise _RowInvalid(col, f"longer than {MAX_FIELD} characters")
        return value

    for col in REQUIRED:
        if not get(col):
            raise _RowInvalid(col, "required")
    cif_no = get("cif_no")
    title = Title(_choice(get("title"), "title", tuple(t.value for t in Title)))
    tier = Tier(_choice(get("tier"), "tier", tuple(t.value for t in Tier)))
    lang_text = get("preferred_language")
    language = (
        Language(_choice(lang_text, "preferred_language", tuple(x.value for x in Language)))
        if lang_text else None
    )
    province_text, city = get("home_province"), get("home_city") or None
    province = normalise_province(province_text) if province_text else province_for_city(city)
    if province_text and province is None:
        raise _RowInvalid("home_province", f"unknown province {province_text!r}")
    bound_text = get("bound") or "yes"
    if bound_text.lower() not in ("yes", "no", "1", "0", "true", "false", "y", "n"):
        raise _RowInvalid("bound", f"{bound_text!r} is not yes or no")
    bound = bound_text.lower() in ("yes", "1", "true", "y")
    phones: list[NewPhone] = []
    e164s: list[str] = []
    for raw in get("phones").split(";"):
        if not raw.strip():
            continue
        e164 = normalise(raw)
        if e164 is None:
            raise _RowInvalid("phones", f"not a valid phone number: {raw.strip()!r}")
        if e164 in e164s:
            raise _RowInvalid("phones", f"number listed twice: {raw.strip()!r}")
        e164s.append(e164)
        phones.append(NewPhone(raw.strip(), bound=bound, verified=True))
    if not phones:
        raise _RowInvalid("phones", "required")
    pin = get("pin") or None
    if pin is not None and not valid_pin(pin):
        raise _RowInvalid("pin", "a PIN is 4 to 12 digits")  # never echo it
    cards: tuple[NewCard, ...] = ()
    if get("card_number"):
        try:
            digits = card_digits(get("card_number"))
        except InvalidCardNumber as exc:
            raise _RowInvalid("card_number", str(exc)) from None
        kind = _choice(get("card_kind") or "debit", "card_kind", ("credit", "debit"))
        status = CardStatus(_choice(get("card_status") or "active", "card_status",
                                    tuple(s.value for s in CardStatus)))
        limit = _yuan_to_cents(get("credit_limit"), "credit_limit") if get("credit_limit") else 0
        if kind == "debit" and limit:
            raise _RowInvalid("credit_limit", "a debit card has no credit limit")
        cards = (NewCard(digits, kind=kind, status=status, credit_limit_cents=limit),)
    else:
        for col in ("card_kind", "card_status", "credit_limit"):
            if get(col):
                raise _RowInvalid(col, "given without card_number")
    accounts: tuple[NewAccount, ...] = ()
    if get("account_number"):
        acc = get("account_number").replace(" ", "")
        if not acc.isdigit() or not 8 <= len(acc) <= 32:
            raise _RowInvalid("account_number", "an account number is 8 to 32 digits")
        kind = _choice(get("account_kind") or "savings", "account_kind", ("savings", "current"))
        balance = _yuan_to_cents(get("balance"), "balance") if get("balance") else 0
        accounts = (NewAccount(acc, kind=kind, balance_cents=balance),)
    customer = NewCustomer(
        cif_no=cif_no, surname=get("surname"), surname_zh=get("surname_zh"),
        given_name=get("given_name"), title=title, tier=tier, preferred_language=language,
        home_province=province, home_city=city, phones=tuple(phones), cards=cards,
        accounts=accounts,
    )
    return _Parsed(line, customer, pin, tuple(e164s))


def parse_csv(text: str) -> tuple[list[_Parsed], list[RowError]]:
    """Parse and validate every row; pure (no database)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames
    if not header:
        return [], [RowError(1, "-", "the file is empty (a header row is required)")]
    names = [h.strip() for h in header]
    errors: list[RowError] = []
    unknown = [h for h in names if h not in REQUIRED and h not in OPTIONAL]
    missing = [c for c in REQUIRED if c not in names]
    if unknown:
        errors.append(RowError(1, ",".join(unknown), "unknown column(s); known: "
                               + ", ".join(REQUIRED + OPTIONAL)))
    if missing:
        errors.append(RowError(1, ",".join(missing), "required column(s) missing"))
    if len(set(names)) != len(names):
        errors.append(RowError(1, "-", "a column appears twice"))
    if errors:
        return [], errors
    reader.fieldnames = names
    parsed: list[_Parsed] = []
    seen_cif: dict[str, int] = {}
    seen_phone: dict[str, int] = {}
    seen_card: dict[str, int] = {}
    try:
        for row in reader:
            line = reader.line_num
            if None in row:
                errors.append(RowError(line, "-", "more fields than columns"))
                continue
            if all(not (v or "").strip() for v in row.values()):
                continue  # blank line
            try:
                item = _parse_row(line, row)
            except _RowInvalid as exc:
                errors.append(RowError(line, exc.column, exc.reason))
                continue
            cust = item.customer
            if cust.cif_no in seen_cif:
                first = seen_cif[cust.cif_no]
                errors.append(RowError(line, "cif_no", f"duplicate of line {first}"))
                continue
            dup_phone = next((p for p in item.phones_e164 if p in seen_phone), None)
            if dup_phone is not None:
                errors.append(RowError(line, "phones",
                                       f"number already on line {seen_phone[dup_phone]}"))
                continue
            card_key = cust.cards[0].number if cust.cards else None
            if card_key is not None and card_key in seen_card:
                errors.append(RowError(line, "card_number",
                                       f"same card as line {seen_card[card_key]}"))
                continue
            seen_cif[cust.cif_no] = line
            seen_phone.update(dict.fromkeys(item.phones_e164, line))
            if card_key is not None:
                seen_card[card_key] = line
            parsed.append(item)
    except csv.Error as exc:
        errors.append(RowError(reader.line_num, "-", f"malformed CSV: {exc}"))
    return parsed, errors


async def import_csv(store: CifStore, path: str | Path, *, batch: int = 1000) -> ImportResult:
    """Load the good rows of a CSV file; report the bad ones (`ImportResult.errors`)."""
    try:
        raw = await asyncio.to_thread(Path(path).read_bytes)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return ImportResult(0, [RowError(line, "-", "not UTF-8 text")])
    parsed, errors = parse_csv(text)
    result = ImportResult(0, errors)
    if not parsed:
        result.errors.sort(key=lambda e: e.line)
        return result
    taken_cif, taken_phone = await store.existing(
        [p.customer.cif_no for p in parsed], [n for p in parsed for n in p.phones_e164]
    )
    good: list[_Parsed] = []
    for item in parsed:
        if item.customer.cif_no in taken_cif:
            result.errors.append(RowError(item.line, "cif_no", "customer already in the CIF"))
        elif any(n in taken_phone for n in item.phones_e164):
            result.errors.append(RowError(item.line, "phones",
                                          "number already bound to another customer"))
        else:
            good.append(item)
    good = await _card_conflicts(store, good, result)
    customers: list[NewCustomer] = []
    for item in good:
        cust = item.customer
        if item.pin is not None:
            cust = replace(cust, pin_hash=await asyncio.to_thread(hash_pin, item.pin))
        customers.append(cust)
    for i in range(0, len(customers), batch):
        chunk = customers[i : i + batch]
        try:
            await store.add_customers(chunk)
        except CifError as exc:
            # A race with another writer: report the whole chunk rather than guess.
            for item in good[i : i + batch]:
                result.errors.append(RowError(item.line, "-", f"not loaded: {exc}"))
            continue
        result.loaded += len(chunk)
    result.errors.sort(key=lambda e: e.line)
    return result


async def _card_conflicts(
    store: CifStore, items: list[_Parsed], result: ImportResult
) -> list[_Parsed]:
    keep: list[_Parsed] = []
    for item in items:
        cards = item.customer.cards
        if cards and await store.card_by_number(cards[0].number) is not None:
            result.errors.append(RowError(item.line, "card_number", "card already in the CIF"))
        else:
            keep.append(item)
    return keep
