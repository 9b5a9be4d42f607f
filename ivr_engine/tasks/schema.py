"""The task submission schema (docs/tasks.md): parse, validate, and say exactly what is wrong.

Everything here is pure (no I/O, no asyncio): bytes from the broker in, a frozen `TaskRequest`
or a `TaskRejected` with the reason out. Validation is complete before anything is queued, so
a submission is either accepted whole or refused whole.

What is published of a task (`TaskRequest.view()`) never carries a whole phone number or a
card number: numbers are masked to their last four digits, e-mail addresses to their first
letter and domain, and digit runs that look like a card number (13-19 digits, spaces or dashes
allowed between them) inside the subject or body are masked the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from acd.errors import AcdError
from acd.model import CALLBACK, CHAT, EMAIL, SMS
from acd.requirement import Requirement, parse
from acd.roster import Roster

#: Channels a submission may name; voice enters through the IVR, never here.
TASK_CHANNELS = (SMS, EMAIL, CHAT, CALLBACK)
LANGUAGES = ("cmn", "yue", "en")  # the prompt catalogue's (ivr_engine.flow.model.LANGUAGES)

MAX_PAYLOAD_BYTES = 16 * 1024
MAX_SUBJECT = 200
MAX_BODY = 4000
MAX_SKILLS = 512
MAX_NAME = 100
MAX_EMAIL = 254
MAX_CIF = 64
MAX_REASON = 200
PRIORITY_LOWEST = 0  # app_queue's sense, as in the flows: higher is more urgent
PRIORITY_HIGHEST = 10

#: Task and request ids: a topic level of their own, and a valid matcher id. These patterns
#: are matched whole (fullmatch): with `^...$` and re.match a final newline got through.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_NUMBER = re.compile(r"\+?[0-9]{3,20}")
_EMAIL = re.compile(r"[^@\s]{1,64}@[A-Za-z0-9.\-]{1,189}\.[A-Za-z]{2,24}")
_CIF = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
#: The id of a payload that does not parse, looked for in its first ID_SEARCH_BYTES.
_ID_FIELD = re.compile(rb'"id"\s*:\s*"([A-Za-z0-9][A-Za-z0-9_.\-]{0,63})"')
ID_SEARCH_BYTES = 4096
#: C0 controls but tab and newline, DEL, C1 controls: nothing an agent's screen should render.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CARD = re.compile(r"(?<![0-9])[0-9](?:[ \-]?[0-9]){12,18}(?![0-9])")

_FIELDS = frozenset(
    {
        "id",
        "channel",
        "queue",
        "skills",
        "priority",
        "language",
        "customer",
        "subject",
        "body",
        "callback_number",
    }
)
_CUSTOMER_FIELDS = frozenset({"number", "name", "email", "cif"})
_REQUIRED = ("id", "channel", "queue", "skills")
#: Text each channel must carry (the agent has nothing to work on otherwise).
_NEEDS = {SMS: ("body",), EMAIL: ("subject", "body"), CHAT: (), CALLBACK: ("callback_number",)}


class TaskRejected(ValueError):
    """A submission, cancellation or agent reply refused; `str()` is the reason sent back."""


def check_id(value: object, what: str = "id") -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise TaskRejected(
            f"{what} must be 1-64 characters of letters, digits and _.- "
            "starting with a letter or digit"
        )
    return value


def mask_number(number: str) -> str:
    """'13800138000' -> '*******8000'; four digits or fewer are masked whole."""
    digits = number.strip()
    if len(digits) <= 4:
        return "*" * len(digits)
    return "*" * (len(digits) - 4) + digits[-4:]


def mask_email(address: str) -> str:
    """'wang.li@example.com' -> 'w***@example.com'."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}"


def mask_cards(text: str) -> str:
    """Digit runs that look like a card number keep only their last four digits."""

    def hide(match: re.Match[str]) -> str:
        run = match.group(0)
        keep = 4
        out = []
        for ch in reversed(run):
            if ch.isdigit():
                out.append(ch if keep > 0 else "*")
                keep -= 1
            else:
                out.append(ch)
        return "".join(reversed(out))

    return _CARD.sub(hide, text)


