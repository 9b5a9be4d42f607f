"""docs/flows.md: the documented walkthrough is what `flows try` prints, and every node type
has an example in the reference."""

import re
import shlex
from pathlib import Path

import pytest

from ivr_engine import cli
from ivr_engine.flow.model import NODE_TYPES

ROOT = Path(__file__).resolve().parents[3]
DOC = (ROOT / "docs" / "flows.md").read_text(encoding="utf-8")


def _comparable(line: str) -> str:
    # prompt texts belong to the prompt catalogue; the walkthrough pins which prompt is said
    m = re.match(r"^(\s+says [\w:]+):", line)
    return m.group(1) if m else line


def test_walkthrough_is_reproduced(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    block = DOC.split("<!-- walkthrough -->", 1)[1].split("<!-- /walkthrough -->", 1)[0]
    body = block.strip().removeprefix("```console").removesuffix("```").strip("\n").splitlines()
    command, expected = body[0], body[1:]
    assert command.startswith("$ ivr-engine ")
    monkeypatch.chdir(ROOT)
    assert cli.main(shlex.split(command)[2:]) == 0
    printed = capsys.readouterr().out.rstrip("\n").splitlines()
    assert [_comparable(x) for x in printed] == [_comparable(x) for x in expected]
    assert "123456" not in "\n".join(printed) and "6222020000001234" not in "\n".join(printed)


def test_every_node_type_has_a_reference_example() -> None:
    for kind in NODE_TYPES:
        if kind == "return":
            assert "type: return" in DOC
            continue
        assert f"### {kind}" in DOC or f"### subflow and {kind}" in DOC, kind
        assert f"type: {kind}" in DOC, kind
