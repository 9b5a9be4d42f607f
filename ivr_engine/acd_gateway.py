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

A malformed command is answered with `ok: false` and the reason when it carries a usable id
(one that does not parse, e.g. too big or too deep, is searched for `"id": "..."` near its
start), and logged otherwise; it never changes an agent.

While a caller waits, [acd-wait] runs two short FastAGI scripts that `Engine` hands here:
`acd-announce` (every `acd.announce_every` seconds: the caller's position and estimated wait
in the caller's language, and the keys offered) and `acd-key` (a key pressed while waiting:
the operator key leaves the queue for the operators where the roster allows it; the callback
key keeps the caller's place and ends the call, and the router originates the callback from
the reserved agent's phone: `AcdService.place`).

The call's description also travels in the caller's channel variables (IVR_QUEUE,
IVR_SKILLS, IVR_PRIORITY, IVR_LANGUAGE, ACD_CALLER, ACD_POP: the screen pop, already masked,
URL-encoded), so that after a daemon restart `AcdAmiBridge.rebuild_waiting` can re-enter the
callers still waiting in [acd-wait].
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import aiomqtt

from acd.errors import AcdError
from acd.hugepages import collapse_heap
from acd.roster import Roster
from acd.router import Publisher, RoutedCall, Router
from ivr_engine.acd_extensions import Extension
from ivr_engine.config import AcdSettings, MqttSettings
from ivr_engine.errors import AgiError, AmiError, ConfigError, PromptError
from ivr_engine.flow.channel import CallChannel
from ivr_engine.flow.services import DialplanQueueGateway, QueueGateway, QueueOutcome, QueueRequest
from ivr_engine.pbx_commands import AcdAmiBridge, AmiPbxCommands
from ivr_engine.prompts import PromptCatalogue, Utterance, language_chain
from ivr_engine.transport.ami import AmiClient
from ivr_engine.transport.fastagi import AgiSession

log = logging.getLogger(__name__)

COMMAND_TOPIC = "acd/command"
#: Seconds between the wait loop's wake-ups when announcements are off (see ACD_ANNOUNCE).
QUIET_WAKE = 60
#: A command is a few short strings; anything larger is refused before it is parsed.
MAX_COMMAND_BYTES = 4096
REPLY_TOPIC = "acd/reply"
VERBS = ("list", "login", "logout", "pause", "resume", "reload")
#: A request id is a topic level: matched whole (`$` would let a final newline through).
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
#: The id of a command that does not parse, looked for in its first ID_SEARCH_BYTES.
_ID_FIELD = re.compile(rb'"id"\s*:\s*"([A-Za-z0-9_.\-]{1,64})"')
ID_SEARCH_BYTES = 4096


class CommandError(ValueError):
    """A malformed agent command (the reason goes back on the reply topic)."""


def mask_number(number: str) -> str:
    """'13800138000' -> '*******8000'; short or empty numbers are masked whole."""
    digits = number.strip()
    if len(digits) <= 4:
        return "*" * len(digits)
    return "*" * (len(digits) - 4) + digits[-4:]


def encode_pop(pop: Mapping[str, str]) -> str:
    """The (masked) screen pop as one channel variable value: URL-encoded, no commas,
    quotes or spaces that AGI or the dialplan would split on."""
    return urllib.parse.urlencode(sorted(pop.items()))


def decode_pop(text: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(text, keep_blank_values=True))


class AcdQueueGateway:
    """`QueueGateway` onto the router; `fallback` (app_queue by default) when it refuses."""

    def __init__(
        self,
        router: Router,
        fallback: QueueGateway | None = None,
        *,
        settings: AcdSettings | None = None,
        catalogue: PromptCatalogue | None = None,
    ) -> None:
        self._router = router
        self._fallback = fallback or DialplanQueueGateway()
        self._settings = settings or AcdSettings()
        self._catalogue = catalogue

    def _voicemail_prompt(self, language: str) -> str:
        """The voicemail apology's sound paths for Playback() (`&`-joined), or ""."""
        cat = self._catalogue
        if cat is None:
            return ""
        root = PurePosixPath(str(cat.sound_root()))
        try:
            return "&".join(
                str(root / u.file) for u in cat.render("queue_voicemail", language_chain(language))
            )
        except PromptError:
            return ""

    async def enqueue(self, channel: CallChannel, request: QueueRequest) -> QueueOutcome:
        pop = dict(request.data)
        pop.setdefault("caller", mask_number(channel.caller.number))
        number = channel.caller.number
        # a number to call back: digits only ("anonymous" and withheld callers get no callback)
        caller = number if number.lstrip("+").isdigit() and not channel.caller.withheld else ""
        try:
            self._router.register(
                request.call_id,
                queue=request.queue,
                requirement=request.skills,
                priority=request.priority,
                language=request.language,
                screen_pop=pop,
                caller=caller,
            )
        except (AcdError, RuntimeError) as exc:
            log.error(
                "ACD refused call %s for queue %s (%s): app_queue takes it",
                request.call_id,
                request.queue,
                exc,
            )
            return await self._fallback.enqueue(channel, request)
        s = self._settings
        # The call's description, for the dialplan, the witnesses and a restarted daemon.
        for name, value in (
            ("IVR_QUEUE", request.queue),
            ("IVR_PRIORITY", str(request.priority)),
            ("IVR_SKILLS", request.skills),
            ("IVR_LANGUAGE", request.language),
            *((f"IVR_DATA_{k.upper()}", v) for k, v in request.data.items()),
            ("ACD_CALLER", caller),
            ("ACD_POP", encode_pop(pop)),
            # Channel variables shadow the [globals] of the same name in extensions.conf.
            ("ACD_RING", str(max(1, round(s.ring_timeout)))),
            # Announcements off: the wait loop still wakes every minute (a silent acd-announce), so
            # its safety nets (max wait, a daemon gone) act within a minute, not two hours.
            ("ACD_ANNOUNCE", str(round(s.announce_every) if s.announce_every else QUIET_WAKE)),
            ("ACD_REC_DIR", s.recordings_dir.rstrip("/")),
            ("ACD_VM_PROMPT", self._voicemail_prompt(request.language)),
            ("IVR_NEXT", "acd"),
        ):
            await channel.set_variable(name, value)
        return QueueOutcome("handed_off", detail="acd")


def request_id_of(payload: bytes) -> str:
    """The id a command's reply goes under, or "" when it has none that is usable.

    Read from the parsed object; a command too big to parse, nested too deeply or not JSON is
    searched near its start instead, so that its sender still hears why it was refused rather
    than waiting for its own timeout."""
    if len(payload) <= MAX_COMMAND_BYTES:
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError):  # ValueError: not JSON, not UTF-8, huge numbers
            pass
        else:
            value = body.get("id") if isinstance(body, dict) else None
            return value if isinstance(value, str) and _REQUEST_ID.fullmatch(value) else ""
    match = _ID_FIELD.search(payload[:ID_SEARCH_BYTES])
    return match.group(1).decode() if match else ""


