"""`cif seed` and `cif show` from the command line: personas as the issue lists them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ivr_engine.cif.seed import PERSONA_CARDS
from ivr_engine.cli import main


def test_seed_then_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "cif.sqlite3")
    assert main(["cif", "seed", "--path", db, "--customers", "20"]) == 0
    assert "now holds 24" in capsys.readouterr().out
    expected = {
        "13926000001": ("vip", "yue", "陈先生"),
        "13800138000": ("local", "cmn", "王女士"),
        "13700000003": ("out_of_region", "cmn", "李先生"),
        "13500000004": ("group", "yue", "赵先生"),
    }
    for number, (tier, lang, greeting) in expected.items():
        assert main(["cif", "show", "--path", db, "--json", number]) == 0
        out = capsys.readouterr().out
        data = json.loads(out)
        assert (data["service_tier"], data["language"], data["customer"]["greeting"]) == (
            tier, lang, greeting)
        assert number not in out and data["caller"].count("*") == 4
        assert not any(card in out for card in PERSONA_CARDS.values())
    assert main(["cif", "show", "--path", db, "--json", "075582345678"]) == 1
    landline = json.loads(capsys.readouterr().out)
    assert landline["customer"] is None and landline["region"]["city"] == "Shenzhen"
    # Idempotent: a second seed adds nothing.
    assert main(["cif", "seed", "--path", db, "--customers", "20"]) == 0
    assert "seeded 0 personas and 0 synthetic" in capsys.readouterr().out
