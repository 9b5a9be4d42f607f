"""The composition root: builds every part of the daemon, wires them, owns their lifetimes.

```
Asterisk --FastAGI--> FastAgiServer --AgiSession--> Engine.handle_call
                                                     |  AgiCallChannel (CallChannel)
                                                     |  Interpreter(flows of this call's version)
                                                     |  Services: CIF sources, queue gateway,
                                                     |            audit sink, call observer
                                                     v
                                  CallRecorder (SQLite)   AuditLog (SQLite)   MqttNotifier
```

Only this module (and `cli.py`) wires concrete classes. A call's task catches `Exception`,
logs it with the call id, and sends the caller to a person: never into silence.

Faults and how the daemon meets them (each proven by a test in `tests/faults/`):

- SIGTERM / SIGINT: stop accepting at once (the listening socket closes, so Asterisk gets
  AGISTATUS=FAILURE and its fallback takes new callers); calls in progress run on until
  `agi.drain_timeout`, then are cancelled, told FAILURE and recorded as `fallback`; the stores
  are flushed; exit 0. The handlers are installed before anything else starts, so a signal
  during start-up stops the daemon cleanly too.
- AMI: the first connect runs before FastAGI serves. Refused credentials (`AmiLoginError`)
  stop start-up: they are a configuration error that retrying cannot fix. A PBX that is not
  there yet is retried for ever with capped backoff by the owned task "ami-connect"; after
  the first login `AmiClient` itself reconnects (Asterisk restarts, half-open connections).
- SIGKILL: nothing to do here; the dialplan's AGISTATUS check sends the caller to a person.
- SQLite full or locked, MQTT broker away: calls never wait on either (`CallRecorder`,
  `CifStore.safe_profile`, `MqttNotifier` buffer and degrade; each says so loudly once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ivr_engine import region
from ivr_engine.agi_channel import AgiCallChannel
from ivr_engine.audit import AuditLog
from ivr_engine.cif.store import CifStore
from ivr_engine.config import Settings
from ivr_engine.errors import AmiError, AmiLoginError
from ivr_engine.events import MqttNotifier
from ivr_engine.flow.deploy import FlowRegistry
from ivr_engine.flow.interpreter import Interpreter
from ivr_engine.flow.services import DialplanQueueGateway, Services
from ivr_engine.log import call_id_var
from ivr_engine.prompts import PromptCatalogue
from ivr_engine.records import CallRecord, CallRecorder, CallRecordStore, Outcome
from ivr_engine.sources import (
    CallContext,
    CallTrace,
    RecordAuditSink,
    RecordingQueueGateway,
    build_sources,
)
from ivr_engine.transport.ami import AmiClient, Backoff
from ivr_engine.transport.fastagi import AgiSession, FastAgiServer

log = logging.getLogger(__name__)

#: FastAGI scripts of [acd-wait] (extensions-acd.conf), answered by the ACD service.
ACD_SCRIPTS = frozenset({"acd-announce", "acd-key"})


class _NullNotifier:
    """Stands in for MQTT when it is disabled in the settings."""

    published = 0
    dropped = 0

    def publish(self, topic: str, payload: Any, *, retain: bool = False, qos: int = 0) -> None:
        return None


class Engine:
    """The daemon: `await Engine(settings).run()` serves calls until `stop()`."""

    def __init__(self, settings: Settings, *, base_dir: str | Path = ".") -> None:
        self.settings = settings
        # Absolute: Asterisk resolves the prompt paths we hand it, not relative to our cwd.
        self.base = Path(base_dir).resolve()
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.calls_started = 0
        self.calls_failed = 0
        self.server: FastAgiServer | None = None
        self.cif: CifStore | None = None
        self.recorder: CallRecorder | None = None
        self.audit: AuditLog | None = None
        self.notifier: MqttNotifier | _NullNotifier = _NullNotifier()
        self.ami: AmiClient | None = None
        self.catalogue: PromptCatalogue | None = None
        self.registry: FlowRegistry | None = None
        self._ami_task: asyncio.Task[None] | None = None
        self.acd: Any = None  # ACD (issue 6): an AcdService when a roster is configured

    def path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.base / p

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, install_signals: bool = False) -> None:
        s = self.settings
        if install_signals:
            # First: a SIGTERM during start-up must stop the daemon cleanly, not kill it.
            self._install_signals()
        self.catalogue = PromptCatalogue.load(self.path(s.prompts.dir))
        self.registry = FlowRegistry(
            self.path(s.flows.deploy_dir),
            entry=s.flows.entry,
            catalogue=self.catalogue,
            fallback=self.path(s.flows.dir),
        )
        flows = self.registry.current()  # a flow set that does not load stops start-up here
        region.warm()  # the geocoder's data: loaded before the first caller, not by them
        for p in (s.store.path, s.store.audit_path):
            self.path(p).parent.mkdir(parents=True, exist_ok=True)
        async with contextlib.AsyncExitStack() as stack:
            self.cif = await CifStore.open(self.path(s.store.path))
            stack.push_async_callback(self.cif.close)
            store = await CallRecordStore.open(self.path(s.store.path))
            stack.push_async_callback(store.close)
            self.recorder = await stack.enter_async_context(CallRecorder(store))
            self.audit = await AuditLog.open(self.path(s.store.audit_path))
            stack.push_async_callback(self.audit.close)
            if s.mqtt.enabled:
                # One client id per process: MQTT brokers disconnect the older of two clients
                # with the same id, so two daemons on one broker (a standby, a test run) with a
                # fixed id would knock each other off every few seconds and lose events.
                notifier = MqttNotifier(
                    s.mqtt, client_id=f"ivr-engine-{socket.gethostname()}-{os.getpid()}"
                )
                await notifier.start()
                stack.push_async_callback(notifier.close)
                self.notifier = notifier
            if s.ami.enabled:
                self.ami = AmiClient(s.ami)
                stack.push_async_callback(self.ami.close)
                if not await self._first_ami_connect():
                    self._ami_task = asyncio.get_running_loop().create_task(
                        self._keep_connecting_ami(), name="ami-connect"
                    )
                    stack.push_async_callback(self._stop_ami_task)
            # --- ACD (issue 6): ivr-engine routes queued calls itself (`[acd]`, on by default;
            # it needs AMI). Off, the dialplan's app_queue holds them. The environment variable
            # IVR_ACD_ROSTER (older scripts) still names a roster ("" = acd.roster) and turns
            # the ACD on.
            acd_roster = os.environ.get("IVR_ACD_ROSTER")
            if (s.acd.enabled or acd_roster is not None) and self.ami is not None:
                from ivr_engine.acd_extensions import EXTENSIONS
                from ivr_engine.acd_gateway import AcdService

                acd = AcdService(
                    self.path(acd_roster or s.acd.roster),
                    self.ami,
                    self.notifier,
                    s.mqtt if s.mqtt.enabled else None,
                    extensions=EXTENSIONS,
                    settings=s.acd,
                    catalogue=self.catalogue,
                )
                self.acd = await stack.enter_async_context(acd.running())
            elif s.acd.enabled:
                log.warning("acd.enabled but AMI is off: app_queue holds queued callers")
            # --- end ACD
            if self._stop.is_set():
                log.info("stopped during start-up")
                return
            self.server = FastAgiServer.from_settings(self.handle_call, s.agi)
            await self.server.start()
            stack.push_async_callback(self.server.close)  # stop accepting, drain, cancel
            if self.registry is not None and install_signals:
                self.registry.install_sighup(asyncio.get_running_loop())
            log.info(
                "serving FastAGI on %s:%d (flows %s, entry %r)",
                s.agi.host,
                self.server.port,
                flows.version,
                flows.entry,
            )
            self.ready.set()
            await self._stop.wait()
            log.info("stopping: no new calls; %d in progress", self.server.active_sessions)

    async def _first_ami_connect(self) -> bool:
        """True when logged in. Refused credentials raise (start-up stops); a PBX that is not
        reachable is logged and retried in the background: calls do not depend on AMI."""
        if self.ami is None:
            return False
        try:
            await self.ami.connect()
        except AmiLoginError:
            raise
        except AmiError as exc:
            log.warning("AMI not connected yet (%s); retrying in the background", exc)
            return False
        return True

    async def _keep_connecting_ami(self, backoff: Backoff | None = None) -> None:
        """Until the first login: connect with capped backoff. Afterwards `AmiClient`'s own
        supervisor keeps the connection up."""
        backoff = backoff or Backoff()
        attempt = 0
        while self.ami is not None:
            await asyncio.sleep(backoff.delay(attempt))
            attempt += 1
            try:
                await self.ami.connect()
            except AmiLoginError as exc:
                # The PBX came up with other credentials: loud, every time, and keep trying
                # (an admin may fix manager.conf without restarting the daemon).
                log.error("AMI: %s", exc)
            except AmiError as exc:
                log.log(
                    logging.WARNING if attempt % 10 == 1 else logging.DEBUG,
                    "AMI still not connected after %d attempt(s): %s",
                    attempt,
                    exc,
                )
            else:
                log.info("AMI connected after %d attempt(s)", attempt)
                return

    async def _stop_ami_task(self) -> None:
        task, self._ami_task = self._ami_task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_signal, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._on_signal, "SIGINT")

    def _on_signal(self, name: str) -> None:
        if self._stop.is_set():
            log.warning("%s again: already stopping (calls drain until agi.drain_timeout)", name)
        else:
            log.info("%s: stopping", name)
        self.stop()

    # ------------------------------------------------------------------ one call

    async def handle_call(self, session: AgiSession) -> None:
        env = session.env
        call_id = env.uniqueid or f"local-{time.monotonic_ns()}"
        token = call_id_var.set(call_id)
        self.calls_started += 1
        record: CallRecord | None = None
        try:
            if self.registry is None or self.catalogue is None or self.recorder is None:
                raise RuntimeError("engine not started")
            script = env.network_script.strip("/")
            if script in ACD_SCRIPTS:
                # A caller waiting in [acd-wait]: an announcement or a key, not a new call.
                if self.acd is not None:
                    await self.acd.handle_agi(session, script)
                return
            flows = self.registry.current()
            script = script or (flows.entry or "")
            channel = AgiCallChannel(session, sound_dir=str(self.catalogue.sound_root()))
            record = CallRecord.start(
                call_id,
                channel.caller.number or None,
                flow_name=script,
                flow_version=flows.version,
            )
            ctx = CallContext(call_id=call_id, record=record)
            services = Services(
                sources=build_sources(self, ctx),
                queue=RecordingQueueGateway(
                    self.acd.gateway if self.acd is not None else DialplanQueueGateway(),  # ACD
                    ctx,
                    self.notifier,
                ),
                audit=RecordAuditSink(self.audit, ctx),
                observer=CallTrace(ctx, self.notifier),
            )
            self.notifier.publish(
                f"call/{call_id}/CallStarted",
                {"event": "CallStarted", "call_id": call_id, "caller": record.caller},
            )
            interpreter = Interpreter(flows, services, self.catalogue)
            outcome = await interpreter.run(channel, script, flows=flows)
            ctx.finish(outcome)
        except asyncio.CancelledError:
            # Shutdown deadline: the server tells Asterisk FAILURE and the dialplan's fallback
            # takes the caller; the record says so.
            if record is not None and record.outcome is None:
                record.event("shutdown", handed_to="fallback")
                record.end(Outcome.FALLBACK)
            raise
        except Exception:
            self.calls_failed += 1
            log.exception("call failed; sending the caller to a person")
            if record is not None:
                record.end(Outcome.ERROR)
            # FAILURE makes AGISTATUS=FAILURE: the dialplan's fallback takes the caller.
            await session.end_with_failure()
        finally:
            if record is not None:
                self.recorder.submit(record)  # type: ignore[union-attr]
                self.notifier.publish(
                    f"call/{call_id}/CallEnded",
                    {"event": "CallEnded", "call_id": call_id, "outcome": str(record.outcome)},
                )
            call_id_var.reset(token)


async def serve(settings: Settings, *, on_ready: Callable[[Engine], None] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; 0 after a clean stop. Start-up errors raise."""
    engine = Engine(settings)
    announce: asyncio.Task[None] | None = None
    if on_ready is not None:
        callback = on_ready

        async def announce_ready() -> None:
            await engine.ready.wait()
            callback(engine)

        announce = asyncio.get_running_loop().create_task(announce_ready(), name="announce-ready")
    try:
        await engine.run(install_signals=True)
    finally:
        if announce is not None:
            announce.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await announce
    return 0
