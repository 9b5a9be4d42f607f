"""The Asterisk .conf reader: syntax, templates, repeated sections, listeners, change kinds."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivr_engine.errors import DevPbxError
from ivr_engine.pbx.conf import (
    ConfSyntaxError,
    Listeners,
    change_kind,
    conf_sources,
    digests,
    listeners,
    parse_conf,
)

REPO = Path(__file__).resolve().parents[3]


def test_sections_templates_repeats_and_comments() -> None:
    text = """
; a comment
[agent](!)
type = endpoint   ; trailing comment
context = agents
[1001](agent)
callerid = "A \\; B" <1001>
[1001]
type => aor
#include pjsip_trunk.conf
exten => 4008,1,NoOp()
 same => n,AGI(agi://127.0.0.1:4573/hotline)
"""
    conf = parse_conf(text, path="x.conf")
    assert [s.name for s in conf.sections] == ["agent", "1001", "1001"]
    assert conf.sections[0].is_template
    assert conf.sections[1].options == ("agent",)
    assert conf.sections[1].get("callerid") == '"A ; B" <1001>'
    assert conf.sections[2].get_all("same") == ["n,AGI(agi://127.0.0.1:4573/hotline)"]
    assert conf.includes == ("pjsip_trunk.conf",)
    assert conf.sections_of_type("endpoint") == []  # the template does not count
    assert [s.name for s in conf.sections_of_type("aor")] == ["1001"]


def test_last_value_wins_and_default() -> None:
    conf = parse_conf("[general]\nport = 1\nport = 2\n")
    assert conf.sections[0].get("port") == "2"
    assert conf.sections[0].get("nope", "d") == "d"


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("[a]\nthis is not a key\n", 2, "expected 'key = value'"),
        ("key = value\n", 1, "outside any [section]"),
        ("[a]\n#exec /bin/sh\n", 2, "#exec is not allowed"),
        ("[a]\n#frobnicate x\n", 2, "unknown directive"),
    ],
)
def test_bad_lines_name_file_and_line(text: str, line: int, what: str) -> None:
    with pytest.raises(ConfSyntaxError) as info:
        parse_conf(text, path="bad.conf")
    assert info.value.line == line
    assert str(info.value).startswith(f"bad.conf:{line}: ")
    assert what in str(info.value)


def _l(manager: str, pjsip: str, rtp: str) -> Listeners:
    return listeners(
        parse_conf(manager, path="manager.conf"),
        parse_conf(pjsip, path="pjsip.conf"),
        parse_conf(rtp, path="rtp.conf"),
    )


def test_listeners_from_text() -> None:
    got = _l(
        "[general]\nport = 5039\nbindaddr = 127.0.0.1\n",
        "[t](!)\ntype = transport\nprotocol = udp\nbind = 1.2.3.4:1\n"
        "[udp]\ntype = transport\nprotocol = udp\nbind = 127.0.0.1:5070\n",
        "[general]\nrtpstart = 20000\nrtpend = 20099\n",
    )
    assert got == Listeners("127.0.0.1", 5039, "127.0.0.1", 5070, 20000, 20099)


UDP = "[u]\ntype=transport\nprotocol=udp\nbind=127.0.0.1\n"


@pytest.mark.parametrize(
    ("manager", "pjsip", "rtp", "what"),
    [
        ("", UDP, "[general]\nrtpstart=1\n", r"manager.conf: no \[general\]"),
        ("[general]\n", "[u]\ntype=transport\nprotocol=tcp\n", "[general]\n", "no UDP transport"),
        ("[general]\nport=x\n", UDP, "[general]\n", "expected a number"),
        ("[general]\n", UDP, "[general]\nrtpstart=10000\nrtpend=9000\n", "not a valid port range"),
        ("[general]\n", UDP, "[general]\nrtpend=9000\n", "rtpstart: missing"),
    ],
)
def test_listeners_refuse_bad_config(manager: str, pjsip: str, rtp: str, what: str) -> None:
    with pytest.raises(DevPbxError, match=what):
        _l(manager, pjsip, rtp)


def test_shipped_config_listens_where_the_settings_expect() -> None:
    files = {p.name: p for p in conf_sources([REPO / "asterisk-conf", REPO / "sip-trunk"])}
    parsed = {n: parse_conf(files[n].read_text(), path=n) for n in files}
    got = listeners(parsed["manager.conf"], parsed["pjsip.conf"], parsed["rtp.conf"])
    assert (got.ami_host, got.ami_port) == ("127.0.0.1", 5038)
    assert (got.sip_host, got.sip_port) == ("127.0.0.1", 5060)
    assert (got.rtp_start, got.rtp_end) == (10000, 19999)
    # Every shipped file parses, and the trunk is included from pjsip.conf.
    assert "pjsip_trunk.conf" in parsed["pjsip.conf"].includes
    assert "pjsip_trunk.conf" in files


def test_conf_sources_skip_examples_and_refuse_duplicates(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x.conf").write_text("[x]\n")
    (b / "y.conf").write_text("[y]\n")
    (b / "carrier.conf.example").write_text("[c]\n")
    assert [p.name for p in conf_sources([a, b])] == ["x.conf", "y.conf"]
    (b / "x.conf").write_text("[x2]\n")
    with pytest.raises(DevPbxError, match="both define x.conf"):
        conf_sources([a, b])
    with pytest.raises(DevPbxError, match="does not exist"):
        conf_sources([tmp_path / "missing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DevPbxError, match=r"no \.conf files"):
        conf_sources([empty])


def test_change_kind(tmp_path: Path) -> None:
    (tmp_path / "extensions.conf").write_text("[a]\n")
    (tmp_path / "modules.conf").write_text("[modules]\n")
    before = digests(sorted(tmp_path.glob("*.conf")))
    assert change_kind(before, before) == "none"
    (tmp_path / "extensions.conf").write_text("[b]\n")
    after = digests(sorted(tmp_path.glob("*.conf")))
    assert change_kind(before, after) == "reload"
    (tmp_path / "modules.conf").write_text("[modules]\nautoload = no\n")
    assert change_kind(after, digests(sorted(tmp_path.glob("*.conf")))) == "restart"
    assert change_kind(after, {k: v for k, v in after.items() if k != "modules.conf"}) == "restart"
    assert change_kind({}, {"new.conf": "x"}) == "reload"
