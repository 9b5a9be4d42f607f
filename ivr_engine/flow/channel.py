"""What the flow interpreter needs from a call: the `CallChannel` protocol.

The FastAGI session adapter implements it for real calls; an offline fake implements it for
`ivr-engine flows try` and for tests. Methods raise `ivr_engine.errors.ChannelHangup` once the
caller is gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from ivr_engine.prompts import Utterance

TransferStatus = Literal["answered", "busy", "noanswer", "failed", "hangup"]


@dataclass(frozen=True)
class CallerInfo:
    number: str  # caller ID number as the network gave it; "" when withheld
    name: str = ""  # caller ID name
    dialled: str = ""  # the number they dialled (DNID / extension)
    withheld: bool = False  # presentation restricted or no number


class CallChannel(Protocol):
    @property
    def call_id(self) -> str:
        """Stable id of this call (Asterisk's uniqueid for real calls)."""
        ...

    @property
    def caller(self) -> CallerInfo: ...

    async def answer(self) -> None: ...

    async def play(self, utterances: Sequence[Utterance], *, interrupt: str = "") -> str | None:
        """Play in order; return the DTMF digit that interrupted (barge-in), None if all played.

        `interrupt` is the set of digits that may barge in ("" = none: legal text)."""
        ...

    async def wait_digit(self, timeout: float) -> str | None:  # noqa: ASYNC109 (a DTMF wait, not an I/O deadline)
        """Wait up to `timeout` seconds for one digit; None on timeout."""
        ...

    async def flush_digits(self) -> None:
        """Discard type-ahead digits, before sensitive or confirm input."""
        ...

    async def set_variable(self, name: str, value: str) -> None: ...

    async def transfer(self, target: str, *, timeout: float) -> TransferStatus:  # noqa: ASYNC109
        """Connect the caller to `target` (number or endpoint) and report how it ended."""
        ...

    async def hangup(self) -> None: ...
