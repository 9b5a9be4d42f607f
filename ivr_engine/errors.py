"""The one error tree of ivr-engine.

```
IvrError
 +-- ConfigError            bad settings: names the file and the key
 +-- FlowError              a flow that cannot be loaded or run: file, line, column, node path
 +-- PromptError            a prompt id or language that the catalogue cannot serve
 +-- ChannelHangup          the caller is gone (any channel: AGI, offline fake)
 +-- StoreError             the SQLite store (CIF, call records, audit) failed
 |    +-- AuditError        the audit chain is broken (names the first bad record)
 +-- PbxError               anything the PBX side did wrong or did not do
 |    +-- DevPbxError       building, starting or stopping the dev PBX
 |    +-- AgiError          FastAGI
 |    |    +-- AgiProtocolError   garbled bytes from the peer
 |    |    +-- AgiHangup          the caller hung up (HANGUP notice or 511); also a ChannelHangup
 |    |    +-- AgiDeadChannel     the channel is gone (511)
 |    |    +-- AgiCommandError    520 / 510: the command was refused
 |    |    +-- AgiTimeout         no reply in time
 |    +-- AmiError          AMI
 |         +-- AmiLoginError      the PBX refused our credentials
 |         +-- AmiActionError     an action answered Response: Error
 |         +-- AmiDisconnected    the connection is down (action not sent or reply lost)
 +-- EventsError            MQTT publishing failed
 +-- AcdError               routing core (defined in `acd.errors`, which subclasses nothing here
                            so that `acd` stays importable on its own)
```

Low-level exceptions (OSError, sqlite3.Error, yaml errors) are translated into this tree at the
transport or store boundary, never deeper in the domain code.
"""

from __future__ import annotations


class IvrError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigError(IvrError):
    """Invalid settings. `source` names the file (or 'environment', 'command line')."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        where = ""
        if source and key:
            where = f"{source}: {key}: "
        elif source:
            where = f"{source}: "
        elif key:
            where = f"{key}: "
        super().__init__(f"{where}{message}")


class FlowError(IvrError):
    """A flow problem, located as `path:line:col` with the node path when known."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        col: int | None = None,
        node: str | None = None,
    ):
        self.message = message
        self.path = path
        self.line = line
        self.col = col
        self.node = node
        super().__init__(self.render())

    def render(self) -> str:
        loc = self.path or "<flow>"
        if self.line is not None:
            loc += f":{self.line}"
            if self.col is not None:
                loc += f":{self.col}"
        node = f" [{self.node}]" if self.node else ""
        return f"{loc}: error:{node} {self.message}"


class PromptError(IvrError):
    """A prompt that the catalogue cannot serve in any language of the fallback chain."""


class ChannelHangup(IvrError):
    """The caller hung up. Domain code (the flow interpreter) catches this one, never AgiHangup."""


class StoreError(IvrError):
    """The SQLite store failed (disk full, locked, corrupt)."""


class AuditError(StoreError):
    """The audit chain does not verify. `seq` is the first bad record, when known."""

    def __init__(self, message: str, *, seq: int | None = None):
        self.seq = seq
        super().__init__(message)


class PbxError(IvrError):
    """The PBX side failed or misbehaved."""


class DevPbxError(PbxError):
    """The dev PBX could not be built, started or stopped."""


class AgiError(PbxError):
    """FastAGI failure."""


class AgiProtocolError(AgiError):
    """Bytes from the peer that are not AGI."""


class AgiHangup(AgiError, ChannelHangup):
    """The caller hung up; the session may still run dead-channel-safe commands."""


class AgiDeadChannel(AgiHangup):
    """The channel is gone (511 result)."""


class AgiCommandError(AgiError):
    """The PBX refused a command (510 invalid command, 520 usage)."""

    def __init__(self, message: str, *, code: int, command: str | None = None):
        self.code = code
        self.command = command
        super().__init__(message)


class AgiTimeout(AgiError):
    """No reply within the command's timeout."""


class AmiError(PbxError):
    """AMI failure."""


class AmiLoginError(AmiError):
    """The PBX refused our AMI credentials."""


class AmiActionError(AmiError):
    """An action answered `Response: Error`."""

    def __init__(self, message: str, *, action: str | None = None):
        self.action = action
        super().__init__(message)


class AmiDisconnected(AmiError):
    """The AMI connection is down: the action was not sent, or its reply was lost."""


class EventsError(IvrError):
    """Publishing events failed."""
