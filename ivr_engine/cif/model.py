"""What the CIF hands to the rest of the engine: frozen dataclasses, no I/O.

Money is integer cents (fen) everywhere; `yuan()` renders it. Card and account numbers only
ever appear masked (`****1234`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from ivr_engine.region import Region


class Tier(StrEnum):
    """The customer's contractual tier, as stored."""

    VIP = "vip"  # private banking
    GROUP = "group"  # corporate / group customers
    STANDARD = "standard"


class ServiceTier(StrEnum):
    """How the hotline treats this call (the bank documents' VIP / group / out-of-region /
    local tiers), plus the two kinds of callers the CIF does not know."""

    VIP = "vip"
    GROUP = "group"
    OUT_OF_REGION = "out_of_region"
    LOCAL = "local"
    UNKNOWN = "unknown"  # a number we could read, not a customer
    ANONYMOUS = "anonymous"  # withheld or unusable caller ID


class Language(StrEnum):
    MANDARIN = "cmn"
    CANTONESE = "yue"
    ENGLISH = "en"


class CardStatus(StrEnum):
    ACTIVE = "active"
    BLOCKED = "blocked"
    INACTIVE = "inactive"
    CANCELLED = "cancelled"


class Title(StrEnum):
    MR = "mr"
    MS = "ms"


def yuan(cents: int) -> Decimal:
    return (Decimal(cents) / 100).quantize(Decimal("0.01"))


@dataclass(frozen=True, slots=True)
class Customer:
    id: int
    cif_no: str
    surname: str  # romanised, "Chen"
    surname_zh: str  # "陈"; may be empty
    given_name: str
    title: Title
    tier: Tier
    preferred_language: Language | None
    home_province: str | None
    home_city: str | None
    locked: bool

    def greeting_name(self, language: Language | str) -> str:
        """`陈先生` / `王女士` in Chinese, `Mr Chen` / `Ms Wang` in English."""
        if str(language) != Language.ENGLISH and self.surname_zh:
            return self.surname_zh + ("先生" if self.title is Title.MR else "女士")
        return ("Mr " if self.title is Title.MR else "Ms ") + self.surname


@dataclass(frozen=True, slots=True)
class Card:
    id: int
    customer_id: int
    kind: str  # credit | debit
    masked: str  # ****1234
    last4: str
    status: CardStatus
    credit_limit_cents: int


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    customer_id: int
    kind: str  # current | savings
    masked: str
    currency: str
    balance_cents: int
    eod_balance_cents: int

    @property
    def balance(self) -> Decimal:
        return yuan(self.balance_cents)


@dataclass(frozen=True, slots=True)
class Bill:
    id: int
    card_id: int
    card_masked: str
    statement_date: dt.date
    statement_cents: int
    minimum_cents: int
    due_date: dt.date
    paid: bool

    @property
    def amount(self) -> Decimal:
        return yuan(self.statement_cents)

    @property
    def minimum(self) -> Decimal:
        return yuan(self.minimum_cents)


@dataclass(frozen=True, slots=True)
class RiskFlag:
    code: str
    text: str


@dataclass(frozen=True, slots=True)
class CallerProfile:
    """Everything the flows need about a caller, from one lookup.

    `region` is where the number is; `customer.home_province` is where the customer lives.
    `language` is resolved: the customer's preference, else Cantonese for a number in a
    Cantonese region, else Mandarin.
    """

    number_masked: str
    region: Region
    customer: Customer | None
    service_tier: ServiceTier
    language: Language
    bound: bool  # the number is bound to the customer for caller-ID recognition (green channel)
    verified_number: bool
    unpaid_bill: Bill | None
    risk_flags: tuple[RiskFlag, ...]
    calls_today: int
    cards: tuple[Card, ...]
    products: tuple[str, ...]
    # True when the CIF could not be read in time (locked, failing disk): the caller is
    # treated as unknown and the flow should route to a person rather than to self-service.
    degraded: bool = False

    @property
    def known(self) -> bool:
        return self.customer is not None

    @property
    def pin_locked(self) -> bool:
        return self.customer is not None and self.customer.locked

    @property
    def risk_flagged(self) -> bool:
        return bool(self.risk_flags)



@dataclass(frozen=True, slots=True)
class ServiceRequest:
    id: int
    customer_id: int
    card_id: int
    kind: str  # limit_raise | instalment
    amount_cents: int | None
    months: int | None
    status: str
    created_at: str
