"""A synthetic customer book plus the five demo personas of the hotline issue.

DEV-ONLY TEST DATA. The PIN below and the card numbers are published here on purpose so that
tests and the SIP simulator can key them; they are not real and must never be loaded into a
production CIF. `seed()` is idempotent: customers already present (by customer number) are
left alone, and the personas' time-dependent state (Wang's bill due in 3 days, Zhao's 3 calls
today) is re-aimed at the seeding day on every run, so `make demo` always shows them.

Personas (the number's geocode in brackets, phonenumbers 9.0):
- 13926000001 Chen 陈先生, private-banking VIP, home Guangzhou            [Guangzhou]
- 13800138000 Wang 王女士, standard, home Beijing, credit-card bill of 5,280.00 due in 3 days,
  unpaid                                                                 [Beijing]
- 075582345678 is NOT a customer (a Shenzhen landline)                    [Shenzhen]
- 13700000003 Li 李先生, standard, home Shanghai, risk flag SUSPICIOUS_TXN  [Shenyang]
- 13500000004 Zhao 赵先生, group (corporate) tier, home Guangzhou, 3 calls today [Guangzhou]
Li's home (Shanghai) differs from where his number geocodes (Shenyang): his tier is
out-of-region because of his home, his language Mandarin either way.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from ivr_engine.cif.masking import luhn_ok
from ivr_engine.cif.model import CardStatus, Language, Tier, Title
from ivr_engine.cif.pin import hash_pin
from ivr_engine.cif.store import CifStore, NewAccount, NewBill, NewCard, NewCustomer, NewPhone
from ivr_engine.region import region_of

DEV_PIN = "123456"  # dev-only test data: every persona's and every synthetic customer's PIN

PERSONA_NUMBERS = {
    "chen": "13926000001",
    "wang": "13800138000",
    "shenzhen_landline": "075582345678",
    "li": "13700000003",
    "zhao": "13500000004",
}
NON_CUSTOMER_NUMBERS = frozenset({"075582345678"})


def luhn_complete(prefix: str) -> str:
    """Append the check digit that makes `prefix` + digit Luhn-valid."""
    for d in "0123456789":
        if luhn_ok(prefix + d):
            return prefix + d
    raise ValueError("no Luhn digit")  # unreachable for a digit string of length 12-18


# Dev-only card numbers (Luhn-valid, 6222/6225 BINs), keyed by persona.
PERSONA_CARDS = {
    "chen": luhn_complete("622202000000001"),
    "wang": luhn_complete("625802000000002"),
    "li": luhn_complete("622202000000003"),
    "zhao": luhn_complete("625802000000004"),
}
PERSONA_CIF_NOS = {"chen": "P0000001", "wang": "P0000002", "li": "P0000003", "zhao": "P0000004"}
WANG_BILL_CENTS = 528_000
WANG_MINIMUM_CENTS = 52_800


@dataclass(frozen=True, slots=True)
class SeedResult:
    personas_added: int
    synthetic_added: int
    total_customers: int


def personas(today: dt.date) -> list[NewCustomer]:
    """The four customer personas, each with its own salted hash of `DEV_PIN`."""
    return [
        NewCustomer(
            cif_no=PERSONA_CIF_NOS["chen"], surname="Chen", surname_zh="陈", given_name="Jianguo",
            title=Title.MR, tier=Tier.VIP, home_province="Guangdong", home_city="Guangzhou",
            pin_hash=hash_pin(DEV_PIN),
            phones=(NewPhone(PERSONA_NUMBERS["chen"], bound=True, verified=True),),
            cards=(NewCard(PERSONA_CARDS["chen"], kind="debit"),),
            accounts=(NewAccount("6222020000000011001", "savings", 286_000_000),),
            products=(("PB", "private banking"), ("WM01", "wealth management plan")),
        ),
        NewCustomer(
            cif_no=PERSONA_CIF_NOS["wang"], surname="Wang", surname_zh="王", given_name="Fang",
            title=Title.MS, tier=Tier.STANDARD, home_province="Beijing", home_city="Beijing",
            pin_hash=hash_pin(DEV_PIN),
            phones=(NewPhone(PERSONA_NUMBERS["wang"], bound=True, verified=True),),
            cards=(
                NewCard(
                    PERSONA_CARDS["wang"], kind="credit", credit_limit_cents=5_000_000,
                    bills=(_wang_bill(today),),
                ),
            ),
            accounts=(NewAccount("6222020000000022002", "savings", 1_250_000),),
            products=(("CC", "credit card"),),
        ),
        NewCustomer(
            cif_no=PERSONA_CIF_NOS["li"], surname="Li", surname_zh="李", given_name="Wei",
            title=Title.MR, tier=Tier.STANDARD, home_province="Shanghai", home_city="Shanghai",
            pin_hash=hash_pin(DEV_PIN),
            phones=(NewPhone(PERSONA_NUMBERS["li"], bound=True, verified=True),),
            cards=(NewCard(PERSONA_CARDS["li"], kind="debit"),),
            accounts=(NewAccount("6222020000000033003", "current", 3_480_000),),
            risk_flags=(("SUSPICIOUS_TXN", "suspicious transaction"),),
        ),
        NewCustomer(
            cif_no=PERSONA_CIF_NOS["zhao"], surname="Zhao", surname_zh="赵", given_name="Lei",
            title=Title.MR, tier=Tier.GROUP, home_province="Guangdong", home_city="Guangzhou",
            pin_hash=hash_pin(DEV_PIN),
            phones=(NewPhone(PERSONA_NUMBERS["zhao"], bound=True, verified=True),),
            cards=(NewCard(PERSONA_CARDS["zhao"], kind="credit", credit_limit_cents=20_000_000),),
            accounts=(NewAccount("6222020000000044004", "current", 58_000_000),),
            products=(("CORP", "corporate account"),),
            call_counts=((today, 3),),
        ),
    ]


def _wang_bill(today: dt.date) -> NewBill:
    return NewBill(
        statement_date=today - dt.timedelta(days=17),
        statement_cents=WANG_BILL_CENTS,
        minimum_cents=WANG_MINIMUM_CENTS,
        due_date=today + dt.timedelta(days=3),
    )


_SURNAMES = (
    ("Wang", "王"), ("Li", "李"), ("Zhang", "张"), ("Liu", "刘"), ("Chen", "陈"), ("Yang", "杨"),
    ("Huang", "黄"), ("Zhao", "赵"), ("Wu", "吴"), ("Zhou", "周"), ("Xu", "徐"), ("Sun", "孙"),
    ("Ma", "马"), ("Zhu", "朱"), ("Hu", "胡"), ("Guo", "郭"), ("He", "何"), ("Lin", "林"),
    ("Luo", "罗"), ("Liang", "梁"),
)
_GIVEN = ("Wei", "Fang", "Na", "Min", "Jing", "Lei", "Qiang", "Yan", "Jun", "Hua", "Ping", "Hui")
_PREFIXES = (
    "130", "131", "132", "133", "134", "135", "136", "137", "138", "139",
    "150", "151", "152", "153", "155", "156", "157", "158", "159",
    "180", "181", "182", "183", "185", "186", "187", "188", "189",
)
_OTHER_HOMES = ("Beijing", "Shanghai", "Guangdong", "Zhejiang", "Jiangsu", "Sichuan", "Hubei")


def synthetic(count: int, *, seed: int, today: dt.date, pin_hash: str) -> list[NewCustomer]:
    """`count` deterministic synthetic customers (same seed, same book)."""
    rng = random.Random(seed)
    taken = set(PERSONA_NUMBERS.values())
    out: list[NewCustomer] = []
    for i in range(1, count + 1):
        while True:
            number = rng.choice(_PREFIXES) + f"{rng.randrange(10**8):08d}"
            if number not in taken:
                taken.add(number)
                break
        region = region_of(number)
        home = region.province if rng.random() < 0.9 and region.province else rng.choice(
            _OTHER_HOMES
        )
        city = region.city if home == region.province else None
        roll = rng.random()
        tier = Tier.VIP if roll < 0.03 else Tier.GROUP if roll < 0.10 else Tier.STANDARD
        lang_roll = rng.random()
        language = (
            Language.ENGLISH if lang_roll < 0.03
            else Language.CANTONESE if lang_roll < 0.06
            else Language.MANDARIN if lang_roll < 0.10
            else None
        )
        surname, surname_zh = rng.choice(_SURNAMES)
        cards = [NewCard(luhn_complete(f"621700{i:09d}"), kind="debit")]
        if rng.random() < 0.3:
            bills: tuple[NewBill, ...] = ()
            if rng.random() < 0.5:
                due = today + dt.timedelta(days=rng.randrange(-5, 25))
                amount = rng.randrange(10_000, 5_000_000)
                bills = (NewBill(due - dt.timedelta(days=20), amount, max(amount // 10, 100),
                                 due, paid=False),)
            cards.append(NewCard(
                luhn_complete(f"625900{i:09d}"), kind="credit",
                status=CardStatus.INACTIVE if rng.random() < 0.05 else CardStatus.ACTIVE,
                credit_limit_cents=rng.choice((1_000_000, 3_000_000, 5_000_000, 10_000_000)),
                bills=bills,
            ))
        out.append(NewCustomer(
            cif_no=f"S{i:07d}", surname=surname, surname_zh=surname_zh,
            given_name=rng.choice(_GIVEN), title=rng.choice((Title.MR, Title.MS)), tier=tier,
            preferred_language=language, home_province=home, home_city=city, pin_hash=pin_hash,
            phones=(NewPhone(number, bound=rng.random() < 0.8, verified=True),),
            cards=tuple(cards),
            accounts=(NewAccount(f"6222029{i:09d}", "savings", rng.randrange(0, 50_000_000)),),
            risk_flags=(("SUSPICIOUS_TXN", "suspicious transaction"),) if rng.random() < 0.01
            else (),
        ))
    return out


async def seed(
    store: CifStore, *, customers: int = 10_000, rng_seed: int = 20261125,
    today: dt.date | None = None, batch: int = 2000,
) -> SeedResult:
    """Load the personas and `customers` synthetic customers (those not already present)."""
    if customers < 0:
        raise ValueError("customers must be >= 0")
    today = today or store.today()
    # One salted hash of the dev PIN shared by the whole synthetic book: hashing 10,000 PINs
    # separately would take ten minutes, and this is dev-only data anyway. Personas get their
    # own salts.
    shared_hash = hash_pin(DEV_PIN)
    wanted = [
        *personas(today),
        *synthetic(customers, seed=rng_seed, today=today, pin_hash=shared_hash),
    ]
    taken_cif, _ = await store.existing([c.cif_no for c in wanted], [])
    todo = [c for c in wanted if c.cif_no not in taken_cif]
    persona_nos = set(PERSONA_CIF_NOS.values())
    for i in range(0, len(todo), batch):
        await store.add_customers(todo[i : i + batch])
    await refresh_personas(store, today)
    added_personas = sum(1 for c in todo if c.cif_no in persona_nos)
    return SeedResult(
        personas_added=added_personas,
        synthetic_added=len(todo) - added_personas,
        total_customers=await store.count_customers(),
    )


async def refresh_personas(store: CifStore, today: dt.date) -> None:
    """Re-aim the personas' time-dependent facts at `today`."""
    wang = await store.customer_by_cif_no(PERSONA_CIF_NOS["wang"])
    if wang is not None:
        bill = _wang_bill(today)
        await store.reset_unpaid_bill(
            wang.id, statement_date=bill.statement_date, due_date=bill.due_date,
            statement_cents=bill.statement_cents, minimum_cents=bill.minimum_cents,
        )
    zhao = await store.customer_by_cif_no(PERSONA_CIF_NOS["zhao"])
    if zhao is not None:
        await store.set_call_count(zhao.id, today, 3)
