import json
from pathlib import Path

import pytest

from ivr_engine import cli

ROOT = Path(__file__).resolve().parents[3]


def test_lint_clean_exit_0_and_errors_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["flows", "lint", str(ROOT / "flows")]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "flow: x\nstart: a\nnodes:\n  a:\n    type: play\n    prompt: welcome\n    next: b\n"
    )
    capsys.readouterr()
    assert cli.main(["flows", "lint", "--no-catalogue", str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert f"{bad}:7:11: error: node 'a': target 'b' is not a node of this flow" in out


def test_lint_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("flow: x\nstart: a\nnodes:\n  a: {type: nope}\n")
    assert cli.main(["flows", "lint", "--json", "--no-catalogue", str(bad)]) == 1
    items = json.loads(capsys.readouterr().out)
    assert {"severity": "error", "line": 4, "col": 7, "node": "a"}.items() <= items[0].items()


def test_try_json_masks_the_pin(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        [
            "flows",
            "try",
            "hotline",
            "--dir",
            str(ROOT / "flows"),
            "--caller",
            "13800138000",
            "--data",
            str(ROOT / "flows" / "fixtures" / "personas.yaml"),
            "--at",
            "2026-11-05T10:00",
            "--input",
            "1,2,123456",
            "--json",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    out = json.loads(text)
    assert "123456" not in text
    assert {"event": "input", "node": "enter", "digits": "******", "status": "match"} in out[
        "events"
    ]


def test_try_rejects_a_bad_input_script(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["flows", "try", "survey", "--dir", str(ROOT / "flows"), "--input", "1,x"])
    assert code == 1
    assert "input entry 2 'x'" in capsys.readouterr().err


def test_deploy_versions_rollback_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IVR_ENGINE_FLOWS_DEPLOY_DIR", str(tmp_path / "deploy"))
    assert cli.main(["flows", "deploy", str(ROOT / "flows")]) == 0
    assert "deployed:" in capsys.readouterr().out
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.yaml").write_text("flow: x\nstart: a\nnodes: {a: {type: play}}\n")
    assert cli.main(["flows", "deploy", str(bad)]) == 1
    assert "not deployed" in capsys.readouterr().err
    assert cli.main(["flows", "versions"]) == 0
    assert capsys.readouterr().out.startswith("* ")
    assert cli.main(["flows", "rollback"]) == 1  # nothing earlier


def test_bench_prints_its_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    # the numbers themselves are for humans (`ivr-engine flows bench`); here: it runs and reports
    code = cli.main(["flows", "bench", "--nodes", "60", "--calls", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code in (0, 1)
    assert out["interpreter"]["nodes"] == 60 and out["interpreter"]["overhead_us_per_node"] > 0
    assert out["lint"]["lint_s_median"] > 0 and out["lint"]["ratio_lint_to_compose"] > 0


def test_try_accepts_a_flow_file(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["flows", "try", str(ROOT / "flows" / "survey.yaml"), "--input", "5"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[survey/ask] collect"
    assert "    caller: 5 -> match" in out
    assert "END hangup at survey/thanks: reason=survey answered" in out
    assert out[-1] == "CHANNEL IVR_NEXT=hangup"
