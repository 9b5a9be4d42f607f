"""Masking of numbers that identify a person or a card. Pure functions, standard library only.

Rules: caller numbers keep the first 3 and last 4 digits (`138****8000`); card and account
numbers keep the last 4 (`**** 1234`); PINs and other secrets become `******`. `scrub` is the
defence in depth for free text: any run of 8 or more digits (card, account, ID numbers) is cut
down to its last 4.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

SECRET_MASK = "******"
_DIGIT_RUN = re.compile(r"\d(?:[\d ]*\d)?")
_SECRET_KEYS = ("pin", "password", "passcode", "cvv", "cvc", "otp", "secret")
_NUMBER_KEYS = ("card", "account", "acct", "pan", "iban", "id_number", "idno", "number")


def mask_caller(number: str | None) -> str:
    """`13800138000` and `+8613800138000` -> `138****8000`; `075582345678` -> `075*****5678`.

    Withheld or empty -> `anonymous`. Only the first 3 and the last 4 digits survive.
    """
    text = "".join(ch for ch in str(number or "") if ch.isdigit() or ch == "+")
    digits = text.lstrip("+")
    if not digits:
        return "anonymous"
    if text.startswith("+86") or (digits.startswith("0086") and len(digits) > 12):
        digits = digits[2:] if text.startswith("+") else digits[4:]
        if not digits.startswith("1"):
            digits = "0" + digits  # a landline: national form keeps the trunk prefix 0
    elif text.startswith("+"):
        digits = "+" + digits
    if len(digits) <= 4:
        return "*" * len(digits)
    if len(digits) < 8:
        return "*" * (len(digits) - 4) + digits[-4:]
    return digits[:3] + "*" * (len(digits) - 7) + digits[-4:]


def mask_last4(number: str | None) -> str:
    """`6222021234567890123` -> `****0123`. Non-digits are ignored."""
    digits = "".join(ch for ch in str(number or "") if ch.isdigit())
    if len(digits) <= 4:
        return "****"
    return "****" + digits[-4:]


def luhn_ok(digits: str) -> bool:
    if not digits.isdigit() or not 12 <= len(digits) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def scrub(text: str) -> str:
    """Cut every run of 8+ digits (spaces allowed inside: `6222 0212 ...`) to `****` + last 4."""

    def repl(match: re.Match[str]) -> str:
        digits = "".join(ch for ch in match.group(0) if ch.isdigit())
        if len(digits) >= 8:
            return "****" + digits[-4:]
        return match.group(0)

    return _DIGIT_RUN.sub(repl, text)


def is_secret_key(key: str) -> bool:
    k = key.lower()
    return any(s in k for s in _SECRET_KEYS)


def is_number_key(key: str) -> bool:
    k = key.lower()
    return any(s in k for s in _NUMBER_KEYS)


_CALL_ID_KEYS = ("call_id", "uniqueid", "linkedid")
_ASTERISK_ID = re.compile(r"\d{1,12}\.\d{1,9}")


def mask_value(key: str, value: Any) -> Any:
    """Mask one value by what its key says it is; recurse into mappings and lists."""
    if is_secret_key(key):
        return SECRET_MASK
    if (
        key.lower().endswith(_CALL_ID_KEYS)
        and isinstance(value, str)
        and _ASTERISK_ID.fullmatch(value)
    ):
        return value  # an Asterisk uniqueid (1732000000.7) links records; it is not personal
    if isinstance(value, Mapping):
        return mask_mapping(value)
    if isinstance(value, list | tuple):
        return [mask_value(key, v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        if is_number_key(key) and abs(value) >= 10_000:
            return mask_last4(str(int(value)))
        return value
    text = str(value)
    if is_number_key(key) and sum(ch.isdigit() for ch in text) > 4:
        return mask_last4(text)
    return scrub(text)


def mask_mapping(data: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): mask_value(str(k), v) for k, v in data.items()}
