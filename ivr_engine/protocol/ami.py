"""Sans-I/O AMI helpers: bytes <-> frames, actions -> bytes, frames -> typed events and replies.

Why not panoramisk's own parsing (read at release 1.4):
- `AMIProtocol.data_received` decodes every TCP chunk on its own with `errors='ignore'`, so a
  caller name such as 陈先生 split across two chunks loses a character silently.
- `Action.multi`/`Action.completed` guess the end of a reply from the wording of `Message`
  ("will follow", "added ... to queue", "successfully queued"): a `QueueAdd` reply or a list
  action answered with `Response: Error` under `as_list=True` never completes.
- `AMIProtocol` logs every parsed message at DEBUG, DTMF digits included.

Here a frame is the list of `Key: Value` lines up to an empty line (Asterisk sends CRLF; bare LF
is tolerated). The reply to an action is complete on `Response: Error`, on a plain response, or -
for list actions, which Asterisk marks with `EventList: start` since 1.8 - on the event that
carries `EventList: Complete` (its name ends in `Complete`, e.g. `CoreShowChannelsComplete`).

Asterisk 22 answers `Command` with `Output:` lines (the `Response: Follows` form ended with
Asterisk 14), so a frame never holds free text.

DTMF digits are masked as they are parsed (`DTMFBegin`/`DTMFEnd` carry `Digit: *`): the engine
reads digits over FastAGI, and a digit seen on AMI may be part of a PIN.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from ivr_engine.errors import AmiError

BANNER_PREFIX = "Asterisk Call Manager/"
MAX_FRAME_CHARS = 1 << 20  # one event or reply; a longer one is not AMI talking
MASK = "*"
# Header values that never appear in a repr: the login secret, DTMF digits.
_SENSITIVE_KEYS = frozenset({"secret", "digit"})
_DTMF_EVENTS = frozenset({"dtmfbegin", "dtmfend"})
_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
_FRAME_END = re.compile(r"\r?\n\r?\n")


class AmiProtocolError(AmiError):
    """Bytes from the peer that are not AMI (no banner, a frame beyond the size limit)."""


class AmiEncodingError(AmiError, ValueError):
    """An action that cannot be sent safely (bad key, CR/LF in a value: header injection)."""


class Fields(Mapping[str, str]):
    """Immutable, case-insensitive headers of one frame; keeps repeated keys (`getall`).

    `fields["CallerIDName"]` is the first value. The repr masks secrets and DTMF digits."""

    __slots__ = ("_pairs", "_index")

    def __init__(self, pairs: Sequence[tuple[str, str]] = ()) -> None:
        self._pairs: tuple[tuple[str, str], ...] = tuple(pairs)
        # Built backwards so that the first of repeated keys wins.
        self._index = {k.lower(): v for k, v in reversed(self._pairs)}

    def __getitem__(self, key: str) -> str:
        return self._index[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for key, _ in self._pairs:
            if key.lower() not in seen:
                seen.add(key.lower())
                yield key

    def __len__(self) -> int:
        return len(self._index)

    def get_str(self, key: str) -> str:
        """The first value of `key`, "" when absent."""
        return self._index.get(key.lower(), "")

    def getall(self, key: str) -> tuple[str, ...]:
        k = key.lower()
        return tuple(v for kk, v in self._pairs if kk.lower() == k)

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        return self._pairs

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Fields):
            return self._pairs == other._pairs
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._pairs)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{k}={MASK * 3 if k.lower() in _SENSITIVE_KEYS else v!r}" for k, v in self._pairs
        )
        return f"Fields({shown})"


@dataclass(frozen=True)
class AmiFrame:
    """One AMI message as received: a response, an event, or neither (ignored)."""

    fields: Fields
    unparsed: tuple[str, ...] = ()  # lines without "key: value"

    @property
    def event(self) -> str:
        return self.fields.get_str("Event")

    @property
    def response(self) -> str:
        return self.fields.get_str("Response")

    @property
    def action_id(self) -> str:
        return self.fields.get_str("ActionID")

    @property
    def is_event(self) -> bool:
        return bool(self.event)

    @property
    def is_response(self) -> bool:
        # OriginateResponse is an event that also carries a `Response:` header.
        return bool(self.response) and not self.event


def parse_frame(text: str) -> AmiFrame:
    pairs: list[tuple[str, str]] = []
    unparsed: list[str] = []
    for line in text.split("\n"):
        if line.endswith("\r"):
            line = line[:-1]
        key, sep, value = line.partition(": ")
        if sep and key and " " not in key:
            pairs.append((key, value))
            continue
        if not line:
            continue
        key, sep, value = line.partition(":")  # "Key:" with an empty value, "Key:value"
        if sep and key and " " not in key:
            pairs.append((key, value))
        else:
            unparsed.append(line)
    fields = Fields(pairs)
    if fields.get_str("Event").lower() in _DTMF_EVENTS and "Digit" in fields:
        fields = Fields([(k, MASK if k.lower() == "digit" else v) for k, v in pairs])
    return AmiFrame(fields, tuple(unparsed))


def _unwanted(chunk: str, wants_event: Callable[[str], bool]) -> bool:
    """A frame that is an event nobody wants and no reply to an action: dropped unparsed.

    Asterisk writes `Event:` as the first header of every event (manager.c
    `__manager_event_sessions_va`); anything else, and any frame with an ActionID (a list
    action's events, OriginateResponse), is parsed as usual."""
    if not chunk.startswith("Event: "):
        return False
    end = chunk.find("\n", 7)
    name = chunk[7:end] if end >= 0 else chunk[7:]
    if wants_event(name.rstrip("\r")):
        return False
    return "\nActionID:" not in chunk and "\nactionid:" not in chunk.lower()


class AmiFramer:
    """Bytes in, frames out. UTF-8 is decoded incrementally, so a character split across TCP
    chunks decodes intact; invalid bytes become U+FFFD rather than vanishing.

    `wants_event(name)`, when given, is asked for each event's name before the frame is
    parsed: events it declines (and that carry no ActionID) are counted in `skipped` and never
    parsed. At peak load most AMI traffic is per-call events the engine does not subscribe to,
    and parsing them was the daemon's largest single cost (docs/load/)."""

    def __init__(
        self,
        *,
        max_frame: int = MAX_FRAME_CHARS,
        wants_event: Callable[[str], bool] | None = None,
    ) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""
        self._scan = 0  # where to look for the next frame end: earlier text has none
        self._max = max_frame
        self._wants_event = wants_event
        self.skipped = 0
        self.version: str | None = None  # from the banner, e.g. "9.0.0"

    def feed(self, data: bytes) -> list[AmiFrame]:
        self._buf += self._decoder.decode(data)
        if self.version is None:
            nl = self._buf.find("\n")
            if nl < 0:
                if len(self._buf) > 200:
                    raise AmiProtocolError("no AMI banner in the first 200 characters")
                return []
            banner = self._buf[:nl].rstrip("\r")
            if not banner.startswith(BANNER_PREFIX):
                raise AmiProtocolError(f"not an AMI banner: {banner[:80]!r}")
            self.version = banner[len(BANNER_PREFIX) :].strip()
            self._buf = self._buf[nl + 1 :]
        frames: list[AmiFrame] = []
        start = 0
        pos = self._scan
        wants = self._wants_event
        while True:
            m = _FRAME_END.search(self._buf, pos)
            if m is None:
                break
            chunk = self._buf[start : m.start()]
            start = pos = m.end()
            if wants is not None and _unwanted(chunk, wants):
                self.skipped += 1
                continue
            if chunk.strip():
                frames.append(parse_frame(chunk))
        self._buf = self._buf[start:]
        # A frame end is at most 4 characters ("\r\n\r\n"): rescan only the tail.
        self._scan = max(0, len(self._buf) - 3)
        if len(self._buf) > self._max:
            raise AmiProtocolError(f"AMI frame longer than {self._max} characters")
        return frames


ActionValue = str | Sequence[str]


def encode_action(action: Mapping[str, ActionValue]) -> bytes:
    """`{"Action": "Originate", "Variable": ["A=1", "B=2"]}` -> wire bytes.

    A CR or LF inside a value would end the header and start another one - or a second action -
    so it is refused, as is a key that is not a header name."""
    lines: list[str] = []
    for key, value in action.items():
        if not _KEY_RE.match(key):
            raise AmiEncodingError(f"invalid AMI header name {key!r}")
        values = [value] if isinstance(value, str) else list(value)
        for v in values:
            if not isinstance(v, str):
                raise AmiEncodingError(f"AMI header {key} must be text, got {type(v).__name__}")
            if "\r" in v or "\n" in v:
                raise AmiEncodingError(f"AMI header {key} contains a line break")
            lines.append(f"{key}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


# --- replies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AmiResponse:
    """The `Response:` frame that answers an action."""

    action: str
    action_id: str
    response: str  # Success, Error, Goodbye
    message: str
    fields: Fields
    output: tuple[str, ...] = ()  # `Output:` lines of a Command reply

    @property
    def success(self) -> bool:
        return self.response.lower() in {"success", "goodbye", "follows"}

    @classmethod
    def from_frame(cls, action: str, frame: AmiFrame) -> AmiResponse:
        f = frame.fields
        return cls(
            action=action,
            action_id=f.get_str("ActionID"),
            response=f.get_str("Response"),
            message=f.get_str("Message"),
            fields=f,
            output=f.getall("Output"),
        )


class PendingAction:
    """Collects the frames that answer one action until the reply is complete."""

    def __init__(self, action: str, action_id: str) -> None:
        self.action = action
        self.action_id = action_id
        self.response: AmiResponse | None = None
        self.is_list = False
        self.events: list[AmiEvent] = []
        self.complete_event: AmiEvent | None = None
        self.done = False

    def wants(self, frame: AmiFrame) -> bool:
        """Is this frame (with our ActionID) part of the reply? Events before the response are
        not: an async Originate that fails at once may send its OriginateResponse event before
        Asterisk writes "Originate successfully queued"; that event goes to the subscribers."""
        if self.done:
            return False
        if self.response is None:
            return frame.is_response
        return self.is_list and frame.is_event

    def feed(self, frame: AmiFrame) -> bool:
        """Take one frame that `wants()` accepted; True once the reply is complete."""
        if not self.wants(frame):
            raise AmiProtocolError(
                f"frame out of place in the reply to {self.action} (ActionID {self.action_id})"
            )
        if self.response is None:
            self.response = AmiResponse.from_frame(self.action, frame)
            self.is_list = frame.fields.get_str("EventList").lower() == "start"
            self.done = not self.is_list or not self.response.success
            return self.done
        event = parse_event(frame)
        if frame.fields.get_str("EventList").lower() == "complete" or frame.event.endswith(
            "Complete"
        ):
            self.complete_event = event
            self.done = True
        else:
            self.events.append(event)
        return self.done


# --- events --------------------------------------------------------------------------------


def _int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class AmiEvent:
    """Any AMI event. Typed subclasses below add the fields the engine uses."""

    name: str
    fields: Mapping[str, str]

    @property
    def action_id(self) -> str:
        return self.fields.get("ActionID", "")

    @classmethod
    def from_fields(cls, name: str, fields: Fields) -> AmiEvent:
        return AmiEvent(name, fields)


@dataclass(frozen=True)
class Newchannel(AmiEvent):
    channel: str
    uniqueid: str
    linkedid: str
    state: str  # ChannelStateDesc: Down, Ring, Ringing, Up ...
    caller_id_num: str
    caller_id_name: str
    context: str
    exten: str

    @classmethod
    def from_fields(cls, name: str, fields: Fields) -> Newchannel:
        g = fields.get_str
        return cls(
            name, fields, g("Channel"), g("Uniqueid"), g("Linkedid"), g("ChannelStateDesc"),
            g("CallerIDNum"), g("CallerIDName"), g("Context"), g("Exten"),
        )  # fmt: skip


@dataclass(frozen=True)
class Hangup(AmiEvent):
    channel: str
    uniqueid: str
    linkedid: str
    cause: int | None
    cause_txt: str

    @classmethod
    def from_fields(cls, name: str, fields: Fields) -> Hangup:
        g = fields.get_str
        return cls(
            name, fields, g("Channel"), g("Uniqueid"), g("Linkedid"), _int(g("Cause")),
            g("Cause-txt"),
        )  # fmt: skip


@dataclass(frozen=True)
class DialBegin(AmiEvent):
    channel: str  # "" when the dial has no calling channel (an Originate)
    uniqueid: str
    dest_channel: str
    dest_uniqueid: str
    dial_string: str

    @classmethod
    def from_fields(cls, name: str, fields: Fields) -> DialBegin:
        g = fields.get_str
        return cls(
            name, fields, g("Channel"), g("Uniqueid"), g("DestChannel"), g("DestUniqueid"),
            g("DialString"),
        )  # fmt: skip


@dataclass(frozen=True)
class DialEnd(AmiEvent):
    channel: str
    uniqueid: str
    dest_channel: str
    dest_uniqueid: str
    dial_status: str  # ANSWER, BUSY, NOANSWER, CANCEL, CONGESTION, CHANUNAVAIL ...

    @classmethod
    def from_fields(cls, name: str, fields: Fields) -> DialEnd:
        g = fields.get_str
        return cls(
            name, fields, g("Channel"), g("Uniqueid"), g("DestChannel"), g("DestUniqueid"),
            g("DialStatus"),
        )  # fmt: skip


@dataclass(frozen=True)
class _BridgeEvent(AmiEvent):
    bridge_uniqueid: str
    bridge_type: str
    bridge_num_channels: int | None
    channel: str
    uniqueid: str
    linkedid: str

    @classmethod
    def from_fields(cls, name: str, fields: Fields) -> _BridgeEvent:
        g = fields.get_str
        return cls(
            name, fields, g("BridgeUniqueid"), g("BridgeType"), _int(g("BridgeNumChannels")),
            g("Channel"), g("Uniqueid"), g("Linkedid"),
        )  # fmt: skip


@dataclass(frozen=True)
class BridgeEnter(_BridgeEvent):
    """A channel entered a bridge (`bridge_num_channels` counts it)."""


@dataclass(frozen=True)
class BridgeLeave(_BridgeEvent):
    """A channel left a bridge."""


@dataclass(frozen=True)
class DeviceStateChange(AmiEvent):
    device: str  # PJSIP/agent-1001
    state: str  # NOT_INUSE, INUSE, BUSY, UNAVAILABLE, RINGING, RINGINUSE, ONHOLD ...

    @classmethod
    def from_fields(cls, name: str, fields: Fields) -> DeviceStateChange:
        return cls(name, fields, fields.get_str("Device"), fields.get_str("State"))


@dataclass(frozen=True)
class ContactStatus(AmiEvent):
    uri: str
    contact_status: str  # Created, Removed, Reachable, Unreachable, Updated
    aor: str
    endpoint_name: str
    roundtrip_usec: int | None

    @classmethod
    def from_fields(cls, name: str, fields: Fields) -> ContactStatus:
        g = fields.get_str
        return cls(
            name, fields, g("URI"), g("ContactStatus"), g("AOR"), g("EndpointName"),
            _int(g("RoundtripUsec")),
        )  # fmt: skip


@dataclass(frozen=True)
class PeerStatus(AmiEvent):
    channel_type: str
    peer: str  # PJSIP/agent-1001
    peer_status: str  # Registered, Unregistered, Reachable, Unreachable ...
    cause: str
    address: str

    @classmethod
    def from_fields(cls, name: str, fields: Fields) -> PeerStatus:
        g = fields.get_str
        return cls(
            name, fields, g("ChannelType"), g("Peer"), g("PeerStatus"), g("Cause"), g("Address")
        )


@dataclass(frozen=True)
class VarSet(AmiEvent):
    channel: str
    uniqueid: str
    variable: str
    value: str

    @classmethod
    def from_fields(cls, name: str, fields: Fields) -> VarSet:
        g = fields.get_str
        return cls(name, fields, g("Channel"), g("Uniqueid"), g("Variable"), g("Value"))


@dataclass(frozen=True)
class DtmfBegin(AmiEvent):
    """A DTMF digit started on a channel. The digit itself is masked at parse time."""

    channel: str
    uniqueid: str
    direction: str  # Received, Sent

    @classmethod
    def from_fields(cls, name: str, fields: Fields) -> DtmfBegin:
        g = fields.get_str
        return cls(name, fields, g("Channel"), g("Uniqueid"), g("Direction"))


@dataclass(frozen=True)
class DtmfEnd(AmiEvent):
    """A DTMF digit ended on a channel. The digit itself is masked at parse time."""

    channel: str
    uniqueid: str
    direction: str
    duration_ms: int | None

    @classmethod
    def from_fields(cls, name: str, fields: Fields) -> DtmfEnd:
        g = fields.get_str
        return cls(name, fields, g("Channel"), g("Uniqueid"), g("Direction"), _int(g("DurationMs")))


@dataclass(frozen=True)
class FullyBooted(AmiEvent):
    status: str
    uptime: int | None
    last_reload: int | None

    @classmethod
    def from_fields(cls, name: str, fields: Fields) -> FullyBooted:
        g = fields.get_str
        return cls(name, fields, g("Status"), _int(g("Uptime")), _int(g("LastReload")))


@dataclass(frozen=True)
class OriginateResponse(AmiEvent):
    """How an async `Originate` ended; `action_id` is the Originate's ActionID."""

    response: str  # Success, Failure
    channel: str
    uniqueid: str
    reason: int | None  # Asterisk's control frame code: 4 answered, 5 busy, 3 no answer ...
    context: str
    exten: str
    application: str
    caller_id_num: str
    caller_id_name: str

    @property
    def success(self) -> bool:
        return self.response.lower() == "success"

    @classmethod
    def from_fields(cls, name: str, fields: Fields) -> OriginateResponse:
        g = fields.get_str
        return cls(
            name, fields, g("Response"), g("Channel"), g("Uniqueid"), _int(g("Reason")),
            g("Context"), g("Exten"), g("Application"), g("CallerIDNum"), g("CallerIDName"),
        )  # fmt: skip


EVENT_TYPES: Mapping[str, type[AmiEvent]] = {
    "newchannel": Newchannel,
    "hangup": Hangup,
    "dialbegin": DialBegin,
    "dialend": DialEnd,
    "bridgeenter": BridgeEnter,
    "bridgeleave": BridgeLeave,
    "devicestatechange": DeviceStateChange,
    "contactstatus": ContactStatus,
    "peerstatus": PeerStatus,
    "varset": VarSet,
    "dtmfbegin": DtmfBegin,
    "dtmfend": DtmfEnd,
    "fullybooted": FullyBooted,
    "originateresponse": OriginateResponse,
}


def parse_event(frame: AmiFrame) -> AmiEvent:
    """A typed event when the engine uses this kind, else a plain `AmiEvent`. Never raises."""
    name = frame.event
    cls = EVENT_TYPES.get(name.lower(), AmiEvent)
    return cls.from_fields(name, frame.fields)
