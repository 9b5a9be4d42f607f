"""Flow data sources for agents' own calls: the agent flow (`flows/agent.yaml`) behind the
phones' feature codes *90 log in, *91 log out, *92 pause (with a reason), *93 resume.

They act on the running ACD (`engine.acd.router`) and are merged into every call's sources
by `sources.build_sources`. Every source takes the calling phone's endpoint as `endpoint`:
the dialplan ([agents] in asterisk-conf/extensions-agents.conf) sets CALLERID(num) to
`${CHANNEL(endpoint)}` before the AGI, so it is the PJSIP endpoint that authenticated the
call, not a number the phone chose. The agent is the roster entry with that endpoint; there is
no parameter that names another agent, so an agent can only ever act on itself.

Each source answers with the same fields, and never raises for a refusal (the flow says why):

    status    done | already | not_logged_in | not_allowed | bad_reason | unknown_agent | no_acd
    agent     the roster id ("" when unknown)
    state     the agent's state afterwards (acd.agent_state values: ready, paused, ...)
    reason    the pause reason afterwards ("" when not paused)
    language  the agent's language for the confirmation (cmn | yue | en | ""): the language
              skill with the highest level in the roster (mandarin, cantonese, english)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from acd.errors import AcdError
from ivr_engine.flow.services import DataSource

if TYPE_CHECKING:
    from acd.roster import Roster
    from ivr_engine.app import Engine
    from ivr_engine.sources import CallContext

log = logging.getLogger(__name__)

#: Roster language skills -> prompt languages. Ties go to the earlier entry.
LANGUAGE_SKILLS: tuple[tuple[str, str], ...] = (
    ("mandarin", "cmn"),
    ("cantonese", "yue"),
    ("english", "en"),
)
#: A pause reason as the router, MQTT and `ivr-engine agents` carry it.
PAUSE_REASON = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
#: A channel name (PJSIP/1005-0000002a) -> its endpoint (PJSIP/1005).
_CHANNEL = re.compile(r"^(?P<endpoint>[A-Za-z]+/.+)-[0-9a-f]{8}\Z")
_ENDPOINT = re.compile(r"^[A-Za-z0-9_.\-]{1,64}\Z")

LOGGED_OUT = "logged-out"
READY = "ready"


class AgentRouter(Protocol):
    """The part of `acd.router.Router` the agent flow uses."""

    roster: Roster

    def agents(self) -> list[dict[str, Any]]: ...

    def login(self, agent_id: str, *, paused: str | None = None) -> None: ...

    def logout(self, agent_id: str) -> None: ...

    def pause(self, agent_id: str, reason: str) -> None: ...

    def resume(self, agent_id: str) -> None: ...


def endpoint_of(caller: str) -> str:
    """'1005', 'PJSIP/1005' or the channel 'PJSIP/1005-0000002a' -> 'PJSIP/1005'; '' when the
    text is not an endpoint (empty, withheld, spaces, ...)."""
    text = caller.strip()
    match = _CHANNEL.match(text)
    if match:
        text = match["endpoint"]
    tech, _, name = text.rpartition("/")
    if tech and tech.upper() != "PJSIP":
        return ""
    return f"PJSIP/{name}" if _ENDPOINT.match(name) else ""


def agent_language(skills: Mapping[str, int]) -> str:
    """The prompt language of the agent's best language skill; '' when it has none."""
    best, best_level = "", 0
    for skill, lang in LANGUAGE_SKILLS:
        level = skills.get(skill, 0)
        if level > best_level:
            best, best_level = lang, level
    return best


