"""Phone-banking PIN hashing: salted scrypt, constant-time comparison. The PIN is never stored.

Format: `scrypt$<log2 n>$<r>$<p>$<salt hex>$<hash hex>`, so the cost can be raised later and old
hashes still verify. One hash costs about 60 ms of CPU: callers run it in a thread.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from ivr_engine.cif.errors import CifError

LOG2_N = 14
R = 8
P = 1
DKLEN = 32
PIN_MIN, PIN_MAX = 4, 12


class InvalidPin(CifError):
    """A PIN that cannot be set: not 4-12 digits. (The message never contains the PIN.)"""


def valid_pin(pin: str) -> bool:
    if not isinstance(pin, str):
        return False
    return pin.isascii() and pin.isdigit() and PIN_MIN <= len(pin) <= PIN_MAX


def hash_pin(pin: str, *, salt: bytes | None = None, log2_n: int = LOG2_N) -> str:
    if not valid_pin(pin):
        raise InvalidPin(f"a PIN must be {PIN_MIN}-{PIN_MAX} digits")
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=1 << log2_n, r=R, p=P, dklen=DKLEN)
    return f"scrypt${log2_n}${R}${P}${salt.hex()}${digest.hex()}"


def well_formed(stored: str) -> bool:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        bytes.fromhex(parts[4])
        digest = bytes.fromhex(parts[5])
    except ValueError:
        return False
    return 10 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16 and len(digest) >= 16


def check_pin(pin: str, stored: str | None) -> bool:
    """True when `pin` matches `stored`. Runs the full hash even for a malformed PIN or a
    missing hash, so the time taken does not tell an attacker which case they hit."""
    ok_format = stored is not None and well_formed(stored)
    if ok_format and stored is not None:
        _, log2_n, r, p, salt_hex, digest_hex = stored.split("$")
        salt, expected = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex)
        n, rr, pp = 1 << int(log2_n), int(r), int(p)
    else:
        salt, expected, n, rr, pp = b"\0" * 16, b"\0" * DKLEN, 1 << LOG2_N, R, P
    candidate = pin.encode() if isinstance(pin, str) else b""
    digest = hashlib.scrypt(
        candidate, salt=salt, n=n, r=rr, p=pp, dklen=len(expected), maxmem=256 * 1024 * 1024
    )
    return hmac.compare_digest(digest, expected) and ok_format and valid_pin(pin)
