"""`ivr-engine supervise listen|whisper|barge AGENT --from SUPERVISOR`: a supervisor's phone
joins an agent's call.

Over AMI (the engine's user), in this order, each step with its own refusal:

1. `--from` must be a supervisor: `DIALPLAN_EXISTS(supervise,supervisor-<ext>,1)`, i.e. the
   running PBX's [supervise] context (asterisk-conf/extensions-agents.conf) lists the phone.
2. The agent must be reachable from [supervise]: `DIALPLAN_EXISTS(supervise,<mode>-<agent>,1)`.
3. The agent must be on a call: `DEVICE_STATE(PJSIP/<agent>)` is INUSE, BUSY, ONHOLD or
   RINGINUSE. Ringing, idle or unregistered phones are refused: there is nothing to hear.
4. The supervisor's phone must be registered (not UNAVAILABLE, INVALID or UNKNOWN).
5. `Originate Channel=PJSIP/<supervisor> Context=supervise Exten=<mode>-<agent>`: the phone
   rings, and once answered the dialplan runs ChanSpy on the agent's channel. Never an
   `Application=` Originate: the engine's AMI user may only start dialplan (manager.conf).

Exit codes: 0 the supervisor answered and is connected, 1 refused (the reason is printed) or
the supervisor's phone did not answer, 2 bad arguments or no AMI to ask.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from ivr_engine.errors import AmiError, AmiLoginError
from ivr_engine.protocol.ami import ActionValue, AmiEvent, AmiResponse, OriginateResponse

MODES = ("listen", "whisper", "barge")
CONTEXT = "supervise"
_EXTENSION = re.compile(r"^[0-9]{2,8}\Z")
#: DEVICE_STATE values of a phone with a call up (Asterisk's ast_devstate_str).
ON_CALL = frozenset({"INUSE", "BUSY", "ONHOLD", "RINGINUSE"})
#: DEVICE_STATE values of a phone that cannot be rung.
UNREACHABLE = frozenset({"UNAVAILABLE", "INVALID", "UNKNOWN", ""})
#: OriginateResponse Reason codes (Asterisk control frames) worth naming.
_REASONS = {0: "no such phone or dialplan", 1: "hung up", 3: "no answer", 5: "busy", 8: "congested"}
_DOING = {"listen": "listening to", "whisper": "whispering to", "barge": "barged into the call of"}


class UsageError(ValueError):
    """Arguments that cannot name a supervision (exit 2)."""


class Refused(Exception):
    """The PBX says no (exit 1); the message says why."""


class Ami(Protocol):
    """The part of `AmiClient` this command uses."""

    async def action(
        self,
        action: Mapping[str, ActionValue],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (AmiClient's per-action deadline)
    ) -> AmiResponse | list[AmiEvent]: ...

    async def originate(
        self,
        *,
        channel: str,
        context: str | None = None,
        exten: str | None = None,
        priority: int = 1,
        caller_id: str | None = None,
        ring_timeout: float = 30.0,
    ) -> str: ...

    async def originate_response(
        self,
        action_id: str,
        *,
        timeout: float,  # noqa: ASYNC109 (AmiClient's signature)
    ) -> OriginateResponse: ...


@dataclass(frozen=True)
class Request:
    mode: str
    agent: str
    supervisor: str

    @property
    def exten(self) -> str:
        return f"{self.mode}-{self.agent}"


def check_args(mode: str, agent: str, supervisor: str) -> Request:
    """The request, or UsageError naming what is wrong."""
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not _EXTENSION.match(agent):
        raise UsageError(f"AGENT must be an extension of 2-8 digits, e.g. 1001, got {agent!r}")
    if not supervisor:
        raise UsageError("--from SUPERVISOR_EXT is required: the supervisor's phone")
    if not _EXTENSION.match(supervisor):
        raise UsageError(
            f"--from must be an extension of 2-8 digits, e.g. 1010, got {supervisor!r}"
        )
    if agent == supervisor:
        raise UsageError(f"agent and supervisor are the same phone ({agent})")
    return Request(mode, agent, supervisor)


async def _getvar(ami: Ami, expression: str) -> str:
    reply = await ami.action({"Action": "Getvar", "Variable": expression})
    if not isinstance(reply, AmiResponse):
        raise AmiError(f"Getvar {expression} answered with an event list")
    return reply.fields.get_str("Value").strip()


async def supervise(ami: Ami, request: Request, *, ring_timeout: float = 30.0) -> str:
    """Check, then ring the supervisor into [supervise]; return what happened (one line).
    Raises Refused with the reason; AmiError when the PBX cannot be asked."""
    sup, agent = request.supervisor, request.agent
    if await _getvar(ami, f"DIALPLAN_EXISTS({CONTEXT},supervisor-{sup},1)") != "1":
        raise Refused(
            f"{sup} is not a supervisor: the [{CONTEXT}] context of the PBX has no "
            f"supervisor-{sup} (asterisk-conf/extensions-agents.conf lists the supervisors)"
        )
    if await _getvar(ami, f"DIALPLAN_EXISTS({CONTEXT},{request.exten},1)") != "1":
        raise Refused(
            f"agent {agent} cannot be supervised: [{CONTEXT}] has no extension for {request.exten}"
        )
    state = (await _getvar(ami, f"DEVICE_STATE(PJSIP/{agent})")).upper()
    if state not in ON_CALL:
        raise Refused(
            f"agent {agent} is not on a call (phone {state.lower() or 'unknown'}): "
            f"nothing to {request.mode}"
        )
    sup_state = (await _getvar(ami, f"DEVICE_STATE(PJSIP/{sup})")).upper()
    if sup_state in UNREACHABLE:
        raise Refused(f"supervisor phone {sup} is not registered ({sup_state.lower() or '?'})")
    action_id = await ami.originate(
        channel=f"PJSIP/{sup}",
        context=CONTEXT,
        exten=request.exten,
        priority=1,
        caller_id=f'"{request.mode} {agent}" <{agent}>',
        ring_timeout=ring_timeout,
    )
    result = await ami.originate_response(action_id, timeout=ring_timeout + 10.0)
    if not result.success:
        why = _REASONS.get(result.reason or 0, f"reason {result.reason}")
        raise Refused(f"supervisor phone {sup} did not answer ({why})")
    return f"supervisor {sup} is {_DOING[request.mode]} agent {agent} ({result.channel})"


async def _run(args: argparse.Namespace) -> int:
    from ivr_engine.transport.ami import AmiClient

    try:
        request = check_args(args.mode, args.agent, args.supervisor or "")
    except UsageError as exc:
        print(f"supervise: {exc}", file=sys.stderr)
        return 2
    if not args.ring_timeout > 0:
        print("supervise: --ring-timeout must be positive", file=sys.stderr)
        return 2
    ami = AmiClient(args.settings.ami)
    try:
        try:
            await ami.connect()
        except AmiLoginError:
            raise
        except AmiError as exc:
            print(f"supervise: cannot reach the PBX over AMI: {exc}", file=sys.stderr)
            return 2
        try:
            print(await supervise(ami, request, ring_timeout=args.ring_timeout))
        except Refused as exc:
            print(f"supervise: refused: {exc}", file=sys.stderr)
            return 1
        except AmiError as exc:
            print(f"supervise: the PBX did not do it: {exc}", file=sys.stderr)
            return 1
        return 0
    finally:
        await ami.close()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "supervise",
        help="a supervisor's phone listens to, whispers to or barges into an agent's call",
        description=(
            "Ring the supervisor's phone; once answered it hears the agent's call (listen), "
            "speaks to the agent only (whisper) or to both (barge). Supervisors are the "
            "supervisor-<ext> extensions of [supervise] (asterisk-conf/extensions-agents.conf)."
        ),
    )
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("agent", metavar="AGENT", help="the agent's extension, e.g. 1001")
    parser.add_argument(
        "--from",
        dest="supervisor",
        metavar="SUPERVISOR_EXT",
        required=True,
        help="the supervisor's phone, e.g. 1010",
    )
    parser.add_argument(
        "--ring-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long the supervisor's phone rings (default 30)",
    )
    parser.set_defaults(func=lambda a: asyncio.run(_run(a)))
