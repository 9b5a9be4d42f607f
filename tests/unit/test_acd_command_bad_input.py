"""Agent commands that once escaped the parser and ended the MQTT command task (issue 8)."""

from __future__ import annotations

import pytest

from ivr_engine.acd_gateway import MAX_COMMAND_BYTES, CommandError, parse_command


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
