"""Runs a loaded flow for one call against a `CallChannel`.

The interpreter knows nothing of AGI: it speaks to the channel protocol, the prompt renderer
and the services protocols. One `run()` per call; the `FlowSet` it was given stays the version
that call uses to the end, whatever is deployed meanwhile.

Input semantics (menu, collect, confirm) follow VoiceXML/FreeSWITCH menus: no-input and
no-match are counted separately with their own maximum and exit; counters reset when a node is
entered from another node, not when it loops on itself; attempt N plays the Nth escalation
prompt, then the short re-prompt if the node was heard before in this call.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

from ivr_engine.errors import ChannelHangup, FlowError, IvrError
from ivr_engine.flow import expr as ex
from ivr_engine.flow.channel import CallChannel
from ivr_engine.flow.model import (
    LANGUAGES,
    CollectNode,
    ConfirmNode,
    Flow,
    FlowSet,
    HangupNode,
    InputNode,
    LookupNode,
    MenuNode,
    Node,
    PlayNode,
    Prompts,
    QueueNode,
    ReturnNode,
    ScheduleNode,
    SetNode,
    SubflowNode,
    SwitchNode,
    TransferNode,
)
from ivr_engine.flow.services import (
    AuditEntry,
    FlowOutcome,
    PromptRenderer,
    QueueOutcome,
    QueueRequest,
    Services,
)
from ivr_engine.log import call_id_var
from ivr_engine.prompts import language_chain

log = logging.getLogger(__name__)

MASK = "******"
MAX_STEPS = 5000
ALL_KEYS = "0123456789*#"
TERM_TIMEOUT = 1.5  # how long a full entry waits for its terminator


class FlowRuntimeError(FlowError):
    """A flow failed while a call ran (bad data, missing source, depth exceeded)."""


# ------------------------------------------------------------------------- built-in checks


def luhn_ok(digits: str) -> bool:
    if not digits.isdigit() or len(digits) < 2:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def cn_mobile_ok(digits: str) -> bool:
    return re.fullmatch(r"1[3-9]\d{9}", digits) is not None


def cn_id_ok(digits: str) -> bool:
    """Resident identity number (GB 11643): 17 digits + ISO 7064 MOD 11-2 check (X keyed as *)."""
    if not re.fullmatch(r"\d{17}[\dX*]", digits):
        return False
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    s = sum(int(c) * w for c, w in zip(digits[:17], weights, strict=True))
    check = "10X98765432"[s % 11]
    last = "X" if digits[17] in "X*" else digits[17]
    return last == check


CHECKS: dict[str, Callable[[str], bool]] = {
    "luhn": luhn_ok,
    "cn_mobile": cn_mobile_ok,
    "cn_id": cn_id_ok,
}


# ------------------------------------------------------------------------------ call state


@dataclass
class Frame:
    flow: Flow
    env: dict[str, object]
    caller_node: SubflowNode | None
    sensitive: frozenset[str]
    counters: dict[str, list[int]] = field(default_factory=dict)  # node -> [no_input, no_match]
    visits: dict[str, int] = field(default_factory=dict)
    menus: list[str] = field(default_factory=list)  # menu history for the '#' back hotkey


@dataclass
class CallState:
    call_id: str
    channel: CallChannel
    flows: FlowSet
    langs: tuple[str, ...]
    frames: list[Frame]
    heard: set[tuple[str, str]] = field(default_factory=set)
    steps: int = 0
    node: str = ""
    in_error: bool = False
    pending: str | None = None  # a digit that barged into a play node: type-ahead

    @property
    def frame(self) -> Frame:
        return self.frames[-1]


class _End(Exception):
    """Internal: the flow is finished with this outcome."""

    def __init__(self, outcome: FlowOutcome):
        self.outcome = outcome


def _outcome(state: CallState, kind: str, **detail: str) -> FlowOutcome:
    return FlowOutcome(kind, state.frame.flow.name, state.node, MappingProxyType(detail))


class Interpreter:
    def __init__(
        self,
        flows: FlowSet,
        services: Services,
        prompts: PromptRenderer,
        *,
        clock: Callable[[], dt.datetime] | None = None,
        max_steps: int = MAX_STEPS,
    ):
        self.flows = flows
        self.services = services
        self.prompts = prompts
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.max_steps = max_steps
        self._handlers: dict[type[Node], Callable[[CallState, Any], Any]] = {
            PlayNode: self._play,
            MenuNode: self._menu,
            CollectNode: self._collect,
            ConfirmNode: self._confirm,
            SwitchNode: self._switch,
            ScheduleNode: self._schedule,
            SetNode: self._set,
            LookupNode: self._lookup,
            SubflowNode: self._subflow,
            ReturnNode: self._return,
            QueueNode: self._queue,
            TransferNode: self._transfer,
            HangupNode: self._hangup,
        }

    # ---------------------------------------------------------------------------- entry

    async def run(
        self,
        channel: CallChannel,
        flow_name: str | None = None,
        *,
        params: Mapping[str, object] | None = None,
        answer: bool = True,
        flows: FlowSet | None = None,
    ) -> FlowOutcome:
        """Run the call to its end; never raises except CancelledError.

        `flows` is the flow set this call uses to its end (the registry's current one when the
        call started); default: the set the interpreter was built with."""
        call_id = channel.call_id
        token = call_id_var.set(call_id)
        try:
            return await self._run(channel, flows or self.flows, flow_name, params or {}, answer)
        finally:
            call_id_var.reset(token)

    async def _run(
        self,
        channel: CallChannel,
        flows: FlowSet,
        flow_name: str | None,
        params: Mapping[str, object],
        answer: bool,
    ) -> FlowOutcome:
        name = flow_name or flows.entry or ""
        flow = flows.flows.get(name)
        state = None
        if flow is not None:
            state = CallState(
                channel.call_id, channel, flows, language_chain(flow.language, flow.language), []
            )
            try:
                state.frames.append(self._frame(state, flow, None, params))
            except FlowError as exc:
                log.error("cannot start flow %r: %s", name, exc)
                state = None
        if flow is None or state is None:
            if flow is None:
                log.error("no flow %r to run; sending the call back to the dialplan", name)
            out = FlowOutcome("error", name, "", MappingProxyType({"reason": "cannot start"}))
            await self._fallback(channel, "cannot start flow")
            self.services.observer.flow_ended(channel.call_id, out)
            return out
        try:
            if answer:
                await channel.answer()
            outcome = await self._loop(state, flow.start)
        except ChannelHangup:
            log.info("caller hung up in %s/%s", state.frame.flow.name, state.node)
            outcome = _outcome(state, "caller_hangup")
            await self._after_hangup(state)
        self._wipe(state)
        self.services.observer.flow_ended(state.call_id, outcome)
        return outcome

    def _frame(
        self, state: CallState, flow: Flow, caller: SubflowNode | None, params: Mapping[str, object]
    ) -> Frame:
        env: dict[str, object] = {}
        if state.frames:
            parent = state.frames[-1].env
            for key, value in parent.items():
                if key.startswith(("caller.", "call.")):
                    env[key] = value
        else:
            ch = state.channel
            info = ch.caller
            now = self.clock().astimezone(ZoneInfo(flow.timezone))
            env.update(
                {
                    "caller.number": info.number,
                    "caller.name": info.name,
                    "caller.dialled": info.dialled,
                    "caller.withheld": info.withheld or not info.number,
                    "call.id": state.call_id,
                    "call.date": now.date(),
                    "call.day": now.day,
                    "call.month": now.month,
                    "call.year": now.year,
                    "call.weekday": now.isoweekday(),
                    "call.hour": now.hour,
                    "call.minute": now.minute,
                    "call.time": f"{now.hour:02d}:{now.minute:02d}",
                }
            )
        env["call.flow"] = flow.name
        env["call.lang"] = state.langs[0]
        for decl in flow.vars.values():
            env[decl.name] = decl.default
        for var, src in flow.results.items():
            decl_src = flow.sources[src]
            for fname, ftype in decl_src.fields.items():
                env[f"{var}.{fname}"] = ex.default_of(ftype)
        for key, value in params.items():
            if key not in flow.params:
                raise FlowRuntimeError(f"flow {flow.name!r} has no parameter {key!r}")
            env[key] = ex.coerce(value, flow.vars[key].type)
        return Frame(flow, env, caller, flow.sensitive_names())

    # ---------------------------------------------------------------------------- the loop

    async def _loop(self, state: CallState, start: str) -> FlowOutcome:
        target: str | None = start
        prev: str | None = None
        while True:
            try:
                while target is not None:
                    target = await self._step(state, target, prev)
                    prev = state.node
                raise FlowRuntimeError("flow stopped without an end")  # handlers always return
            except _End as end:
                return end.outcome
            except ChannelHangup:
                raise
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                target = await self._on_error(state, exc)
                prev = None
                if target is None:
                    return _outcome(state, "error", reason=_brief(exc))

    async def _step(self, state: CallState, target: str, prev: str | None) -> str | None:
        frame = state.frame
        node = frame.flow.nodes[target]
        state.steps += 1
        if state.steps > self.max_steps:
            raise FlowRuntimeError(f"more than {self.max_steps} steps in one call")
        if prev != target:
            # entered from elsewhere: no-input/no-match counters start again
            frame.counters.pop(target, None)
        if node.max_visits is not None:
            n = frame.visits.get(target, 0) + 1
            frame.visits[target] = n
            if n > node.max_visits:
                frame.visits[target] = 0
                state.node = target
                return node.on_max_visits
        state.node = target
        self.services.observer.node_entered(state.call_id, frame.flow.name, target, node.kind)
        result: str | None = await self._handlers[type(node)](state, node)
        return result

    async def _on_error(self, state: CallState, exc: Exception) -> str | None:
        frame = state.frame
        where = f"{frame.flow.name}/{state.node}"
        if isinstance(exc, IvrError):
            log.error("flow error at %s: %s", where, exc)
        else:
            log.exception("unexpected error at %s", where)
        if not state.in_error:
            state.in_error = True
            # unwind to the innermost flow that has an on_error route
            while state.frames:
                f = state.frames[-1]
                if f.flow.on_error:
                    return f.flow.on_error
                if len(state.frames) == 1:
                    break
                state.frames.pop()
        await self._fallback(state.channel)
        return None

    async def _fallback(self, channel: CallChannel, reason: str = "flow error") -> None:
        """No flow route left: ask the dialplan (asterisk-conf/extensions.conf, `ivr-next`) to
        send the caller to the operators, and say why."""
        try:
            await channel.set_variable("IVR_NEXT", "operator")
            await channel.set_variable("IVR_FLOW_ERROR", reason)
        except ChannelHangup:
            pass

    async def _after_hangup(self, state: CallState) -> None:
        """Run the on_hangup routes (innermost first) with no caller: set/switch/lookup only."""
        while state.frames:
            frame = state.frames[-1]
            if frame.flow.on_hangup:
                target: str | None = frame.flow.on_hangup
                steps = 0
                try:
                    while target is not None and steps < 100:
                        steps += 1
                        node = frame.flow.nodes[target]
                        state.node = target
                        self.services.observer.node_entered(
                            state.call_id, frame.flow.name, target, node.kind
                        )
                        if isinstance(node, HangupNode | ReturnNode):
                            break
                        target = await self._handlers[type(node)](state, node)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.error(
                        "on_hangup of %s failed at %s: %s", frame.flow.name, state.node, _brief(exc)
                    )
            state.frames.pop()

    def _wipe(self, state: CallState) -> None:
        for frame in state.frames:
            for name in frame.sensitive:
                frame.env.pop(name, None)

    # ---------------------------------------------------------------------------- helpers

    def _mask_value(self, frame: Frame, name: str, value: object) -> str:
        if name in frame.sensitive:
            return MASK
        return ex.coerce(value, "str")  # type: ignore[return-value]

    def _assign(self, state: CallState, name: str, value: object) -> None:
        frame = state.frame
        frame.env[name] = value
        self.services.observer.variable_set(
            state.call_id, name, self._mask_value(frame, name, value)
        )

    def _utterances(self, state: CallState, prompts: Prompts, node: str) -> list[Any]:
        out: list[Any] = []
        env = state.frame.env
        for ref in prompts:
            sensitive = (ref.value is not None and ref.value.sensitive) or any(
                e.sensitive for _, e in ref.vars
            )
            try:
                if ref.say is not None and ref.value is not None:
                    utts = self.prompts.say(ref.say, ref.value(env), state.langs)
                    label = f"say:{ref.say}"
                else:
                    variables = {k: e(env) for k, e in ref.vars}
                    utts = self.prompts.render(ref.prompt or "", state.langs, variables)
                    label = ref.prompt or ""
            except Exception as exc:
                if not sensitive:
                    raise
                # the renderer's message may quote the value; it is a sensitive one
                what = ref.prompt or f"say {ref.say}"
                raise FlowRuntimeError(
                    f"{what} failed with a sensitive value ({type(exc).__name__}; details withheld)"
                ) from None
            self.services.observer.prompt_played(
                state.call_id, node, label, " ".join(u.text for u in utts)
            )
            out.extend(utts)
        return out

    async def _say(
        self, state: CallState, prompts: Prompts, node: str, interrupt: str
    ) -> str | None:
        if state.pending is not None:
            digit, state.pending = state.pending, None
            if interrupt:
                return digit
            # legal text cannot be skipped: type-ahead is dropped, as Asterisk drops DTMF
            # during a STREAM FILE without escape digits
        if not prompts:
            return None
        utts = self._utterances(state, prompts, node)
        if not utts:
            return None
        return await state.channel.play(utts, interrupt=interrupt)

    # ---------------------------------------------------------------------------- nodes

    async def _play(self, state: CallState, node: PlayNode) -> str | None:
        digit = await self._say(state, node.prompt, node.id, ALL_KEYS if node.barge_in else "")
        if digit is not None:
            state.pending = digit  # skips the rest; the next input node takes it
            # the digit itself is not reported: it may be the first digit of a PIN
            self.services.observer.input_received(state.call_id, node.id, "", "barge-in")
        return node.next

    def _first_prompts(self, state: CallState, node: InputNode) -> Prompts:
        key = (state.frame.flow.name, node.id)
        if key in state.heard and node.reprompt:
            return node.reprompt
        state.heard.add(key)
        return node.prompt

    def _fail(self, state: CallState, node: InputNode, which: int) -> tuple[str | None, Prompts]:
        """Count a no-input (0) or no-match (1): (exit target when exhausted, prompts to play)."""
        counters = state.frame.counters.setdefault(node.id, [0, 0])
        counters[which] += 1
        policy = node.no_input if which == 0 else node.no_match
        if counters[which] >= policy.max:
            return policy.exit, ()
        return None, policy.prompt_for(counters[which]) + (node.reprompt or node.prompt)

    def _hotkey(
        self, state: CallState, node: InputNode, digit: str
    ) -> tuple[str, str | None] | None:
        """('goto', target) | ('repeat', None) | None when `digit` is not an active hotkey."""
        if not node.hotkeys:
            return None
        action = state.frame.flow.hotkeys.get(digit)
        if action is None:
            return None
        if action.startswith("operator:"):
            return "goto", action.split(":", 1)[1]
        if action == "repeat":
            return "repeat", None
        if action == "back":
            menus = state.frame.menus
            # the current menu is on top when we are in a menu
            history = [m for m in menus if m != node.id]
            if history:
                back = history[-1]
                while menus and menus[-1] != back:
                    menus.pop()
                return "goto", back
        return None

    async def _menu(self, state: CallState, node: MenuNode) -> str | None:
        ch = state.channel
        frame = state.frame
        if not frame.menus or frame.menus[-1] != node.id:
            if node.id in frame.menus:
                del frame.menus[frame.menus.index(node.id) + 1 :]
            else:
                frame.menus.append(node.id)
        prompts = self._first_prompts(state, node)
        interrupt = ALL_KEYS if node.barge_in else ""
        while True:
            digit = await self._say(state, prompts, node.id, interrupt)
            if digit is None:
                digit = await ch.wait_digit(node.timeout)
            if digit is None:
                self.services.observer.input_received(state.call_id, node.id, "", "no-input")
                exit_, prompts = self._fail(state, node, 0)
                if exit_:
                    return exit_
                continue
            target = node.options.get(digit)
            if target is not None:
                self.services.observer.input_received(state.call_id, node.id, digit, "match")
                return target
            hk = self._hotkey(state, node, digit)
            if hk is not None:
                self.services.observer.input_received(
                    state.call_id, node.id, digit, f"hotkey:{hk[0]}"
                )
                if hk[0] == "goto":
                    return hk[1]
                prompts = node.prompt
                continue
            self.services.observer.input_received(state.call_id, node.id, digit, "no-match")
            exit_, prompts = self._fail(state, node, 1)
            if exit_:
                return exit_

    def _valid(self, node: CollectNode, digits: str) -> bool:
        if not node.min_digits <= len(digits) <= node.max_digits:
            return False
        v = node.validation
        if v.pattern is not None and re.fullmatch(v.pattern, digits) is None:
            return False
        if v.luhn and not luhn_ok(digits):
            return False
        if v.check is not None and not CHECKS[v.check](digits):
            return False
        return True

    async def _collect(self, state: CallState, node: CollectNode) -> str | None:
        ch = state.channel
        if node.sensitive:
            state.pending = None
            await ch.flush_digits()
        prompts = self._first_prompts(state, node)
        interrupt = ALL_KEYS if node.barge_in else ""
        show: Callable[[str], str] = (lambda d: MASK) if node.sensitive else (lambda d: d)
        while True:
            first = await self._say(state, prompts, node.id, interrupt)
            if first is None:
                first = await ch.wait_digit(node.first_digit_timeout)
            if first is None:
                self.services.observer.input_received(state.call_id, node.id, "", "no-input")
                exit_, prompts = self._fail(state, node, 0)
                if exit_:
                    return exit_
                continue
            hk = self._hotkey(state, node, first)
            if hk is not None:
                self.services.observer.input_received(
                    state.call_id, node.id, first, f"hotkey:{hk[0]}"
                )
                if hk[0] == "goto":
                    return hk[1]
                prompts = node.prompt
                continue
            digits = ""
            key: str | None = first
            while key is not None:
                if node.terminator and key == node.terminator:
                    break
                digits += key
                if len(digits) >= node.max_digits:
                    if node.terminator:
                        # the prompt asked for the terminator: a caller presses it even when
                        # the entry is already complete; swallow it (VoiceXML termtimeout)
                        after = await ch.wait_digit(TERM_TIMEOUT)
                        if after is not None and after != node.terminator and not node.sensitive:
                            state.pending = after  # type-ahead for the next input
                    break
                key = await ch.wait_digit(node.inter_digit_timeout)
            if self._valid(node, digits):
                self.services.observer.input_received(state.call_id, node.id, show(digits), "match")
                decl = state.frame.flow.vars[node.var]
                self._assign(state, node.var, ex.coerce(digits, decl.type))
                return node.next
            self.services.observer.input_received(state.call_id, node.id, show(digits), "no-match")
            exit_, prompts = self._fail(state, node, 1)
            if exit_:
                return exit_

    async def _confirm(self, state: CallState, node: ConfirmNode) -> str | None:
        ch = state.channel
        state.pending = None
        await ch.flush_digits()  # what was typed before the read-back must not confirm it
        prompts = self._first_prompts(state, node)
        interrupt = ALL_KEYS if node.barge_in else ""
        keys = {node.confirm_key: ("confirmed", node.yes), node.retry_key: ("re-enter", node.retry)}
        try:
            while True:
                digit = await self._say(state, prompts, node.id, interrupt)
                if digit is None:
                    digit = await ch.wait_digit(node.timeout)
                if digit is None:
                    self.services.observer.input_received(state.call_id, node.id, "", "no-input")
                    exit_, prompts = self._fail(state, node, 0)
                    if exit_:
                        await self._audit(state, node, "cancelled:silence")
                        return exit_
                    continue
                chosen = keys.get(digit)
                if chosen is not None:
                    self.services.observer.input_received(state.call_id, node.id, digit, chosen[0])
                    await self._audit(state, node, chosen[0])
                    return chosen[1]
                hk = self._hotkey(state, node, digit)
                if hk is not None and hk[0] == "goto":
                    self.services.observer.input_received(
                        state.call_id, node.id, digit, "hotkey:goto"
                    )
                    await self._audit(state, node, "cancelled:operator")
                    return hk[1]
                self.services.observer.input_received(state.call_id, node.id, digit, "no-match")
                exit_, prompts = self._fail(state, node, 1)
                if exit_:
                    await self._audit(state, node, "cancelled:invalid")
                    return exit_
        except ChannelHangup:
            await self._audit(state, node, "cancelled:hangup")
            raise

    async def _audit(self, state: CallState, node: ConfirmNode, outcome: str) -> None:
        if node.audit is None:
            return
        env = state.frame.env
        details = {k: str(ex.coerce(e(env), "str")) for k, e in node.audit.details}
        entry = AuditEntry(
            state.call_id, state.frame.flow.name, node.id, node.audit.operation,
            MappingProxyType(details), outcome,
        )  # fmt: skip
        await self.services.audit.record(entry)

    async def _switch(self, state: CallState, node: SwitchNode) -> str | None:
        env = state.frame.env
        for case in node.cases:
            if case.when(env):
                return case.goto
        return node.default

    async def _schedule(self, state: CallState, node: ScheduleNode) -> str | None:
        tz = ZoneInfo(node.timezone or state.frame.flow.timezone)
        now = self.clock().astimezone(tz)
        day = now.date().isoformat()
        if day in node.holidays or day[5:] in node.holidays:
            return node.holiday or node.closed
        minute = now.hour * 60 + now.minute
        for start, end in node.hours[now.weekday()]:
            if start <= minute < end:
                return node.open
        return node.closed

    async def _set(self, state: CallState, node: SetNode) -> str | None:
        env = state.frame.env
        values = [(name, e(env)) for name, e in node.assign]
        for name, value in values:
            self._assign(state, name, value)
        if node.language is not None:
            lang = str(node.language(env)).strip()
            if lang in LANGUAGES:
                state.langs = language_chain(lang, state.frame.flow.language)
                for frame in state.frames:
                    frame.env["call.lang"] = lang
                self.services.observer.variable_set(state.call_id, "call.lang", lang)
            elif lang:
                log.warning("set %s: unknown language %r ignored", node.id, lang)
        for name, e in node.channel:
            await state.channel.set_variable(name, ex.coerce(e(env), "str"))  # type: ignore[arg-type]
        return node.next

    async def _lookup(self, state: CallState, node: LookupNode) -> str | None:
        frame = state.frame
        env = frame.env
        params = {k: e(env) for k, e in node.params}
        source = self.services.sources.get(node.source)
        if source is None:
            log.error("lookup %s: no data source %r is wired in", node.id, node.source)
            return node.error
        try:
            async with asyncio.timeout(node.timeout):
                result = await source(params)
        except TimeoutError:
            log.warning("lookup %s: %s timed out after %.1fs", node.id, node.source, node.timeout)
            return self._lookup_failed(state, node)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # never log params, nor a message that may quote them when one is sensitive
            secret = any(e.sensitive for _, e in node.params)
            why = type(exc).__name__ + " (details withheld)" if secret else _brief(exc)
            log.warning("lookup %s: %s failed: %s", node.id, node.source, why)
            return self._lookup_failed(state, node)
        if not isinstance(result, Mapping):
            log.warning(
                "lookup %s: %s returned %s, not a mapping",
                node.id,
                node.source,
                type(result).__name__,
            )
            return self._lookup_failed(state, node)
        if node.result:
            decl = frame.flow.sources[node.source]
            for fname, ftype in decl.fields.items():
                try:
                    value = ex.coerce(result.get(fname), ftype)
                except ex.ExprRuntimeError as exc:
                    log.warning("lookup %s: field %s: %s", node.id, fname, exc)
                    return self._lookup_failed(state, node)
                self._assign(state, f"{node.result}.{fname}", value)
        return node.next

    def _lookup_failed(self, state: CallState, node: LookupNode) -> str:
        return node.error

    async def _subflow(self, state: CallState, node: SubflowNode) -> str | None:
        callee = state.flows.get(node.flow)
        if len(state.frames) >= state.frame.flow.max_subflow_depth + 1:
            raise FlowRuntimeError(f"subflow depth above {state.frame.flow.max_subflow_depth}")
        env = state.frame.env
        params = {k: e(env) for k, e in node.params}
        state.frames.append(self._frame(state, callee, node, params))
        return callee.start

    async def _return(self, state: CallState, node: ReturnNode) -> str | None:
        frame = state.frame
        values = {k: e(frame.env) for k, e in node.values}
        caller_node = frame.caller_node
        if caller_node is None:
            raise _End(_outcome(state, "return", exit=node.exit))
        for name in frame.sensitive:
            frame.env.pop(name, None)
        state.frames.pop()
        for local, returned in caller_node.outputs:
            decl = frame.flow.returns[returned]
            value = values.get(returned, ex.default_of(decl.type))
            self._assign(state, local, value)
        state.node = caller_node.id
        if node.exit == "next":
            target = caller_node.next
        else:
            target = caller_node.exits.get(node.exit)
        if target is None:
            raise FlowRuntimeError(
                f"subflow {frame.flow.name!r} returned {node.exit!r}, not mapped"
            )
        return target

    async def _queue(self, state: CallState, node: QueueNode) -> str | None:
        env = state.frame.env
        request = QueueRequest(
            call_id=state.call_id,
            queue=str(node.queue(env)),
            skills=str(node.skills(env)) if node.skills else "",
            priority=int(node.priority(env)),  # type: ignore[call-overload]
            language=str(node.language(env)) if node.language else state.langs[0],
            data=MappingProxyType({k: str(ex.coerce(e(env), "str")) for k, e in node.data}),
            timeout=node.timeout,
        )
        try:
            async with asyncio.timeout(node.timeout + 30):
                result: QueueOutcome = await self.services.queue.enqueue(state.channel, request)
        except TimeoutError:
            result = QueueOutcome("timeout", detail="no answer from the queue gateway")
        target = node.on.get(result.kind)
        if target is not None:
            return target
        raise _End(
            _outcome(
                state,
                "queue",
                queue=request.queue,
                skills=request.skills,
                priority=str(request.priority),
                language=request.language,
                result=result.kind,
                agent=result.agent,
                **{f"data.{k}": v for k, v in request.data.items()},
            )  # fmt: skip
        )

    async def _transfer(self, state: CallState, node: TransferNode) -> str | None:
        target = str(node.to(state.frame.env))
        status = await state.channel.transfer(target, timeout=node.timeout)
        if status == "answered":
            raise _End(_outcome(state, "transfer", to=target))
        if status == "hangup":
            raise ChannelHangup("caller hung up during transfer")
        if status == "busy":
            return node.busy
        if status == "noanswer" and node.noanswer:
            return node.noanswer
        return node.fail

    async def _hangup(self, state: CallState, node: HangupNode) -> str | None:
        await state.channel.set_variable("IVR_NEXT", "hangup")
        await self._say(state, node.prompt, node.id, "")
        await state.channel.hangup()
        raise _End(_outcome(state, "hangup", reason=node.reason))


def _brief(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."
