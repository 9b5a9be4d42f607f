"""Agent commands that once escaped the parser and ended the MQTT command task, and refused
commands whose sender was never told why (issue 8)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from ivr_engine.acd_gateway import (
    MAX_COMMAND_BYTES,
    AcdService,
    CommandError,
    parse_command,
    request_id_of,
)
from ivr_engine.config import AmiSettings
from ivr_engine.transport.ami import AmiClient


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[" * 50_000 + b"]" * 50_000, "bytes"),  # too big before it is parsed
        (b"[" * 2_000 + b"]" * 2_000, "nested too deeply"),
        (b'{"id": "a", "verb": "list", "n": ' + b"9" * 4_400 + b"}", "bytes"),
        (b"\xff\xfe", "not JSON"),
        (b'{"id": "a", "verb": "list", "x" : "' + b"y" * MAX_COMMAND_BYTES + b'"}', "bytes"),
    ],
)
def test_pathological_commands_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(CommandError, match=reason):
        parse_command(payload)


def test_a_good_command_still_parses() -> None:
    assert (
        parse_command(b'{"id": "r1", "verb": "pause", "agent": "1001", "reason": "lunch"}')[
            "reason"
        ]
        == "lunch"
    )


# A command the parser refuses still names its sender's reply topic when its id can be found:
# in the parsed object, or (too big, too deep, not JSON at all) near its start. The sender is
# then told why instead of waiting for its timeout (found by the fault suite's daemon batch).
ANSWERABLE = [
    ("r-huge", b'{"id": "r-huge", "verb": "login", "agent": "' + b"x" * 200_000 + b'"}', "bytes"),
    (
        "r-deep",
        b'{"id": "r-deep", "verb": "list", "agent": ' + b"[" * 2_000 + b"]" * 2_000 + b"}",
        "deep",
    ),
    ("r-digits", b'{"id": "r-digits", "verb": "list", "agent": ' + b"9" * 5_000 + b"}", "bytes"),
    ("r-cut", b'{"id": "r-cut", "verb": "list"', "not JSON"),
    ("r-bytes", b'{"id": "r-bytes", "verb": "list", "agent": "\xff"}', "not JSON"),
]


@pytest.mark.parametrize(("request_id", "payload", "reason"), ANSWERABLE)
def test_request_id_is_found_in_commands_the_parser_refuses(
    request_id: str, payload: bytes, reason: str
) -> None:
    assert request_id_of(payload) == request_id
    with pytest.raises(CommandError, match=reason):
        parse_command(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'{"verb": "list"}',
        b'{"id": 5, "verb": "list"}',
        b'{"id": "a/b#", "verb": "list"}',
        b'{"id": "a\\n", "verb": "list"}',  # a JSON newline at the end: never a topic level
        b'{"agent": "x", "id": "../x"',
    ],
)
def test_no_request_id_without_a_usable_one(payload: bytes) -> None:
    assert request_id_of(payload) == ""
    with pytest.raises(CommandError):
        parse_command(payload)


class Recorder:
    def __init__(self) -> None:
        self.out: list[tuple[str, dict[str, Any]]] = []

    def publish(self, topic: str, payload: Mapping[str, Any], *, retain: bool = False) -> None:
        self.out.append((topic, dict(payload)))


async def test_refused_commands_are_answered_on_their_reply_topics(tmp_path: Path) -> None:
    roster = tmp_path / "agents.yaml"
    roster.write_text('agents: {"1001": {skills: {mandarin: 5}}}')
    pub = Recorder()
    service = AcdService(roster, AmiClient(AmiSettings()), pub, None)
    async with service.running():
        for _, payload, _ in ANSWERABLE:
            await service.handle_message(payload)
        await service.handle_message(b'{"id": "a\\n", "verb": "list"}')  # not answerable
    assert [t for t, _ in pub.out] == [f"acd/reply/{rid}" for rid, _, _ in ANSWERABLE]
    for (rid, _, reason), (_, reply) in zip(ANSWERABLE, pub.out, strict=True):
        assert reply["id"] == rid and reply["ok"] is False and reason in reply["error"], reply