@dataclass(frozen=True, slots=True)
class Customer:
    number: str = ""
    name: str = ""
    email: str = ""
    cif: str = ""

    def view(self) -> dict[str, str]:
        out = {}
        if self.number:
            out["number"] = mask_number(self.number)
        if self.name:
            out["name"] = self.name
        if self.email:
            out["email"] = mask_email(self.email)
        if self.cif:
            out["cif"] = self.cif
        return out


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """One validated submission. `callback_number` is kept whole (the PBX dials it) and never
    published or logged; `view()` is what agents and status listeners see."""

    id: str
    channel: str
    queue: str
    skills: str
    priority: int = 0
    language: str = "cmn"
    customer: Customer = field(default_factory=Customer)
    subject: str = ""
    body: str = ""
    callback_number: str = ""

    def _fields(self, customer: dict[str, Any] | None) -> dict[str, Any]:
        """What `view` and `submission` share: card numbers in the subject and body masked."""
        out: dict[str, Any] = {
            "id": self.id,
            "channel": self.channel,
            "queue": self.queue,
            "skills": self.skills,
            "priority": self.priority,
            "language": self.language,
        }
        if customer is not None:
            out["customer"] = customer
        if self.subject:
            out["subject"] = mask_cards(self.subject)
        if self.body:
            out["body"] = mask_cards(self.body)
        return out

    def view(self) -> dict[str, Any]:
        out = self._fields(self.customer.view())
        if self.callback_number:
            out["callback_number"] = mask_number(self.callback_number)
        return out

    def submission(self) -> dict[str, Any]:
        """The request as a submission again (what a restarted daemon submits anew,
        tasks/keep.py): the customer's number and address whole, as the callback and the
        agents need them; card numbers in the subject and body masked, as agents see them."""
        c = self.customer
        customer = {"number": c.number, "name": c.name, "email": c.email, "cif": c.cif}
        out = self._fields({key: value for key, value in customer.items() if value} or None)
        if self.callback_number:
            out["callback_number"] = self.callback_number
        return out


def load_object(payload: bytes, what: str = "a submission") -> dict[str, Any]:
    """Bytes -> a JSON object, refusing oversize payloads before parsing them."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise TaskRejected(
            f"payload is {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES} are accepted"
        )
    try:
        # Decoded here: json.loads would take a UTF-16/32 byte-order mark as an encoding.
        body = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise TaskRejected("payload is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise TaskRejected(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise TaskRejected("not JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits (Python's limit)
        raise TaskRejected(f"not JSON: {exc}"[:200]) from None
    if not isinstance(body, dict):
        raise TaskRejected(f"{what} is a JSON object, got {_kind(body)}")
    return body


def request_id_of(payload: bytes) -> str:
    """The id a reply can be sent under, or "" when the payload has no usable one.

    Read from the parsed object; a payload too big to parse (not parsed just to find its id),
    nested too deeply or not JSON is searched near its start instead, so that its sender hears
    why on its own reply topic rather than on `acd/task/rejected`."""
    if len(payload) <= MAX_PAYLOAD_BYTES:
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError):  # ValueError: not JSON, not UTF-8, huge numbers
            pass
        else:
            value = body.get("id") if isinstance(body, dict) else None
            return value if isinstance(value, str) and _ID.fullmatch(value) else ""
    match = _ID_FIELD.search(payload[:ID_SEARCH_BYTES])
    return match.group(1).decode() if match else ""


def _text(body: Mapping[str, Any], key: str, limit: int, *, multiline: bool = False) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise TaskRejected(f"{key} must be a string, got {_kind(value)}")
    if len(value) > limit:
        raise TaskRejected(f"{key} is {len(value)} characters; at most {limit}")
    if _CONTROL.search(value) or (not multiline and ("\n" in value or "\t" in value)):
        raise TaskRejected(f"{key} contains control characters")
    return value


def _kind(value: object) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _customer(value: object) -> Customer:
    if not isinstance(value, dict):
        raise TaskRejected(f"customer must be an object, got {_kind(value)}")
    unknown = set(value) - _CUSTOMER_FIELDS
    if unknown:
        raise TaskRejected(f"unknown customer field(s): {', '.join(sorted(map(str, unknown)))}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise TaskRejected(f"customer.{key} must be a string, got {_kind(item)}")
    number = value.get("number", "")
    if number and not _NUMBER.fullmatch(number):
        raise TaskRejected("customer.number must be 3-20 digits, optionally after a +")
    email = value.get("email", "")
    if email and (len(email) > MAX_EMAIL or not _EMAIL.fullmatch(email)):
        raise TaskRejected("customer.email is not an e-mail address")
    cif = value.get("cif", "")
    if cif and not _CIF.fullmatch(cif):
        raise TaskRejected("customer.cif must be 1-64 characters of letters, digits and _.-")
    name = _text(value, "name", MAX_NAME)
    return Customer(number=number, name=name, email=email, cif=cif)


def eligible_agents(roster: Roster, queue: str, channel: str, requirement: Requirement) -> int:
    """How many roster agents could ever take this task: capacity on the channel and the skills
    of the queue's requirement at its most relaxed step."""
    spec = roster.policy(queue).spec_for("check", requirement.text)
    widest = spec.cumulative()[-1]
    return sum(
        1
        for entry in roster.agents.values()
        if channel in entry.spec.capacity and widest.matches(entry.spec.skills)
    )