class AgentDesk:
    """The feature-code actions of one calling phone on one router (None: no ACD running)."""

    def __init__(self, router: AgentRouter | None, endpoint: str) -> None:
        self.router = router
        self.endpoint = endpoint_of(endpoint)
        entry = (
            router.roster.by_endpoint(self.endpoint)
            if router is not None and self.endpoint
            else None
        )
        self.agent = entry.id if entry is not None else ""
        self.language = agent_language(entry.spec.skills) if entry is not None else ""

    def _now(self) -> tuple[str, str]:
        if self.router is None or not self.agent:
            return LOGGED_OUT, ""
        for row in self.router.agents():
            if row["agent"] == self.agent:
                return str(row["state"]), str(row.get("reason") or "")
        return LOGGED_OUT, ""

    def _answer(self, status: str) -> dict[str, object]:
        state, reason = self._now()
        return {
            "status": status,
            "agent": self.agent,
            "state": state,
            "reason": reason if state != LOGGED_OUT else "",
            "language": self.language,
        }

    def _refusal(self) -> dict[str, object] | None:
        if self.router is None:
            return self._answer("no_acd")
        if not self.agent:
            return self._answer("unknown_agent")
        return None

    def status(self) -> dict[str, object]:
        return self._refusal() or self._answer("done")

    def act(self, verb: str, reason: str = "") -> dict[str, object]:
        """Apply `verb` (login | logout | pause | resume) to the calling agent."""
        refused = self._refusal()
        if refused is not None:
            return refused
        router = self.router
        if router is None:  # for mypy: _refusal() answered already
            return self._answer("no_acd")
        state, _ = self._now()
        if verb == "pause" and not PAUSE_REASON.match(reason):
            return self._answer("bad_reason")
        if verb == "login" and state != LOGGED_OUT:
            return self._answer("already")
        if verb == "logout" and state == LOGGED_OUT:
            return self._answer("already")
        if verb in ("pause", "resume") and state == LOGGED_OUT:
            return self._answer("not_logged_in")
        if verb == "resume" and state == READY:
            return self._answer("already")
        try:
            if verb == "login":
                router.login(self.agent)
            elif verb == "logout":
                router.logout(self.agent)
            elif verb == "pause":
                router.pause(self.agent, reason)
            elif verb == "resume":
                router.resume(self.agent)
            else:
                raise ValueError(f"unknown agent action {verb!r}")
        except AcdError as exc:  # IllegalTransition: on a call, a call ringing
            log.info(
                "agent %s: %s from the phone refused in state %s: %s", self.agent, verb, state, exc
            )
            return self._answer("not_allowed")
        log.info("agent %s: %s from the phone (was %s)", self.agent, verb, state)
        return self._answer("done")


def _router(engine: Engine) -> AgentRouter | None:
    acd = getattr(engine, "acd", None)
    router: AgentRouter | None = getattr(acd, "router", None) if acd is not None else None
    return router


def build_agent_sources(engine: Engine, ctx: CallContext) -> dict[str, DataSource]:
    """`acd.agent_status`, `acd.agent_login`, `acd.agent_logout`, `acd.agent_pause` (param
    `reason`) and `acd.agent_resume`, each with param `endpoint` (see the module docstring)."""

    def desk(params: Mapping[str, object]) -> AgentDesk:
        return AgentDesk(_router(engine), str(params.get("endpoint") or ""))

    def noted(verb: str, answer: dict[str, object]) -> dict[str, object]:
        ctx.record.event(
            "agent-feature",
            verb=verb,
            agent=answer["agent"],
            status=answer["status"],
            state=answer["state"],
            reason=answer["reason"],
        )
        return answer

    async def status(params: Mapping[str, object]) -> Mapping[str, object]:
        return desk(params).status()

    async def login(params: Mapping[str, object]) -> Mapping[str, object]:
        return noted("login", desk(params).act("login"))

    async def logout(params: Mapping[str, object]) -> Mapping[str, object]:
        return noted("logout", desk(params).act("logout"))

    async def pause(params: Mapping[str, object]) -> Mapping[str, object]:
        reason = str(params.get("reason") or "")
        return noted("pause", desk(params).act("pause", reason))

    async def resume(params: Mapping[str, object]) -> Mapping[str, object]:
        return noted("resume", desk(params).act("resume"))

    return {
        "acd.agent_status": status,
        "acd.agent_login": login,
        "acd.agent_logout": logout,
        "acd.agent_pause": pause,
        "acd.agent_resume": resume,
    }
