"""A SIP user agent for the simulator: pjsua2 driven from one thread by pumping its events.

pjsua2 runs with no worker threads (`threadCnt=0`, `mainThreadOnly`): every SIP callback runs
inside `SipStack.pump()`, on the caller's thread, so simulator code is plain sequential Python.
Audio that a call receives is tapped in real time by an `AudioMediaPort` (the null sound device's
clock thread calls `onFrameReceived`; the tap only appends bytes under the GIL) so that scripts can
wait for "the prompt ended" while the call is live, and the whole recording is kept for checks
(speech segments, dead air) afterwards.

pjsua2 aborts the process if a `Call` outlives `libDestroy`: `SipStack.close()` hangs up and
drops every call and account first.
"""

from __future__ import annotations

import logging
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pjsua2 as pj
import webrtcvad

log = logging.getLogger(__name__)

CLOCK_RATE = 8000
FRAME_MS = 20
FRAME_BYTES = CLOCK_RATE * FRAME_MS // 1000 * 2  # 16-bit mono


class SimError(Exception):
    """The simulator could not do what a script asked (timeout, call failed)."""


class SimTimeout(SimError):
    pass


class _RxTap(pj.AudioMediaPort):  # type: ignore[misc]
    """Receives what the far end sends us; called from pjmedia's clock thread."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._chunks: list[bytes] = []

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:  # noqa: N802 (pjsua2 API)
        data = bytes(frame.buf)
        if data:
            with self._lock:
                self._chunks.append(data)

    def pcm(self) -> bytes:
        with self._lock:
            return b"".join(self._chunks)


@dataclass
class CallEvent:
    at: float  # seconds since the call was created
    kind: str  # "state", "dtmf-sent", "dtmf-received", "media"
    detail: str


@dataclass
class Speech:
    """Speech segments found by webrtcvad in received audio (seconds from the start of media)."""

    segments: list[tuple[float, float]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.segments)

    def longest_gap(self, *, until: float | None = None) -> float:
        """Longest silence between segments (dead air), and after the last one up to `until`."""
        gaps = [b[0] - a[1] for a, b in zip(self.segments, self.segments[1:], strict=False)]
        if until is not None and self.segments:
            gaps.append(until - self.segments[-1][1])
        return max(gaps, default=0.0)


def find_speech(
    pcm: bytes, *, aggressiveness: int = 2, min_speech_ms: int = 120, merge_gap_ms: int = 350
) -> Speech:
    """Speech segments in 8 kHz 16-bit mono PCM: webrtcvad on 20 ms frames, then smoothing.

    Short blips under `min_speech_ms` are dropped (line noise, DTMF clicks); segments separated by
    less than `merge_gap_ms` are merged (pauses between words of one prompt)."""
    vad = webrtcvad.Vad(aggressiveness)
    n = len(pcm) // FRAME_BYTES
    flags = np.zeros(n, dtype=bool)
    for i in range(n):
        flags[i] = vad.is_speech(pcm[i * FRAME_BYTES : (i + 1) * FRAME_BYTES], CLOCK_RATE)
    segments: list[tuple[float, float]] = []
    if n:
        edges = np.flatnonzero(np.diff(np.concatenate(([0], flags.astype(np.int8), [0]))))
        raw = [(int(s), int(e)) for s, e in zip(edges[::2], edges[1::2], strict=True)]
        merged: list[list[int]] = []
        for s, e in raw:
            if merged and (s - merged[-1][1]) * FRAME_MS < merge_gap_ms:
                merged[-1][1] = e
            else:
                merged.append([s, e])
        for s, e in merged:
            if (e - s) * FRAME_MS >= min_speech_ms:
                segments.append((s * FRAME_MS / 1000, e * FRAME_MS / 1000))
    return Speech(segments)


def write_wav(path: str | Path, pcm: bytes) -> Path:
    """Save 8 kHz 16-bit mono PCM (what a call heard) as a WAV file."""
    p = Path(path)
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(CLOCK_RATE)
        w.writeframes(pcm)
    return p


def find_prompt(
    pcm: bytes, wav: str | Path, *, threshold: float = 0.8, head: float | None = None
) -> list[float]:
    """Where a known recording (8 kHz 16-bit mono WAV, e.g. a prompt) starts in received audio,
    in seconds: normalised cross-correlation above `threshold`, one hit per occurrence.

    Finds a prompt inside music on hold or other prompts, where voice activity alone cannot
    tell them apart. G.711 keeps the correlation near 1.0; a different recording scores under
    0.5. `head` matches only the recording's first seconds: on a loaded machine the receiving
    jitter buffer may drop or repeat a frame inside a long prompt, which shifts its second half
    against the first and sinks a whole-recording match."""
    with wave.open(str(wav)) as w:
        if w.getframerate() != CLOCK_RATE or w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{wav}: not 8 kHz 16-bit mono")
        frames = w.getnframes() if head is None else min(w.getnframes(), int(head * CLOCK_RATE))
        needle = np.frombuffer(w.readframes(frames), dtype=np.int16).astype(np.float64)
    heard = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype=np.int16).astype(np.float64)
    m = len(needle)
    if m == 0 or len(heard) < m or not needle.any():
        return []
    size = 1 << int(np.ceil(np.log2(len(heard) + m)))
    corr = np.fft.irfft(np.fft.rfft(heard, size) * np.conj(np.fft.rfft(needle, size)), size)
    corr = corr[: len(heard) - m + 1]
    energy = np.concatenate(([0.0], np.cumsum(heard * heard)))
    window = np.sqrt(np.maximum(energy[m:] - energy[:-m], 0.0))
    score = corr / (window * np.linalg.norm(needle) + 1e-9)
    hits: list[float] = []
    candidates = np.flatnonzero(score >= threshold)
    last = -m
    for i in candidates:  # one hit per occurrence: the best start within one needle's length
        if i - last < m:
            continue
        span = score[i : i + m]
        best = int(i + np.argmax(span))
        hits.append(round(best / CLOCK_RATE, 3))
        last = best
    return hits


class SimCall(pj.Call):  # type: ignore[misc]
    """One call, outgoing (a caller) or incoming (an agent's phone)."""

    def __init__(self, stack: SipStack, account: pj.Account, call_id: int = pj.PJSUA_INVALID_ID):
        super().__init__(account, call_id)
        self.stack = stack
        self.created = time.monotonic()
        self.state = pj.PJSIP_INV_STATE_NULL
        self.state_text = "NULL"
        self.last_status = 0
        self.last_reason = ""
        self.confirmed_at: float | None = None
        self.disconnected_at: float | None = None
        self.media_at: float | None = None
        self.events: list[CallEvent] = []
        self.digits_received: list[str] = []
        self.remote_uri = ""
        # Set when this side hung up (end()); a call that ends without it was ended remotely.
        self.ended_locally = False
        self._tap: _RxTap | None = None
        self._player: pj.AudioMediaPlayer | None = None
        self._play_file: str | None = None

    # --- pjsua2 callbacks (run inside SipStack.pump) ---
    def onCallState(self, prm: pj.OnCallStateParam) -> None:  # noqa: N802
        info = self.getInfo()
        self.state = info.state
        self.state_text = info.stateText
        self.last_status = info.lastStatusCode
        self.last_reason = info.lastReason
        self.remote_uri = info.remoteUri
        now = time.monotonic()
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and self.confirmed_at is None:
            self.confirmed_at = now
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected_at = now
        self._event("state", f"{info.stateText} {info.lastStatusCode} {info.lastReason}")

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:  # noqa: N802
        info = self.getInfo()
        for index, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO or media.status != pj.PJSUA_CALL_MEDIA_ACTIVE:
                continue
            audio = self.getAudioMedia(index)
            if self._tap is None:
                fmt = pj.MediaFormatAudio()
                fmt.init(pj.PJMEDIA_FORMAT_L16, CLOCK_RATE, 1, FRAME_MS * 1000, 16)
                self._tap = _RxTap()
                self._tap.createPort(f"tap{id(self)}", fmt)
                self.media_at = time.monotonic()
                self._event("media", "audio active")
            audio.startTransmit(self._tap)
            if self._play_file and self._player is None:
                self._player = pj.AudioMediaPlayer()
                self._player.createPlayer(self._play_file, pj.PJMEDIA_FILE_NO_LOOP)
            if self._player is not None:
                # Again on every media update: a re-INVITE (the PBX bridging the call to an
                # agent) may give the call a new audio port, which the player must feed too.
                self._player.startTransmit(audio)

    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:  # noqa: N802
        self.digits_received.append(prm.digit)
        self._event("dtmf-received", prm.digit)

    # --- script API ---
    def _event(self, kind: str, detail: str) -> None:
        self.events.append(CallEvent(round(time.monotonic() - self.created, 3), kind, detail))

    @property
    def is_connected(self) -> bool:
        return bool(self.state == pj.PJSIP_INV_STATE_CONFIRMED)

    @property
    def is_ended(self) -> bool:
        return bool(self.state == pj.PJSIP_INV_STATE_DISCONNECTED)

    def send_dtmf(self, digits: str, *, method: str = "info", mask: bool = False) -> None:
        """Send digits by SIP INFO (default) or RFC 4733; `mask` keeps them out of the events."""
        for digit in digits:
            prm = pj.CallSendDtmfParam()
            prm.digits = digit
            prm.method = (
                pj.PJSUA_DTMF_METHOD_SIP_INFO if method == "info" else pj.PJSUA_DTMF_METHOD_RFC2833
            )
            self.sendDtmf(prm)
            self._event("dtmf-sent", "*" if mask else digit)
            # Asterisk treats digits sent in the same instant as one burst; a short gap
            # keeps them distinct, as a human's key presses are.
            self.stack.pump(0.12)

    def play(self, path: str | Path) -> None:
        """Play a WAV file into the call from now on (what this side says: a message left, an
        answer to the agent). Started here rather than with the call: pjsua2 renews the
        caller's audio port when the PBX answers after early media, and a player started
        earlier stays on the old port. The player lives as long as the call does."""
        player = pj.AudioMediaPlayer()
        player.createPlayer(str(path), pj.PJMEDIA_FILE_NO_LOOP)
        player.startTransmit(self.getAudioMedia(-1))
        self._player = player

    def answer(self, code: int = 200) -> None:
        prm = pj.CallOpParam()
        prm.statusCode = code
        super().answer(prm)

    def end(self) -> None:
        if not self.is_ended:
            self.ended_locally = True
            prm = pj.CallOpParam()
            prm.statusCode = 603 if not self.is_connected else 200
            try:
                self.hangup(prm)
            except pj.Error as exc:  # already gone on the wire
                log.debug("hangup: %s", exc.info())

    def heard(self) -> bytes:
        """All audio received so far: 8 kHz 16-bit mono PCM."""
        return self._tap.pcm() if self._tap else b""

    def speech(self) -> Speech:
        return find_speech(self.heard())

    def heard_prompt(
        self, wav: str | Path, *, threshold: float = 0.8, head: float | None = None
    ) -> list[float]:
        """When this call heard the recording `wav` (seconds from the start of media); `head`:
        its first seconds only (see `find_prompt`)."""
        return find_prompt(self.heard(), wav, threshold=threshold, head=head)

    def heard_seconds(self) -> float:
        return len(self.heard()) / (CLOCK_RATE * 2)

    def wait_connected(self, timeout: float = 10.0) -> None:
        self.stack.wait_for(lambda: self.is_connected or self.is_ended, timeout, "call answered")
        if not self.is_connected:
            raise SimError(f"call not answered: {self.last_status} {self.last_reason}")

    def wait_ended(self, timeout: float = 10.0) -> None:
        self.stack.wait_for(lambda: self.is_ended, timeout, "call ended")

    def wait_prompt_end(
        self, *, silence: float = 0.7, timeout: float = 15.0, after: float | None = None
    ) -> float:
        """Wait until speech was heard (after `after` seconds of media) and then `silence`
        seconds passed without speech. Returns the media time at which the prompt ended."""
        start = (self.heard_seconds() if after is None else after)

        def done() -> bool:
            if self.is_ended:
                return True
            heard = self.heard_seconds()
            segs = [s for s in self.speech().segments if s[1] > start]
            return bool(segs) and heard - segs[-1][1] >= silence

        self.stack.wait_for(done, timeout, "end of prompt", step=0.1)
        segs = [s for s in self.speech().segments if s[1] > start]
        if not segs:
            raise SimError("call ended before any prompt was heard")
        return segs[-1][1]

    def save_wav(self, path: str | Path) -> Path:
        return write_wav(path, self.heard())


def _answer_if_ringing(call: SimCall) -> None:
    if not call.is_ended and not call.is_connected:
        call.answer(200)


class CallerLine(pj.Account):  # type: ignore[misc]
    """A caller ID the simulator calls from, entering as a carrier trunk would (no registration)."""

    def __init__(self, stack: SipStack, number: str, *, name: str = "", withheld: bool = False):
        super().__init__()
        self.stack = stack
        self.number = number
        cfg = pj.AccountConfig()
        user = "anonymous" if withheld or not number else number
        display = f'"{name}" ' if name and not withheld else ""
        cfg.idUri = f"{display}<sip:{user}@127.0.0.1>"
        if withheld:
            # RFC 3323/3325: the network withholds the number; Asterisk sees an anonymous From.
            cfg.idUri = '"Anonymous" <sip:anonymous@anonymous.invalid>'
            hdr = pj.SipHeader()
            hdr.hName = "Privacy"
            hdr.hValue = "id"
            cfg.regConfig.headers.append(hdr)
        cfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        cfg.sipConfig.transportId = stack.transport_id
        self.create(cfg)
        self._withheld = withheld

    def call(self, target: str, *, headers: dict[str, str] | None = None) -> SimCall:
        call = SimCall(self.stack, self)
        prm = pj.CallOpParam(True)
        extra = dict(headers or {})
        if self._withheld:
            extra.setdefault("Privacy", "id")
        for name, value in extra.items():
            hdr = pj.SipHeader()
            hdr.hName = name
            hdr.hValue = value
            prm.txOption.headers.append(hdr)
        self.stack.calls.append(call)
        call.makeCall(target, prm)
        return call


class AgentPhone(pj.Account):  # type: ignore[misc]
    """A registered phone (an agent's) that can auto-answer after a ring delay."""

    def __init__(
        self,
        stack: SipStack,
        username: str,
        password: str,
        *,
        registrar: str | None = "sip:127.0.0.1:5060",
        auto_answer_after: float | None = 0.5,
        on_incoming: Callable[[SimCall], None] | None = None,
        play_file: str | None = None,
    ):
        super().__init__()
        self.stack = stack
        self.username = username
        self.auto_answer_after = auto_answer_after
        self.on_incoming = on_incoming
        self.incoming: list[SimCall] = []
        self.play_file = play_file
        self.registered = False
        self.reg_status = 0
        cfg = pj.AccountConfig()
        cfg.idUri = f"sip:{username}@127.0.0.1"
        if registrar:
            cfg.regConfig.registrarUri = registrar
            cfg.regConfig.timeoutSec = 300
        cred = pj.AuthCredInfo("digest", "*", username, 0, password)
        cfg.sipConfig.authCreds.append(cred)
        cfg.sipConfig.transportId = stack.transport_id
        cfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        self.create(cfg)

    def onRegState(self, prm: pj.OnRegStateParam) -> None:  # noqa: N802
        info = self.getInfo()
        self.registered = bool(info.regIsActive)
        self.reg_status = info.regStatus

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:  # noqa: N802
        call = SimCall(self.stack, self, prm.callId)
        call._play_file = self.play_file
        self.stack.calls.append(call)
        self.incoming.append(call)
        call.answer(180)
        if self.on_incoming:
            self.on_incoming(call)
        if self.auto_answer_after is not None:
            self.stack.later(self.auto_answer_after, lambda: _answer_if_ringing(call))

    def wait_registered(self, timeout: float = 10.0) -> None:
        self.stack.wait_for(
            lambda: self.registered or self.reg_status >= 300, timeout, "registration"
        )
        if not self.registered:
            raise SimError(f"{self.username}: registration failed with {self.reg_status}")

    def unregister(self) -> None:
        self.setRegistration(False)


def _destroy(obj: object) -> None:
    """Run a SWIG object's C++ destructor now and disown it so that it never runs twice."""
    if obj is None or not getattr(obj, "thisown", False):
        return
    destroy = getattr(type(obj), "__swig_destroy__", None)
    if destroy is not None:
        destroy(obj)
    obj.thisown = False  # type: ignore[attr-defined]


class SipStack:
    """The process-wide pjsua2 endpoint: one per process, used from one thread."""

    #: The open stack, if any (pjsua2 allows one per process): a script waiting on something
    #: else (a subprocess, a poll) can keep its phones answering by pumping it meanwhile.
    live: SipStack | None = None

    def __init__(self, *, port: int = 0, log_level: int = 0):
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        try:
            self._setup(port, log_level)
        except BaseException:
            # A half-made endpoint would outlive this object, and pjsua2 allows one per
            # process: the next SipStack() would abort the whole process (a taken SIP port
            # once took a full test run down that way).
            self.ep.libDestroy()
            _destroy(self.ep)
            raise

    def _setup(self, port: int, log_level: int) -> None:
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = 32  # PJSUA_MAX_CALLS in the wheel; more aborts the process
        cfg.logConfig.level = log_level
        cfg.logConfig.consoleLevel = log_level
        cfg.medConfig.clockRate = CLOCK_RATE
        cfg.medConfig.sndClockRate = CLOCK_RATE
        cfg.medConfig.maxMediaPorts = 2048
        self.ep.libInit(cfg)
        tcfg = pj.TransportConfig()
        tcfg.port = port
        tcfg.boundAddress = "127.0.0.1"
        self.transport_id = self.ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        self.ep.libStart()
        self.ep.audDevManager().setNullDev()
        self.calls: list[SimCall] = []
        self.accounts: list[pj.Account] = []
        self._timers: list[tuple[float, Callable[[], None]]] = []
        self._closed = False
        self._thread = threading.get_ident()
        self._pumping = False
        SipStack.live = self

    @property
    def local_port(self) -> int:
        return int(self.ep.transportGetInfo(self.transport_id).localName.rsplit(":", 1)[1])

    def caller(self, number: str, *, name: str = "", withheld: bool = False) -> CallerLine:
        line = CallerLine(self, number, name=name, withheld=withheld)
        self.accounts.append(line)
        return line

    def agent(self, username: str, password: str, **kw: object) -> AgentPhone:
        phone = AgentPhone(self, username, password, **kw)  # type: ignore[arg-type]
        self.accounts.append(phone)
        return phone

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        self._timers.append((time.monotonic() + delay, fn))

    def pump(self, seconds: float = 0.0) -> None:
        """Run pjsua2's event loop (and our timers) for `seconds`."""
        deadline = time.monotonic() + seconds
        self._pumping = True
        try:
            while True:
                self.ep.libHandleEvents(10)
                now = time.monotonic()
                due = [t for t in self._timers if t[0] <= now]
                if due:
                    self._timers = [t for t in self._timers if t[0] > now]
                    for _, fn in due:
                        fn()
                if now >= deadline:
                    return
        finally:
            self._pumping = False

    def can_pump(self) -> bool:
        """From the stack's own thread, when not already inside `pump()` (a timer's callback)."""
        return not self._closed and not self._pumping and threading.get_ident() == self._thread

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float, what: str, *, step: float = 0.02
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                raise SimTimeout(f"timed out after {timeout:.1f}s waiting for {what}")
            self.pump(step)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if SipStack.live is self:
            SipStack.live = None
        try:
            self._teardown()
        finally:
            # Always, and the C++ endpoint deleted now, not when Python frees the wrapper: a
            # failed test's traceback keeps its stack alive, and pjsua2 allows one endpoint per
            # process, so the next SipStack() would abort the whole test run.
            self.ep.libDestroy()
            _destroy(self.ep)

    def _teardown(self) -> None:
        self.ep.hangupAllCalls()
        self.pump(0.3)
        for account in self.accounts:
            try:
                account.shutdown()
            except pj.Error as exc:
                log.debug("account shutdown: %s", exc.info())
        self.pump(0.2)
        # Calls (and media ports, accounts) must be destroyed before libDestroy, or pjsua asserts
        # and aborts the process. Scripts may still hold references, so destroy the C++ objects
        # here and disown them: Python's garbage collector then frees only the wrappers.
        for call in self.calls:
            for media in (call._player, call._tap):
                _destroy(media)
            call._player = call._tap = None
            _destroy(call)
        for account in self.accounts:
            _destroy(account)
        self.calls.clear()
        self.accounts.clear()

    def __enter__(self) -> SipStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
