"""AMI client: panoramisk's `Manager`, guarded.

`AmiClient` owns one connection to Asterisk's manager interface at a time and keeps it up:

- `connect()` logs in or raises: `AmiLoginError` when the PBX refuses the credentials,
  `AmiDisconnected` (naming host:port) when the TCP connect fails. No silent retry loop.
- Once connected, a supervisor task reconnects after a drop with capped exponential backoff and
  jitter; subscribers see `AmiConnected`/`AmiDisconnected` events, so the daemon can re-read
  state after Asterisk restarts.
- Half-open detection: a `Ping` every half `ping_interval`, whose reply must be `Response:
  Success` with `Ping: Pong` within the other half. Silence is therefore noticed at most one
  `ping_interval` after the last proof of life; the transport is aborted and the client
  reconnects.
- Actions in flight when the connection dies fail with `AmiDisconnected` and are never sent
  again: an `Originate` replayed after a reconnect would place a second call.

What is switched off in panoramisk 1.4 and why:
- `AMIProtocol.close()` moves every action still waiting for its first reply into
  `Manager.awaiting_actions`, and `Manager.__init__` registers `send_awaiting_actions` on the
  `FullyBooted` event, which re-sends them after the next login. `_GuardedProtocol.close` never
  queues, `_GuardedManager` drops that `FullyBooted` hook and overrides `send_awaiting_actions`.
- `Manager.connection_lost` reconnects every `reconnect_timeout` seconds with untracked tasks;
  `Manager.ping` sends a Ping whose reply nobody reads. Both are replaced by `AmiClient`'s owned
  tasks.
- `AMIProtocol.data_received` decodes each chunk alone; `_GuardedProtocol` uses the incremental
  `AmiFramer` (see `ivr_engine.protocol.ami`).

The secret is sent in the Login action only; it appears in no log line, exception or repr.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import random
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from panoramisk.ami_protocol import AMIProtocol
from panoramisk.manager import Manager

from ivr_engine.config import AmiSettings
from ivr_engine.errors import (
    AmiActionError,
    AmiDisconnected,
    AmiError,
    AmiLoginError,
    ConfigError,
)
from ivr_engine.protocol.ami import (
    ActionValue,
    AmiEvent,
    AmiFrame,
    AmiFramer,
    AmiProtocolError,
    AmiResponse,
    Fields,
    OriginateResponse,
    PendingAction,
    encode_action,
    parse_event,
)

log = logging.getLogger(__name__)

EventCallback = Callable[[AmiEvent], None]

CONNECTED = "AmiConnected"
DISCONNECTED = "AmiDisconnected"


class AmiTimeout(AmiError):
    """No reply to an action within its timeout (the connection may still be up)."""


class AmiActionFailed(AmiActionError):
    """`Response: Error` to an action; `reason` is Asterisk's own `Message:`."""

    def __init__(self, action: str, reason: str) -> None:
        self.reason = reason
        super().__init__(f"{action}: {reason}", action=action)


@dataclass(frozen=True)
class AmiConnectionMade(AmiEvent):
    """Synthetic event `AmiConnected`: logged in (again). Re-read PBX state on this one."""

    address: str
    version: str
    reconnect: bool


