"""The ACD router's PBX side over AMI: commands out (`AmiPbxCommands`), events in
(`AcdAmiBridge`).

Commands: Redirect, Setvar, Hangup (AMI class `call`, which the engine's AMI user has; see
asterisk-conf/manager.conf). Each waits for Asterisk's response with the client's action timeout
and raises `AmiError` on refusal or loss; the router counts and logs the failure, and its guard
timer requeues an offer whose Redirect was lost.

Events: the dialplan's UserEvents (`AcdWaiting`, `AcdAnswered`, `AcdDialResult`,
`AcdCallbackResult`, `AcdVoicemail`, see asterisk-conf/extensions-acd.conf), `Hangup` of a
caller's channel, and `ContactStatus` of the agents' phones. After every (re)connect the
registered contacts are read back (`Getvar DEVICE_STATE(...)`), so agent states after a daemon
or PBX restart come from the PBX, not from a guess; and the callers still waiting in
[acd-wait] are listed (`CoreShowChannels`, class reporting) and re-entered with the
description the queue node left in their channel variables (`Getvar`, class call).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Callable

from acd.errors import AcdError
from acd.router import WAIT_CONTEXT, Router
from ivr_engine.errors import AmiError
from ivr_engine.protocol.ami import AmiEvent, AmiResponse, ContactStatus, Hangup
from ivr_engine.transport.ami import CONNECTED, AmiClient

log = logging.getLogger(__name__)

#: ContactStatus values that mean the phone can take a call (res_pjsip, Asterisk 22).
_UP = frozenset({"created", "reachable", "updated", "nonqualified", "avail"})
_DOWN = frozenset({"removed", "unreachable", "unavail"})
#: DEVICE_STATE() values of a phone that cannot take a call (no contact registered).
_DEVICE_DOWN = frozenset({"", "UNAVAILABLE", "INVALID", "UNKNOWN"})
#: The channel variables a waiting caller's description is rebuilt from (acd_gateway.py).
_DESCRIPTION = ("IVR_QUEUE", "IVR_SKILLS", "IVR_PRIORITY", "IVR_LANGUAGE", "ACD_CALLER", "ACD_POP")


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
        self._router.spawn(self.rebuild_all(), "acd-rebuild")

    async def rebuild_all(self) -> None:
        """Agents first (so the rebuilt callers find them), then the waiting callers."""
        await self.rebuild()
        await self.rebuild_waiting()

    async def rebuild_waiting(self) -> int:
        """Re-enter the callers waiting in [acd-wait] that the router does not know (after a
        daemon restart); returns how many. A caller whose description cannot be read or is
        refused goes to the operators, not back to endless music."""
        try:
            channels = await self._ami.list_action({"Action": "CoreShowChannels"})
        except AmiError as exc:
            log.warning("ACD: cannot list the waiting callers (%s)", exc)
            return 0
        waiting = [
            (c.fields.get("Uniqueid", ""), c.fields.get("Channel", ""))
            for c in channels
            if c.fields.get("Context", "") == WAIT_CONTEXT
        ]
        rebuilt = 0
        for call_id, channel in waiting:
            if not call_id or not channel or call_id in self._router.calls:
                continue
            try:
                got = {}
                for name in _DESCRIPTION:
                    reply = await self._ami.action(
                        {"Action": "Getvar", "Channel": channel, "Variable": name}
                    )
                    value = reply.fields.get_str("Value") if isinstance(reply, AmiResponse) else ""
                    got[name] = value
            except AmiError as exc:
                log.warning("ACD: waiting caller %s not readable (%s)", call_id, exc)
                continue
            pop = dict(urllib.parse.parse_qsl(got["ACD_POP"], keep_blank_values=True))
            try:
                priority = int(got["IVR_PRIORITY"] or 0)
                done = self._router.rebuild_waiting(
                    call_id,
                    channel,
                    queue=got["IVR_QUEUE"],
                    requirement=got["IVR_SKILLS"],
                    priority=priority,
                    language=got["IVR_LANGUAGE"],
                    screen_pop=pop,
                    caller=got["ACD_CALLER"],
                )
            except (AcdError, ValueError) as exc:
                log.error("ACD: waiting caller %s cannot be rebuilt (%s): operators", call_id, exc)
                self._router.call_waiting(call_id, channel)  # unknown call: to the operators
                continue
            rebuilt += done
        if waiting:
            log.info(
                "ACD: %d caller(s) waiting in %s, %d rebuilt", len(waiting), WAIT_CONTEXT, rebuilt
            )
        return rebuilt

    async def rebuild(self) -> int:
        """Ask the PBX which agent phones can take a call now and log `login: auto` agents in
        (out when their phone is not there); returns how many are up. An agent paused or
        logged out by hand before a daemon restart is logged in paused with the same reason,
        or left logged out (`Router.restore_kept`); one line says how many.

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
        self._router.report_restored()
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
            self._guard(self._router.answered, call, f.get("Agent", ""), f.get("Recording", ""))
        elif kind == "AcdDialResult":
            self._guard(self._router.dial_result, call, f.get("Agent", ""), f.get("Status", ""))
        elif kind == "AcdCallbackResult":
            self._guard(self._router.callback_result, call, f.get("Agent", ""), f.get("Status", ""))
        elif kind == "AcdVoicemail":
            self._guard(
                self._router.voicemail_result,
                call,
                f.get("Queue", ""),
                f.get("Status", ""),
                f.get("Mailbox", ""),
            )

    def _guard(self, handler: Callable[..., None], *args: str | bool) -> None:
        """An event the ACD refuses is logged with its arguments (no PINs travel here)."""
        try:
            handler(*args)
        except AcdError as exc:
            log.error("ACD refused %s%r: %s", handler.__name__, args, exc)
