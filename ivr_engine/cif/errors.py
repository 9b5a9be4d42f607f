"""CIF domain errors. Until the shared tree in `ivr_engine.errors` grows a `CifError`, it lives
here, directly under `IvrError` (a refused operation is not a storage failure: `StoreError`
stays for disk full, locked, corrupt)."""

from __future__ import annotations

from ivr_engine.errors import IvrError


class CifError(IvrError):
    """A CIF operation refused for a domain reason (not a storage failure)."""


class UnknownCustomer(CifError):
    """No customer with that id."""


class UnknownCard(CifError):
    """No card with that reference."""


class CardStateError(CifError):
    """The card's status does not allow the operation (e.g. activating a cancelled card)."""


class InvalidCardNumber(CifError):
    """A keyed card number that is not 13-19 digits or fails the Luhn check."""


class InvalidRequest(CifError):
    """A service request with a bad amount or term."""
