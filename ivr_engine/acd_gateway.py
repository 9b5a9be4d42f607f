"""The flows' queue gateway when ivr-engine's own ACD routes the calls.

A flow's `queue` node gives the call's queue name, skill expression, priority (app_queue's
sense: higher is more urgent, VIP 10), language and screen-pop data. `AcdQueueGateway`
describes the call to the `acd.router.Router` and ends the flow with `IVR_NEXT=acd`: the
dialplan parks the caller in `[acd-wait]` (music on hold) and tells the router it waits
(UserEvent AcdWaiting). A call the ACD cannot take (a skill expression it refuses, the router
not running) goes the old way, `DialplanQueueGateway`'s app_queue, so the caller still reaches
a person.

The screen pop carries only what the flow put in `data` (the flow lint refuses sensitive
values there) plus the caller's number masked to its last four digits.

`AcdService` is what the composition root builds when a roster exists: the router, its AMI
commands and event bridge, its own MQTT connection for screen pops (QoS 1: the broker has the
pop before the agent's phone rings) and for the agent command channel:

    topic  <prefix>/acd/command      (the daemon subscribes)
    {"id": "<request id, 1-64 of [A-Za-z0-9_.-]>", "verb": "list|login|logout|pause|resume|reload",
     "agent": "1001" (all verbs but list/reload), "reason": "break" (pause only)}
    topic  <prefix>/acd/reply/<id>
    {"id": ..., "ok": true, "agents": [{"agent", "name", "state", "reason", "registered",
     "skills"}]}  or  {"id": ..., "ok": false, "error": "<why>"}

A malformed command is answered with `ok: false` and the reason when it carries a usable id,
and logged otherwise; it never changes an agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiomqtt

from acd.errors import AcdError
from acd.roster import Roster
from acd.router import Publisher, Router
from ivr_engine.acd_extensions import Extension
from ivr_engine.config import MqttSettings
from ivr_engine.errors import ConfigError
from ivr_engine.flow.channel import CallChannel
from ivr_engine.flow.services import DialplanQueueGateway, QueueGateway, QueueOutcome, QueueRequest
from ivr_engine.pbx_commands import AcdAmiBridge, AmiPbxCommands
from ivr_engine.transport.ami import AmiClient

log = logging.getLogger(__name__)

COMMAND_TOPIC = "acd/command"
REPLY_TOPIC = "acd/reply"
VERBS = ("list", "login", "logout", "pause", "resume", "reload")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class CommandError(ValueError):
    """A malformed agent command (the reason goes back on the reply topic)."""


def mask_number(number: str) -> str:
    """'13800138000' -> '*******8000'; short or empty numbers are masked whole."""
    digits = number.strip()
    if len(digits) <= 4:
        return "*" * len(digits)
    return "*" * (len(digits) - 4) + digits[-4:]


class AcdQueueGateway:
    """`QueueGateway` onto the router; `fallback` (app_queue by default) when it refuses."""

    def __init__(self, router: Router, fallback: QueueGateway | None = None) -> None:
        self._router = router
        self._fallback = fallback or DialplanQueueGateway()

    async def enqueue(self, channel: CallChannel, request: QueueRequest) -> QueueOutcome:
        pop = dict(request.data)
        pop.setdefault("caller", mask_number(channel.caller.number))
        try:
            self._router.register(
                request.call_id,
                queue=request.queue,
                requirement=request.skills,
                priority=request.priority,
                language=request.language,
                screen_pop=pop,
            )
        except (AcdError, RuntimeError) as exc:
            log.error(
                "ACD refused call %s for queue %s (%s): app_queue takes it",
                request.call_id,
                request.queue,
                exc,
            )
            return await self._fallback.enqueue(channel, request)
        await channel.set_variable("IVR_NEXT", "acd")
        await channel.set_variable("IVR_QUEUE", request.queue)
        return QueueOutcome("handed_off", detail="acd")


def parse_command(payload: bytes) -> dict[str, str]:
    """Validate one command message; raise CommandError naming what is wrong."""
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise CommandError("a command is a JSON object")
    unknown = set(body) - {"id", "verb", "agent", "reason"}
    if unknown:
        raise CommandError(f"unknown field(s): {', '.join(sorted(unknown))}")
    for key, value in body.items():
        if not isinstance(value, str):
            raise CommandError(f"{key} must be a string")
    if not _REQUEST_ID.match(body.get("id", "")):
        raise CommandError("id must be 1-64 characters of letters, digits and _.-")
    verb = body.get("verb", "")
    if verb not in VERBS:
        raise CommandError(f"verb must be one of {', '.join(VERBS)}, got {verb!r}")
    if verb not in ("list", "reload") and not body.get("agent"):
        raise CommandError(f"{verb} needs an agent")
    if verb == "pause" and not body.get("reason"):
        raise CommandError("pause needs a reason")
    return body


class AcdService:
    """The ACD inside the daemon: router, AMI commands and events, MQTT agent commands."""

    def __init__(
        self,
        roster_path: Path,
        ami: AmiClient,
        publisher: Publisher,
        mqtt: MqttSettings | None,
        *,
        ring_timeout: float = 15.0,
        extensions: Sequence[Extension] = (),
    ) -> None:
        self.roster_path = roster_path
        self.extensions = tuple(extensions)
        self.publisher = publisher
        self.mqtt = mqtt
        try:
            roster = Roster.load(roster_path)
        except AcdError as exc:  # start-up: a configuration error, exit 2 with the file named
            raise ConfigError(str(exc), source="IVR_ACD_ROSTER") from None
        self.router = Router(
            roster,
            AmiPbxCommands(ami),
            publisher,
            ring_timeout=ring_timeout,
            pop_sender=self.send_pop if mqtt is not None else None,
        )
        self.bridge = AcdAmiBridge(ami, self.router)
        self.gateway = AcdQueueGateway(self.router)
        self._publisher = publisher
        self._mqtt = mqtt
        self._task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None
        self.commands_seen = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AcdService]:
        async with self.router, contextlib.AsyncExitStack() as extensions:
            for extension in self.extensions:
                await extensions.enter_async_context(extension(self))
            self.bridge.start()
            if self.bridge.ami_connected:  # connected before we subscribed: read state now
                self.router.spawn(self.bridge.rebuild(), "acd-rebuild-contacts")
            if self._mqtt is not None:
                self._task = asyncio.get_running_loop().create_task(
                    self._commands(self._mqtt), name="acd-commands"
                )
            try:
                yield self
            finally:
                self.bridge.close()
                if self._task is not None:
                    self._task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._task

    def reload(self) -> None:
        """Re-read the roster; a roster that does not load leaves the running one in force."""
        self.router.load_roster(Roster.load(self.roster_path))
        log.info("ACD roster reloaded: %d agents", len(self.router.roster.agents))

    def execute(self, command: Mapping[str, str]) -> dict[str, Any]:
        verb = command["verb"]
        agent = command.get("agent", "")
        if verb == "login":
            self.router.login(agent)
        elif verb == "logout":
            self.router.logout(agent)
        elif verb == "pause":
            self.router.pause(agent, command["reason"])
        elif verb == "resume":
            self.router.resume(agent)
        elif verb == "reload":
            self.reload()
        return {"ok": True, "agents": self.router.agents()}

    async def handle_message(self, payload: bytes) -> None:
        self.commands_seen += 1
        request_id = ""
        try:
            with contextlib.suppress(Exception):
                request_id = str(json.loads(payload).get("id", ""))
            command = parse_command(payload)
            reply = self.execute(command)
        except (CommandError, AcdError) as exc:
            reply = {"ok": False, "error": str(exc)}
        if not _REQUEST_ID.match(request_id):
            log.warning("ACD command without a usable id ignored: %s", reply.get("error", ""))
            return
        self._publisher.publish(f"{REPLY_TOPIC}/{request_id}", {"id": request_id, **reply})

    async def send_pop(self, topic: str, payload: Mapping[str, Any]) -> None:
        """Publish a screen pop with QoS 1 and return once the broker acknowledged it (the
        router rings the agent only then). Without a broker connection: raise, and the router
        publishes through the notifier's buffer and rings anyway."""
        client, settings = self._client, self._mqtt
        if client is None or settings is None:
            raise ConnectionError("no MQTT connection for the screen pop")
        body = {**payload, "at": round(time.time(), 3)}
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str)
        await client.publish(f"{settings.topic_prefix.strip('/')}/{topic}", data, qos=1)

    async def _commands(self, settings: MqttSettings) -> None:
        """A subscriber connection of its own (the notifier subscribes only at connect)."""
        topic = "/".join((settings.topic_prefix.strip("/"), COMMAND_TOPIC))
        delay = 0.5
        while True:
            try:
                async with aiomqtt.Client(
                    settings.host,
                    settings.port,
                    identifier=f"ivr-engine-acd-{id(self):x}",
                    username=settings.username or None,
                    password=settings.password or None,
                    timeout=5,
                ) as client:
                    await client.subscribe(topic, qos=1)
                    self._client = client
                    delay = 0.5
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, bytes):
                            await self.handle_message(payload)
            except aiomqtt.MqttError as exc:
                log.warning("ACD commands: MQTT %s:%d: %s", settings.host, settings.port, exc)
            finally:
                self._client = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
