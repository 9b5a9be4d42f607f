"""The flow interpreter's `CallChannel`, implemented on a FastAGI session.

This is the seam between transport and domain: the interpreter speaks in utterances and digits,
the session speaks AGI commands. Digits read here are always passed to the session as sensitive,
so that the transport never logs a key press (the interpreter, which knows which inputs are
secrets, decides what a trace may show).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import PurePosixPath

from ivr_engine.flow.channel import CallerInfo, TransferStatus
from ivr_engine.prompts import Utterance
from ivr_engine.transport.fastagi import AgiSession

log = logging.getLogger(__name__)

# Asterisk's CALLINGPRES values with "presentation restricted" (ast_describe_caller_presentation):
# 32-35 prohibited, 67 number unavailable.
_RESTRICTED = {32, 33, 34, 35, 67}

_DIALSTATUS: dict[str, TransferStatus] = {
    "ANSWER": "answered",
    "BUSY": "busy",
    "NOANSWER": "noanswer",
    "CANCEL": "hangup",
}

# Type-ahead flush: at most this many queued digits are discarded, each read waiting this long.
_FLUSH_MAX = 32
_FLUSH_WAIT = 0.05


class AgiCallChannel:
    """`CallChannel` over an `AgiSession`; sounds are resolved under `sound_dir` on the PBX."""

    def __init__(self, session: AgiSession, *, sound_dir: str) -> None:
        self._session = session
        self._sound_dir = PurePosixPath(sound_dir)
        env = session.env
        withheld = (env.callingpres in _RESTRICTED) or not env.caller_number
        self._caller = CallerInfo(
            number="" if withheld else env.caller_number,
            name=env.caller_name,
            dialled=env.dnid if env.dnid and env.dnid != "unknown" else env.extension,
            withheld=withheld,
        )

    @property
    def call_id(self) -> str:
        return self._session.env.uniqueid

    @property
    def caller(self) -> CallerInfo:
        return self._caller

    def sound_path(self, utterance: Utterance) -> str:
        # Absolute paths (no extension) let Asterisk pick the best format it has.
        return str(self._sound_dir / utterance.file)

    async def answer(self) -> None:
        await self._session.answer()

    async def play(self, utterances: Sequence[Utterance], *, interrupt: str = "") -> str | None:
        for utterance in utterances:
            digit = await self._session.stream_file(
                self.sound_path(utterance), escape_digits=interrupt, sensitive=True
            )
            if digit is not None:
                return digit
        return None

    async def wait_digit(self, timeout: float) -> str | None:  # noqa: ASYNC109 (a DTMF wait, not an I/O deadline)
        return await self._session.wait_for_digit(timeout, sensitive=True)

    async def flush_digits(self) -> None:
        # AGI has no flush: digits pressed while no command reads the channel stay queued on
        # it, so read them off with very short waits until none is left.
        for _ in range(_FLUSH_MAX):
            if await self._session.wait_for_digit(_FLUSH_WAIT, sensitive=True) is None:
                return

    async def set_variable(self, name: str, value: str) -> None:
        await self._session.set_variable(name, value)

    async def transfer(self, target: str, *, timeout: float) -> TransferStatus:  # noqa: ASYNC109
        await self._session.exec("Dial", f"{target},{max(1, int(timeout))}")
        status = (await self._session.get_variable("DIALSTATUS") or "").upper()
        return _DIALSTATUS.get(status, "failed")

    async def hangup(self) -> None:
        await self._session.hangup()