def parse_submission(payload: bytes, roster: Roster) -> TaskRequest:
    """Validate one submission against the schema and the roster in force; raise
    `TaskRejected` naming the first thing wrong."""
    body = load_object(payload)
    unknown = set(body) - _FIELDS
    if unknown:
        raise TaskRejected(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    missing = [key for key in _REQUIRED if key not in body]
    if missing:
        raise TaskRejected(f"missing field(s): {', '.join(missing)}")
    task_id = check_id(body["id"])
    channel = body["channel"]
    if channel not in TASK_CHANNELS:
        raise TaskRejected(
            f"channel must be one of {', '.join(TASK_CHANNELS)}, got {_short(channel)}"
        )
    queue = body["queue"]
    if not isinstance(queue, str):
        raise TaskRejected(f"queue must be a string, got {_kind(queue)}")
    if queue == "*" or queue not in roster.queues:
        known = ", ".join(sorted(q for q in roster.queues if q != "*"))
        raise TaskRejected(f"unknown queue {_short(queue)}; the roster has {known}")
    skills = body["skills"]
    if not isinstance(skills, str):
        raise TaskRejected(f"skills must be a string, got {_kind(skills)}")
    if len(skills) > MAX_SKILLS:
        raise TaskRejected(f"skills is {len(skills)} characters; at most {MAX_SKILLS}")
    try:
        requirement = parse(skills)
    except AcdError as exc:
        raise TaskRejected(f"skills: {exc}") from None
    priority = body.get("priority", 0)
    if (
        not isinstance(priority, int)
        or isinstance(priority, bool)
        or not PRIORITY_LOWEST <= priority <= PRIORITY_HIGHEST
    ):
        raise TaskRejected(
            f"priority must be an integer {PRIORITY_LOWEST}..{PRIORITY_HIGHEST} "
            f"(higher is more urgent), got {_short(priority)}"
        )
    language = body.get("language", "cmn")
    if language not in LANGUAGES:
        raise TaskRejected(
            f"language must be one of {', '.join(LANGUAGES)}, got {_short(language)}"
        )
    customer = _customer(body["customer"]) if "customer" in body else Customer()
    subject = _text(body, "subject", MAX_SUBJECT)
    text = _text(body, "body", MAX_BODY, multiline=True)
    number = body.get("callback_number", "")
    if not isinstance(number, str):
        raise TaskRejected(f"callback_number must be a string, got {_kind(number)}")
    if channel != CALLBACK and number:
        raise TaskRejected(f"callback_number is for callback tasks, not {channel}")
    if number and not _NUMBER.fullmatch(number):
        raise TaskRejected("callback_number must be 3-20 digits, optionally after a +")
    present = {"subject": subject, "body": text, "callback_number": number}
    for key in _NEEDS[channel]:
        if not present[key].strip():
            raise TaskRejected(f"a {channel} task needs {key}")
    if not eligible_agents(roster, queue, channel, requirement):
        raise TaskRejected(
            f"no agent in the roster takes {channel} tasks in queue {queue} "
            f"with skills {requirement.text!r}"
        )
    return TaskRequest(
        id=task_id,
        channel=channel,
        queue=queue,
        skills=skills,
        priority=priority,
        language=language,
        customer=customer,
        subject=subject,
        body=text,
        callback_number=number,
    )


def _short(value: object) -> str:
    if isinstance(value, list | dict):  # never repr a structure: it may be nested deeply
        return _kind(value)
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**40 else "a huge number"
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True, slots=True)
class Cancellation:
    id: str
    reason: str = ""


def parse_cancel(payload: bytes) -> Cancellation:
    """`{"id": "<task id>", "reason": "<optional text>"}`."""
    body = load_object(payload, "a cancellation")
    unknown = set(body) - {"id", "reason"}
    if unknown:
        raise TaskRejected(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    return Cancellation(check_id(body.get("id")), _text(body, "reason", MAX_REASON))


AGENT_ACTIONS = ("accept", "reject", "done")


@dataclass(frozen=True, slots=True)
class AgentReply:
    task_id: str
    action: str
    reason: str = ""


def parse_agent_reply(payload: bytes) -> AgentReply:
    """`{"task_id": "...", "action": "accept|reject|done", "reason": "<optional>"}`."""
    body = load_object(payload, "an agent reply")
    unknown = set(body) - {"task_id", "action", "reason"}
    if unknown:
        raise TaskRejected(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    task_id = check_id(body.get("task_id"), "task_id")
    action = body.get("action")
    if action not in AGENT_ACTIONS:
        raise TaskRejected(
            f"action must be one of {', '.join(AGENT_ACTIONS)}, got {_short(action)}"
        )
    return AgentReply(task_id, action, _text(body, "reason", MAX_REASON))