def parse_command(payload: bytes) -> dict[str, str]:
    """Validate one command message; raise CommandError naming what is wrong."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"command is {len(payload)} bytes; at most {MAX_COMMAND_BYTES}")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f"not JSON: {exc}") from None
    except RecursionError:
        raise CommandError("not JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer past Python's 4,300-digit limit
        raise CommandError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise CommandError("a command is a JSON object")
    unknown = set(body) - {"id", "verb", "agent", "reason"}
    if unknown:
        raise CommandError(f"unknown field(s): {', '.join(sorted(unknown))}")
    for key, value in body.items():
        if not isinstance(value, str):
            raise CommandError(f"{key} must be a string")
    if not _REQUEST_ID.fullmatch(body.get("id", "")):
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
        ring_timeout: float | None = None,
        extensions: Sequence[Extension] = (),
        settings: AcdSettings | None = None,
        catalogue: PromptCatalogue | None = None,
    ) -> None:
        self.roster_path = roster_path
        self.extensions = tuple(extensions)
        self.publisher = publisher
        self.mqtt = mqtt
        self.settings = s = settings or AcdSettings()
        self.catalogue = catalogue
        self.ami = ami
        try:
            roster = Roster.load(roster_path)
        except AcdError as exc:  # start-up: a configuration error, exit 2 with the file named
            raise ConfigError(str(exc), source="acd.roster") from None
        self.router = Router(
            roster,
            AmiPbxCommands(ami),
            publisher,
            ring_timeout=ring_timeout if ring_timeout is not None else s.ring_timeout,
            max_misses=s.max_misses,
            pop_sender=self.send_pop if mqtt is not None else None,
        )
        r = self.router
        r.callback_key, r.operator_key = s.callback_key, s.operator_key
        r.callback_retries, r.callback_retry_after = s.callback_retries, s.callback_retry_after
        r.callback_placer = self
        self.bridge = AcdAmiBridge(ami, self.router)
        self.gateway = AcdQueueGateway(self.router, settings=s, catalogue=catalogue)
        self.announcements = 0
        self._publisher = publisher
        self._mqtt = mqtt
        self._task: asyncio.Task[None] | None = None
        self._huge: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None
        self.commands_seen = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AcdService]:
        async with self.router, contextlib.AsyncExitStack() as extensions:
            for extension in self.extensions:
                await extensions.enter_async_context(extension(self))
            self.bridge.start()
            if self.bridge.ami_connected:  # connected before we subscribed: read state now
                self.router.spawn(self.bridge.rebuild_all(), "acd-rebuild")
            loop = asyncio.get_running_loop()
            if self._mqtt is not None:
                self._task = loop.create_task(self._commands(self._mqtt), name="acd-commands")
            stop_collapse = threading.Event()
            if self.settings.huge_pages_every:
                self._huge = loop.create_task(
                    self._huge_pages(self.settings.huge_pages_every, stop_collapse),
                    name="acd-huge-pages",
                )
            try:
                yield self
            finally:
                self.bridge.close()
                stop_collapse.set()  # a collapse under way in its thread ends at its next range
                tasks = [t for t in (self._task, self._huge) if t is not None]
                for task in tasks:
                    task.cancel()
                if tasks:
                    await asyncio.wait(tasks)  # our own cancellation still propagates
                for task in tasks:
                    if not task.cancelled() and task.exception() is not None:
                        log.error("acd: task %s failed", task.get_name(), exc_info=task.exception())

    #: Seconds from start-up to the first collapse: agents log in from the PBX's contact states
    #: after the AMI connects, and the collapse should find them in.
    huge_pages_first = 60.0

    async def _huge_pages(self, every: float, stop: threading.Event) -> None:
        """Keep the matcher's memory on 2 MiB pages (acd/hugepages.py): a minute after start-up,
        then every `every` seconds, for what was allocated since. In a worker thread: the
        madvise call copies memory (about 2 s per GB the first time) and releases the GIL."""
        await asyncio.sleep(min(self.huge_pages_first, every))
        while True:
            try:
                result = await asyncio.to_thread(collapse_heap, stop=stop)
            except Exception:  # collapse_heap reports instead of raising; this is a backstop
                log.exception("acd: collapsing the heap into huge pages failed")
            else:
                if not result.supported:
                    log.info("acd: the heap stays on 4 KiB pages: %s", result.reason)
                    return
                log.log(
                    logging.INFO if result.failures else logging.DEBUG,
                    "acd: %.0f MB on huge pages, %.0f MB too sparse left alone (refused: %s), "
                    "%.3f s",
                    result.collapsed_mb,
                    result.sparse_mb,
                    dict(result.failures) or "none",
                    result.seconds,
                )
            await asyncio.sleep(every)

    # ------------------------------------------------------------------ waiting callers (AGI)

    async def handle_agi(self, session: AgiSession, script: str) -> None:
        """[acd-wait]'s scripts: `acd-announce` and `acd-key` (argument 1: the key). A caller
        the router does not know (any more) hears nothing and keeps waiting."""
        call_id = session.env.uniqueid
        if script == "acd-key":
            await self._key(session, call_id, session.env.get("agi_arg_1"))
        else:
            await self._announce(session, call_id)

    def _sounds(self) -> PromptCatalogue:
        if self.catalogue is None:
            raise PromptError("no prompt catalogue for the ACD's announcements")
        return self.catalogue

    async def _play(self, session: AgiSession, utterances: list[Utterance], keys: str) -> str:
        root = PurePosixPath(str(self._sounds().sound_root()))
        for utterance in utterances:
            digit = await session.stream_file(str(root / utterance.file), keys, sensitive=True)
            if digit:
                return digit
        return ""

    def announcement(self, call_id: str) -> tuple[list[Utterance], str, dict[str, Any]] | None:
        """What a waiting caller hears now, the keys that interrupt it, and what it says."""
        router = self.router
        info = router.wait_info(call_id)
        call = router.calls.get(call_id)
        if info is None or call is None:
            return None
        cat, langs = self._sounds(), language_chain(call.language)
        out: list[Utterance] = []
        if cat.can_say("ordinal", info.position, langs[0]):  # 1-99: beyond, no place is said
            out += cat.render("queue_position", langs, {"position": info.position})
        minutes = None if info.estimate is None else max(1, math.ceil(info.estimate / 60))
        if minutes is None:
            out += cat.render("queue_busy_apology", langs)
        elif minutes < 2:
            out += cat.render("queue_wait_short", langs)
        else:
            out += cat.render("queue_wait", langs, {"minutes": minutes})
        policy = router.roster.policy(call.queue)
        keys = ""
        if policy.callback and call.caller and self.settings.callback_key:
            keys += self.settings.callback_key
            out += cat.render("queue_callback_key", langs, {"key": self.settings.callback_key})
        if policy.operator and self.settings.operator_key:
            keys += self.settings.operator_key
            out += cat.render("queue_operator_key", langs, {"key": self.settings.operator_key})
        said = {
            "position": info.position,
            "estimate": None if info.estimate is None else round(info.estimate, 1),
            "minutes": minutes,
            "agents": info.agents,
            "handle_time": round(info.handle_time, 1),
            "keys": keys,
            "language": langs[0],
        }
        return out, keys, said

    async def _announce(self, session: AgiSession, call_id: str) -> None:
        if not self.settings.announce_every:
            return  # announcements off: the loop only woke to check it is still served
        found = self.announcement(call_id)
        if found is None:
            log.debug("acd-announce for %s: not waiting in the ACD", call_id)
            return
        utterances, keys, said = found
        self.announcements += 1
        log.info("acd-announce %s: %s", call_id, said)
        self.publisher.publish(
            f"acd/call/{call_id}/announced", {"event": "WaitAnnounced", "call_id": call_id, **said}
        )
        try:
            key = await self._play(session, utterances, keys)
        except AgiError as exc:  # hung up, or redirected to an agent mid-sentence
            log.debug("acd-announce %s cut short: %s", call_id, exc)
            return
        if key:
            await self._key(session, call_id, key)

    async def _key(self, session: AgiSession, call_id: str, key: str) -> None:
        action = self.router.key_pressed(call_id, key)
        log.info("acd-key %s: key pressed -> %s", call_id, action or "keep waiting")
        call_lang = session.env.get("agi_arg_2") or "cmn"
        try:
            await session.set_variable("ACD_KEY", action)
            if action == "operator":
                await session.set_variable("IVR_NEXT", "operator")
                cat = self._sounds()
                await self._play(session, cat.render("operator", language_chain(call_lang)), "")
            elif action == "callback":
                call = self.router.calls.get(call_id)
                langs = language_chain(call.language if call is not None else call_lang)
                number = call.caller if call is not None else ""
                cat = self._sounds()
                await self._play(
                    session, cat.render("callback_confirmed", langs, {"number": number}), ""
                )
        except AgiError as exc:
            log.debug("acd-key %s: caller gone (%s)", call_id, exc)

    # ------------------------------------------------------------------ callbacks

    async def place(self, call: RoutedCall, agent: str, endpoint: str) -> None:
        """`CallbackPlacer`: Originate the agent's phone into [acd-callback]; there the agent
        hears who it is, then the customer's number is dialled. An agent who does not answer
        is a ring-no-answer (the call keeps its place)."""
        s = self.settings
        intro: list[Utterance] = []
        if self.catalogue is not None:
            # The agents' own language is not in the roster: the hotline's default.
            intro = self.catalogue.render(
                "callback_agent_intro", language_chain("cmn"), {"number": call.caller}
            )
        root = PurePosixPath(str(self.catalogue.sound_root())) if self.catalogue else None
        sounds = "&".join(str(root / u.file) for u in intro) if root is not None else ""
        action_id = await self.ami.originate(
            channel=endpoint,
            context="acd-callback",
            exten="s",
            caller_id=f'"Callback {mask_number(call.caller)}" <{agent}>',
            variables={
                "ACD_CALL": call.call_id,
                "ACD_AGENT": agent,
                "ACD_DIAL": s.callback_dial.format(number=call.caller),
                "ACD_CB_RING": str(round(s.callback_ring)),
                "ACD_INTRO": sounds,
                "ACD_REC_DIR": s.recordings_dir.rstrip("/"),
            },
            ring_timeout=self.router.ring_timeout,
        )
        self.router.spawn(
            self._callback_outcome(action_id, call.call_id, agent),
            f"acd-callback-wait-{call.call_id}",
        )

    async def _callback_outcome(self, action_id: str, call_id: str, agent: str) -> None:
        try:
            response = await self.ami.originate_response(
                action_id, timeout=self.router.ring_timeout + 15
            )
        except AmiError as exc:
            log.warning("callback %s: no originate outcome (%s): the guard requeues", call_id, exc)
            return
        if not response.success:
            log.info(
                "callback %s: agent %s did not answer (reason %s)", call_id, agent, response.reason
            )
            self.router.dial_result(call_id, agent, "NOANSWER")

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
        request_id = request_id_of(payload)
        try:
            command = parse_command(payload)
            reply = self.execute(command)
        except (CommandError, AcdError) as exc:
            reply = {"ok": False, "error": str(exc)}
        if not request_id:
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
                        if not isinstance(payload, bytes):
                            continue
                        try:
                            await self.handle_message(payload)
                        except Exception:  # one bad message must not end agent commands
                            log.exception("ACD command not handled")
            except aiomqtt.MqttError as exc:
                log.warning("ACD commands: MQTT %s:%d: %s", settings.host, settings.port, exc)
            finally:
                self._client = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
