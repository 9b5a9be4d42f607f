"""Customer data (CIF): who is calling, what they hold, what they may do by phone.

Public API: `CifStore` (open/lookup/PIN/cards/requests), the frozen model types, `seed()`,
`import_csv()`. See `store.py` for the design notes.
"""

from ivr_engine.cif.errors import (
    CardStateError,
    CifError,
    InvalidCardNumber,
    InvalidRequest,
    UnknownCard,
    UnknownCustomer,
)
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
from ivr_engine.cif.store import CifStore, PinState

__all__ = [
    "Account", "Bill", "CallerProfile", "Card", "CardStateError", "CardStatus", "CifError",
    "CifStore", "Customer", "InvalidCardNumber", "InvalidRequest", "Language", "PinState",
    "RiskFlag", "ServiceRequest", "ServiceTier", "Tier", "Title", "UnknownCard",
    "UnknownCustomer",
]
