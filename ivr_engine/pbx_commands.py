"""The ACD router's PBX side over AMI: commands out (`AmiPbxCommands`), events in
(`AcdAmiBridge`).

Commands: Redirect, Setvar, Hangup (AMI class `call`, which the engine's AMI user has; see
asterisk-conf/manager.conf). Each waits for Asterisk's response with the client's action timeout
and raises `AmiError` on refusal or loss; the router counts and logs the failure, and its guard
timer requeues an offer whose Redirect was lost.

Events: the dialplan's UserEvents (`AcdWaiting`, `AcdAnswered`, `AcdDialResult`, see
[acd-wait]/[acd-connect] in asterisk-conf/extensions.conf), `Hangup` of a caller's channel,
and `ContactStatus` of the agents' phones. After every (re)connect the registered contacts are
read back (`Getvar DEVICE_STATE(...)`), so agent states after a daemon or PBX restart come from
the PBX, not from a guess.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from acd.errors import AcdError
from acd.router import Router
from ivr_engine.errors import AmiError
from ivr_engine.protocol.ami import AmiEvent, AmiResponse, ContactStatus, Hangup
from ivr_engine.transport.ami import CONNECTED, AmiClient

log = logging.getLogger(__name__)

#: ContactStatus values that mean the phone can take a call (res_pjsip, Asterisk 22).
_UP = frozenset({"created", "reachable", "updated", "nonqualified", "avail"})
_DOWN = frozenset({"removed", "unreachable", "unavail"})
#: DEVICE_STATE() values of a phone that cannot take a call (no contact registered).
_DEVICE_DOWN = frozenset({"", "UNAVAILABLE", "INVALID", "UNKNOWN"})


class AmiPbxCommands:
    """`acd.router.PbxCommands` over an `AmiClient`."""

    def __init__(self, ami: AmiClient, *, timeout: float | None = None) -> None:
        self._ami = ami
        self._timeout = timeout

    async def redirect(self, channel: str, context: str, exten: str, priority: int = 1) -> None:
        await self._ami.action(
            {
                "Action": "Redirect",
                "Channel": channel,
                "Context": context,
                "Exten": exten,
                "Priority": str(priority),
            },
            timeout=self._timeout,
        )

    async def set_variable(self, channel: str, name: str, value: str) -> None:
        await self._ami.action(
            {"Action": "Setvar", "Channel": channel, "Variable": name, "Value": value},
            timeout=self._timeout,
        )

    async def hangup(self, channel: str, cause: int = 16) -> None:
        await self._ami.action(
            {"Action": "Hangup", "Channel": channel, "Cause": str(cause)}, timeout=self._timeout
        )


class AcdAmiBridge:
    """Feeds a `Router` from AMI events. `start()` subscribes; `close()` unsubscribes."""

    def __init__(self, ami: AmiClient, router: Router) -> None:
        self._ami = ami
        self._router = router
        self._unsubscribe: list[Callable[[], None]] = []

    def start(self) -> None:
        for name, callback in (
            ("UserEvent", self._on_user_event),
            ("Hangup", self._on_hangup),
            ("ContactStatus", self._on_contact),
            (CONNECTED, self._on_connected),
        ):
            self._unsubscribe.append(self._ami.subscribe(name, callback))

    @property
    def ami_connected(self) -> bool:
        return bool(self._ami.connected)

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()

    def _on_connected(self, event: AmiEvent) -> None:
        self._router.spawn(self.rebuild(), "acd-rebuild-contacts")

    async def rebuild(self) -> int:
        """Ask the PBX which agent phones can take a call now and log `login: auto` agents in
        (out when their phone is not there); returns how many are up.

        `Getvar DEVICE_STATE(PJSIP/<ext>)` (class call, which the engine has): the contact
        listing actions (PJSIPShowContacts) need `system` write, which no AMI user here gets,
        and DeviceStateList needs res_manager_devicestate, which the lean modules.conf does
        not load yet."""
        entries = list(self._router.roster.agents.values())
        gate = asyncio.Semaphore(8)

        async def state_of(endpoint: str) -> str:
            async with gate:
                reply = await self._ami.action(
                    {"Action": "Getvar", "Variable": f"DEVICE_STATE({endpoint})"}
                )
            if isinstance(reply, AmiResponse):
                return reply.fields.get_str("Value").upper()
            return ""

        try:
            states = await asyncio.gather(*(state_of(e.endpoint) for e in entries))
        except AmiError as exc:
            log.warning("ACD: cannot read the agents' device states (%s); waiting for events", exc)
            return 0
        up = 0
        for entry, state in zip(entries, states, strict=True):
            registered = state not in _DEVICE_DOWN
            up += registered
            self._guard(self._router.contact_changed, entry.endpoint, registered)
        log.info("ACD: %d of %d agent phone(s) registered at start", up, len(entries))
        return up

    def _on_contact(self, event: AmiEvent) -> None:
        if not isinstance(event, ContactStatus):
            return
        status = event.contact_status.lower()
        endpoint = event.endpoint_name or event.aor
        if status in _UP:
            self._guard(self._router.contact_changed, endpoint, True)
        elif status in _DOWN:
            self._guard(self._router.contact_changed, endpoint, False)

    def _on_hangup(self, event: AmiEvent) -> None:
        if isinstance(event, Hangup):
            self._guard(self._router.channel_gone, event.channel)

    def _on_user_event(self, event: AmiEvent) -> None:
        f = event.fields
        kind = f.get("UserEvent", "")
        call = f.get("Call", "")
        if kind == "AcdWaiting":
            self._guard(self._router.call_waiting, call, f.get("Channel", ""))
        elif kind == "AcdAnswered":
            self._guard(self._router.answered, call, f.get("Agent", ""))
        elif kind == "AcdDialResult":
            self._guard(self._router.dial_result, call, f.get("Agent", ""), f.get("Status", ""))

    def _guard(self, handler: Callable[..., None], *args: str | bool) -> None:
        """An event the ACD refuses is logged with its arguments (no PINs travel here)."""
        try:
            handler(*args)
        except AcdError as exc:
            log.error("ACD refused %s%r: %s", handler.__name__, args, exc)