@dataclass(frozen=True)
class AmiConnectionLost(AmiEvent):
    """Synthetic event `AmiDisconnected`: the connection is gone; actions in flight failed."""

    address: str
    reason: str


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with "equal jitter": the delay for attempt n is drawn from
    [b/2, b] where b = min(cap, initial * factor**n), so a fleet of clients does not reconnect
    in lockstep after an Asterisk restart, and none hammers it."""

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 30.0

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.cap) or self.factor < 1:
            raise ValueError(f"bad backoff {self!r}: need 0 < initial <= cap and factor >= 1")

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        base = self.initial
        for _ in range(attempt):
            base *= self.factor
            if base >= self.cap:
                break
        base = min(base, self.cap)
        return base / 2 + rand() * base / 2


class _Sent:
    """One action awaiting its reply on one connection."""

    __slots__ = ("pending", "future")

    def __init__(self, pending: PendingAction, future: asyncio.Future[PendingAction]) -> None:
        self.pending = pending
        self.future = future


class _GuardedProtocol(AMIProtocol):  # type: ignore[misc]
    """panoramisk's protocol with an incremental decoder and no resend queue."""

    closed: bool = False
    abort_reason: str | None = None

    def __init__(self, client: AmiClient) -> None:
        super().__init__()
        self._client = client
        loop = asyncio.get_running_loop()
        self.banner: asyncio.Future[str] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.sent: dict[str, _Sent] = {}
        # Events that arrive with the Login reply (FullyBooted does) wait here, so that
        # subscribers see AmiConnected first.
        self.early_events: list[AmiEvent] = []
        # Events no subscriber wants are dropped before they are parsed.
        self.framer = AmiFramer(wants_event=client._wants_event)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.log = log  # panoramisk sets its own; ours never logs message contents

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except AmiProtocolError as exc:
            log.error("AMI %s: %s; closing the connection", self._client.address, exc)
            if not self.banner.done():
                self.banner.set_exception(exc)  # connect() reports why
                self.banner.exception()
            self.abort(str(exc))
            return
        if self.framer.version is not None and not self.banner.done():
            self.banner.set_result(self.framer.version)
        for frame in frames:
            self._client._on_frame(self, frame)

    def eof_received(self) -> bool:
        return False  # close our side too; the connection is over

    def send(self, data: Any, as_list: Any = False) -> Any:
        # panoramisk's send path has its own reply bookkeeping (and the resend queue).
        raise AmiError("send actions through AmiClient.action(), not the panoramisk Manager")

    def write(self, data: bytes) -> None:
        if self.closed:
            raise AmiDisconnected(f"AMI connection to {self._client.address} is closed")
        self.transport.write(data)

    def abort(self, reason: str | None = None) -> None:
        """Drop the connection now, unsent bytes included (a half-open peer will not read)."""
        if not self.closed:
            self.closed = True
            self.abort_reason = reason
            self.transport.abort()

    def close(self) -> None:
        # Unlike AMIProtocol.close: never queue unanswered actions for re-sending.
        if not self.closed:
            self.closed = True
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.banner.done():
            self.banner.set_exception(
                AmiDisconnected(f"AMI at {self._client.address} closed before its banner")
            )
            self.banner.exception()  # retrieved here; the waiter (if any) still sees it
        sent, self.sent = self.sent, {}
        for item in sent.values():
            if not item.future.done():
                item.future.set_exception(
                    AmiDisconnected(
                        f"AMI connection to {self._client.address} lost before the reply to "
                        f"{item.pending.action} (ActionID {item.pending.action_id}); "
                        "not re-sent"
                    )
                )
                item.future.exception()
        if not self.lost.done():
            self.lost.set_result(None)
        self._client._on_connection_lost(self, exc)


class _GuardedManager(Manager):  # type: ignore[misc]
    """panoramisk's Manager with its own reconnect, ping and resend machinery switched off.

    It keeps the configuration and the current protocol; `AmiClient` drives it."""

    patterns: list[Any]
    protocol: Any

    def __init__(self, client: AmiClient, settings: AmiSettings) -> None:
        super().__init__(
            host=settings.host,
            port=settings.port,
            username=settings.username,
            secret=settings.secret,
            events="on",
            loop=asyncio.get_running_loop(),
            protocol_factory=lambda: _GuardedProtocol(client),
            forgetable_actions=(),
        )
        # Manager.__init__ registered send_awaiting_actions on FullyBooted: the resend path.
        self.callbacks.pop("FullyBooted", None)
        self.patterns = [(p, r) for p, r in self.patterns if p != "FullyBooted"]

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        raise AmiError("use AmiClient.connect(); Manager.connect would retry without bound")

    def connection_made(self, f: Any) -> None:
        raise AmiError("use AmiClient.connect()")

    def ping(self) -> None:
        raise AmiError("pings are sent and checked by AmiClient")

    async def send_awaiting_actions(self, *_: Any) -> None:
        # Nothing is ever re-sent after a reconnect; see the module docstring.
        if self.awaiting_actions:
            log.error("dropping %d AMI actions queued for re-sending", len(self.awaiting_actions))
            self.awaiting_actions.clear()

    def connection_lost(self, exc: Any) -> None:
        self._connected = False  # no reconnect here: AmiClient's supervisor does that
        self.authenticated = False
        self.protocol = None

    async def open(self, timeout: float) -> _GuardedProtocol:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        address = f"{self.config['host']}:{self.config['port']}"
        try:
            async with asyncio.timeout(timeout):
                _, protocol = await loop.create_connection(
                    self.config["protocol_factory"], self.config["host"], self.config["port"]
                )
        except TimeoutError:
            raise AmiDisconnected(
                f"cannot connect to AMI at {address}: no answer within {timeout:g}s"
            ) from None
        except OSError as exc:
            raise AmiDisconnected(
                f"cannot connect to AMI at {address}: {exc.strerror or exc}"
            ) from None
        if not isinstance(protocol, _GuardedProtocol):
            raise AmiError(f"unexpected protocol {type(protocol).__name__}")
        return protocol


class EventStream:
    """Async iterator over AMI events with a bounded queue.

    When the consumer falls behind, new events are dropped and counted (`dropped`), with one
    warning per overflow episode; the iterator ends when the stream or the client is closed."""

    _END: Any = object()

    def __init__(
        self,
        client: AmiClient,
        names: Sequence[str],
        maxsize: int,
        on_close: Callable[[EventStream], None],
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        # One slot more than asked, so the end marker always fits.
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize + 1)
        self._maxsize = maxsize
        self.dropped = 0
        self._overflowing = False
        self._closed = False
        self._on_close = on_close
        self._unsubscribe = [client.subscribe(name, self._put) for name in names]

    def _put(self, event: AmiEvent) -> None:
        if self._closed:
            return
        if self._queue.qsize() >= self._maxsize:
            self.dropped += 1
            if not self._overflowing:
                self._overflowing = True
                log.warning("AMI event stream full (%d); dropping events", self._maxsize)
            return
        self._overflowing = False
        self._queue.put_nowait(event)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._on_close(self)
        self._queue.put_nowait(self._END)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> AmiEvent:
        item = await self._queue.get()
        if item is self._END:
            self._queue.put_nowait(self._END)  # later calls end too
            raise StopAsyncIteration
        event: AmiEvent = item
        return event

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AmiClient:
    """The engine's AMI connection. Create inside the running loop; `await connect()` first.

    ```
    client = AmiClient(settings.ami)
    await client.connect()
    client.subscribe("Hangup", on_hangup)
    channels = await client.action({"Action": "CoreShowChannels"})
    action_id = await client.originate(channel="PJSIP/1001", context="agents", exten="s")
    result = await client.originate_response(action_id, timeout=40)
    await client.close()
    ```
    """

    def __init__(
        self,
        settings: AmiSettings,
        *,
        backoff: Backoff | None = None,
        connect_timeout: float | None = None,
        rand: Callable[[], float] = random.random,
        keep_originate_results: int = 1000,
        events: str = "on",
    ) -> None:
        """`events` is the Login's event mask: "on", "off" or classes such as "call,system"
        (fewer classes, less traffic to parse at peak load)."""
        for key in ("ping_interval", "action_timeout"):
            value = getattr(settings, key)
            if not value > 0:
                raise ConfigError(f"must be positive, got {value!r}", key=f"ami.{key}")
        if not 0 < settings.port < 65536:
            raise ConfigError(f"not a TCP port: {settings.port}", key="ami.port")
        self._settings = settings
        self.address = f"{settings.host}:{settings.port}"
        self._backoff = backoff or Backoff()
        self._connect_timeout = connect_timeout or settings.action_timeout
        self._rand = rand
        self._manager: _GuardedManager | None = None
        self._protocol: _GuardedProtocol | None = None
        self._subscribers: dict[str, list[EventCallback]] = {}
        self._streams: list[EventStream] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._old_pingers: list[asyncio.Task[None]] = []
        self._lost = asyncio.Event()
        self._closing = False
        self._ids = itertools.count(1)
        self._id_prefix = f"ivr-{secrets.token_hex(4)}"
        self._originations: OrderedDict[str, asyncio.Future[OriginateResponse]] = OrderedDict()
        self._keep_originate_results = keep_originate_results
        self._events = events
        self.version: str | None = None  # AMI protocol version from the banner

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<AmiClient {self._settings.username}@{self.address} {state}>"

    # --- state ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Logged in on a live connection."""
        return self._protocol is not None and not self._protocol.closed

    @property
    def manager(self) -> Manager | None:
        """The underlying panoramisk Manager (for inspection; do not send through it)."""
        return self._manager

    # --- life cycle -----------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and log in; afterwards keep the connection up until `close()`."""
        if self._closing:
            raise AmiError("AMI client is closed")
        if self._supervisor is not None:
            raise AmiError("AMI client is already connected")
        if self._manager is None:
            self._manager = _GuardedManager(self, self._settings)
        await self._establish(reconnect=False)
        self._supervisor = asyncio.create_task(
            self._supervise(), name=f"ami-supervisor {self.address}"
        )

    async def close(self) -> None:
        """Log off, close the connection, stop every task. Safe to call twice."""
        if self._closing:
            return
        self._closing = True
        tasks = [t for t in (self._supervisor, self._pinger, *self._old_pingers) if t]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("AMI task %s failed", task.get_name(), exc_info=task.exception())
        self._supervisor = self._pinger = None
        self._old_pingers.clear()
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            try:
                await self._send(protocol, {"Action": "Logoff"}, timeout=1.0)
            except AmiError as exc:
                log.debug("AMI %s: Logoff not acknowledged: %s", self.address, exc)
            protocol.close()
            try:
                async with asyncio.timeout(2.0):
                    await asyncio.shield(protocol.lost)
            except TimeoutError:
                protocol.abort()
                await protocol.lost
        for future in self._originations.values():
            if not future.done():
                future.set_exception(AmiDisconnected(f"AMI client for {self.address} closed"))
                future.exception()
        self._originations.clear()
        for stream in list(self._streams):
            stream.close()

    async def __aenter__(self) -> AmiClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _establish(self, *, reconnect: bool) -> None:
        manager = self._manager
        if manager is None:
            raise AmiError("AMI client has no manager")
        protocol = await manager.open(self._connect_timeout)
        logged_in = False
        try:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    self.version = await asyncio.shield(protocol.banner)
            except TimeoutError:
                raise AmiDisconnected(
                    f"no AMI banner from {self.address} within {self._connect_timeout:g}s"
                ) from None
            login = {
                "Action": "Login",
                "Username": self._settings.username,
                "Secret": self._settings.secret,
                "Events": self._events,
            }
            try:
                await self._send(protocol, login, timeout=self._settings.action_timeout)
            except AmiActionFailed as exc:
                if "shutting down" in exc.reason.lower():
                    # Asterisk refuses every login while it stops or restarts: not a
                    # credentials problem (start-up must not give up on it), retry later.
                    raise AmiDisconnected(
                        f"AMI at {self.address} is shutting down ({exc.reason})"
                    ) from None
                raise AmiLoginError(
                    f"AMI at {self.address} refused login for user "
                    f"{self._settings.username!r}: {exc.reason} "
                    "(check the settings ami.username and ami.secret)"
                ) from None
            except AmiTimeout:
                raise AmiDisconnected(
                    f"no reply to Login from AMI at {self.address} within "
                    f"{self._settings.action_timeout:g}s"
                ) from None
            logged_in = True
        finally:
            if not logged_in:  # refused, timed out or cancelled: the socket must not leak
                protocol.abort()
        if protocol.closed:
            raise AmiDisconnected(f"AMI connection to {self.address} lost right after login")
        self._protocol = protocol
        manager.protocol = protocol
        manager._connected = True
        manager.authenticated = True
        self._lost.clear()
        self._pinger = asyncio.create_task(
            self._ping_loop(protocol), name=f"ami-ping {self.address}"
        )
        log.info(
            "AMI %s: logged in as %s%s",
            self.address,
            self._settings.username,
            " (reconnected)" if reconnect else "",
        )
        self._dispatch(
            AmiConnectionMade(
                CONNECTED,
                Fields([("Address", self.address), ("Reconnect", "yes" if reconnect else "no")]),
                self.address,
                self.version or "",
                reconnect,
            )
        )
        early, protocol.early_events = protocol.early_events, []
        for event in early:
            if protocol.closed:
                break
            self._dispatch(event)

    def _on_connection_lost(self, protocol: _GuardedProtocol, exc: Exception | None) -> None:
        if protocol is not self._protocol:
            return  # a connection that never finished logging in, or an old one
        self._protocol = None
        if self._manager is not None:
            self._manager.connection_lost(exc)
        if self._pinger is not None:
            if self._pinger is not asyncio.current_task():
                self._pinger.cancel()
            self._old_pingers.append(self._pinger)
            self._pinger = None
        if self._closing:
            reason = "closed by us"
        else:
            reason = protocol.abort_reason or str(exc or "closed by the peer")
        for action_id, future in self._originations.items():
            if not future.done():
                future.set_exception(
                    AmiDisconnected(
                        f"AMI connection to {self.address} lost before the OriginateResponse "
                        f"of {action_id}; the call may exist: check channels"
                    )
                )
                future.exception()
        if self._closing:
            log.info("AMI %s: disconnected (%s)", self.address, reason)
        else:
            log.warning("AMI %s: connection lost (%s)", self.address, reason)
        self._lost.set()
        self._dispatch(
            AmiConnectionLost(
                DISCONNECTED,
                Fields([("Address", self.address), ("Reason", reason)]),
                self.address,
                reason,
            )
        )

    async def _supervise(self) -> None:
        while True:
            await self._lost.wait()
            self._lost.clear()
            await self._reap_old_pingers()
            attempt = 0
            while not self.connected:
                delay = self._backoff.delay(attempt, self._rand)
                attempt += 1
                log.info("AMI %s: reconnecting in %.2fs (attempt %d)", self.address, delay, attempt)
                await asyncio.sleep(delay)
                try:
                    await self._establish(reconnect=True)
                except AmiLoginError as exc:
                    log.error("AMI %s: %s", self.address, exc)
                except AmiError as exc:
                    log.warning("AMI %s: reconnect failed: %s", self.address, exc)
                except Exception:
                    # A bug must not end reconnecting for the life of the daemon.
                    log.exception("AMI %s: reconnect failed unexpectedly", self.address)

    async def _reap_old_pingers(self) -> None:
        old, self._old_pingers = self._old_pingers, []
        if old:
            await asyncio.wait(old)
            for task in old:
                if not task.cancelled() and task.exception() is not None:
                    log.error("AMI ping task failed", exc_info=task.exception())

    async def _ping_loop(self, protocol: _GuardedProtocol) -> None:
        half = self._settings.ping_interval / 2
        while not protocol.closed:
            await asyncio.sleep(half)
            try:
                reply = await self._send(protocol, {"Action": "Ping"}, timeout=half)
            except AmiTimeout:
                log.error(
                    "AMI %s: no reply to Ping within %.2fs; connection declared dead",
                    self.address,
                    half,
                )
                protocol.abort(f"no reply to Ping within {half:g}s (half-open)")
                return
            except AmiError as exc:
                if not protocol.closed:
                    log.error("AMI %s: Ping failed (%s); reconnecting", self.address, exc)
                    protocol.abort(f"Ping failed: {exc}")
                return
            except Exception:
                # Without its pinger a connection could go half-open unnoticed: start afresh.
                log.exception("AMI %s: ping task failed; reconnecting", self.address)
                protocol.abort("ping task failed")
                return
            if not (
                isinstance(reply, AmiResponse)
                and reply.response == "Success"
                and reply.fields.get_str("Ping") == "Pong"
            ):
                log.error("AMI %s: Ping answered without Pong; reconnecting", self.address)
                protocol.abort("Ping answered without Pong")
                return

    # --- actions --------------------------------------------------------------------------

    async def action(
        self,
        action: Mapping[str, ActionValue],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (per-action reply deadline)
    ) -> AmiResponse | list[AmiEvent]:
        """Send one action; the response, or for list actions (`EventList: start`) the events
        before the `...Complete` one. `Response: Error` raises AmiActionError; a drop while
        waiting raises AmiDisconnected (the action is not re-sent); no reply, AmiTimeout."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            name = _action_name(action)
            raise AmiDisconnected(f"not connected to AMI at {self.address}; {name} not sent")
        return await self._send(
            protocol, action, timeout=self._settings.action_timeout if timeout is None else timeout
        )

    async def list_action(
        self,
        action: Mapping[str, ActionValue],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (per-action reply deadline)
    ) -> list[AmiEvent]:
        """`action()` for list actions: the events, typed where known."""
        result = await self.action(action, timeout=timeout)
        if isinstance(result, AmiResponse):
            raise AmiActionError(
                f"{result.action} did not answer with an event list", action=result.action
            )
        return result

    async def originate(
        self,
        *,
        channel: str,
        context: str | None = None,
        exten: str | None = None,
        priority: int = 1,
        application: str | None = None,
        data: str | None = None,
        caller_id: str | None = None,
        variables: Mapping[str, str] | None = None,
        ring_timeout: float = 30.0,
        async_: bool = True,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> str:
        """Originate a call; return its ActionID once Asterisk has queued it (async, default)
        or placed it (`async_=False`). With async, `originate_response(action_id)` gives the
        correlated OriginateResponse event. Never re-sent after a drop."""
        if (exten is None) == (application is None):
            raise ValueError("originate needs either context+exten or application")
        action: dict[str, ActionValue] = {
            "Action": "Originate",
            "Channel": channel,
            "Timeout": str(int(ring_timeout * 1000)),
            "Async": "true" if async_ else "false",
        }
        if exten is not None:
            if context is None:
                raise ValueError("originate to an extension needs a context")
            action.update(Context=context, Exten=exten, Priority=str(priority))
        else:
            action["Application"] = application or ""
            if data is not None:
                action["Data"] = data
        if caller_id is not None:
            action["CallerID"] = caller_id
        if variables:
            action["Variable"] = [f"{k}={v}" for k, v in variables.items()]
        action_id = self._next_id()
        action["ActionID"] = action_id
        if async_:
            self._originations[action_id] = asyncio.get_running_loop().create_future()
            while len(self._originations) > self._keep_originate_results:
                old_id, old = self._originations.popitem(last=False)
                if not old.done():
                    old.set_exception(AmiError(f"OriginateResponse of {old_id} no longer kept"))
                    old.exception()
        queued = False
        try:
            await self.action(action, timeout=timeout)
            queued = True
        finally:
            if not queued:  # refused, lost, timed out or cancelled: nothing to wait for
                future = self._originations.pop(action_id, None)
                if future is not None and not future.done():
                    future.cancel()
        return action_id

    async def originate_response(
        self,
        action_id: str,
        *,
        timeout: float,  # noqa: ASYNC109
    ) -> OriginateResponse:
        """The OriginateResponse event of an async `originate()`; AmiDisconnected if the
        connection dropped before it came (the call may or may not exist: check channels)."""
        future = self._originations.get(action_id)
        if future is None:
            raise AmiError(f"no async Originate with ActionID {action_id} is known")
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            raise AmiTimeout(f"no OriginateResponse for {action_id} within {timeout:g}s") from None

    def _next_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    async def _send(
        self,
        protocol: _GuardedProtocol,
        action: Mapping[str, ActionValue],
        *,
        timeout: float,  # noqa: ASYNC109
    ) -> AmiResponse | list[AmiEvent]:
        name = _action_name(action)
        fields = dict(action)
        action_id = next((v for k, v in fields.items() if k.lower() == "actionid"), None)
        if action_id is None:
            action_id = self._next_id()
            fields["ActionID"] = action_id
        elif not isinstance(action_id, str) or not action_id:
            raise AmiError("ActionID must be a non-empty string")
        if action_id in protocol.sent:
            raise AmiError(f"ActionID {action_id} is already waiting for a reply")
        data = encode_action(fields)
        future: asyncio.Future[PendingAction] = asyncio.get_running_loop().create_future()
        pending = PendingAction(name, action_id)
        protocol.write(data)
        protocol.sent[action_id] = _Sent(pending, future)
        try:
            async with asyncio.timeout(timeout):
                done = await future
        except TimeoutError:
            raise AmiTimeout(
                f"no reply to {name} (ActionID {action_id}) from AMI at {self.address} "
                f"within {timeout:g}s"
            ) from None
        finally:
            protocol.sent.pop(action_id, None)
        response = done.response
        if response is None:
            raise AmiError(f"reply to {name} completed without a response")
        if response.response.lower() == "error":
            raise AmiActionFailed(name, response.message or "failed (no message)")
        if done.is_list:
            return list(done.events)
        return response

    # --- events ---------------------------------------------------------------------------

    def _on_frame(self, protocol: _GuardedProtocol, frame: AmiFrame) -> None:
        action_id = frame.action_id
        sent = protocol.sent.get(action_id) if action_id else None
        if sent is not None and not sent.future.done() and sent.pending.wants(frame):
            if sent.pending.feed(frame):
                sent.future.set_result(sent.pending)
            return
        if not frame.is_event:
            if frame.is_response:
                log.debug("AMI %s: reply for unknown ActionID %s ignored", self.address, action_id)
            return
        event = parse_event(frame)
        if protocol is not self._protocol:
            if len(protocol.early_events) >= 10_000:
                log.error("AMI %s: too many events before login; closing", self.address)
                protocol.abort()
                return
            protocol.early_events.append(event)
            return
        if isinstance(event, OriginateResponse):
            future = self._originations.get(event.action_id)
            if future is not None and not future.done():
                future.set_result(event)
        self._dispatch(event)

    def _dispatch(self, event: AmiEvent) -> None:
        named = self._subscribers.get(event.name.lower(), [])
        callbacks = [*named, *self._subscribers.get("*", [])]
        for callback in callbacks:
            try:
                callback(event)
            except Exception:
                log.exception("AMI subscriber %r failed on a %s event", callback, event.name)

    def _wants_event(self, name: str) -> bool:
        """Does any subscriber (by name or "*") take events called `name`?"""
        subscribers = self._subscribers
        return bool(subscribers.get(name.lower()) or subscribers.get("*"))

    def subscribe(self, name: str, callback: EventCallback) -> Callable[[], None]:
        """Call `callback(event)` for every event called `name` (case-insensitive), or for
        every event with "*", including `AmiConnected`/`AmiDisconnected`. Callbacks are plain
        functions run in the loop; they must not block. Returns an unsubscribe function."""
        if not name:
            raise ValueError("event name must not be empty")
        if inspect.iscoroutinefunction(callback):
            # Its coroutine would never be awaited; async consumers use events().
            raise TypeError("AMI subscribers are plain functions; use events() to await")
        key = name.lower()
        self._subscribers.setdefault(key, []).append(callback)

        def unsubscribe() -> None:
            callbacks = self._subscribers.get(key, [])
            if callback in callbacks:
                callbacks.remove(callback)

        return unsubscribe

    def events(self, *names: str, maxsize: int = 1000) -> EventStream:
        """`async for event in client.events("Hangup", "Newchannel")`: a bounded stream (all
        events when no name is given). Subscribed at once; ends on `stream.close()` or
        `client.close()`."""
        stream = EventStream(self, names or ("*",), maxsize, self._streams.remove)
        self._streams.append(stream)
        return stream


def _action_name(action: Mapping[str, ActionValue]) -> str:
    for key, value in action.items():
        if key.lower() == "action" and isinstance(value, str) and value:
            return value
    raise AmiError("an AMI action needs an 'Action' header")
