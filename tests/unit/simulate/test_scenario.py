"""Scenario files: what is accepted, and every mistake named with its key."""

from pathlib import Path

import pytest

from simulate.scenario import Range, ScenarioError, from_mapping, load, skills_of

REPO = Path(__file__).resolve().parents[3]


def _one(call: dict, **extra) -> dict:
    return {"name": "t", "calls": [call], **extra}


def test_shipped_scenarios_load():
    files = sorted((REPO / "simulate" / "scenarios").glob("*.yaml"))
    assert len(files) >= 6
    for f in files:
        sc = load(f)
        assert sc.calls and all(c.expect.dead_air == 3.0 for c in sc.calls), f


def test_a_full_call_is_read():
    sc = from_mapping(_one(
        {"caller": "13800138000", "script": "w,1,p2,s:123456#,h", "max_seconds": 30,
         "expect": {"next": "queue", "queue": "general", "skills": "mandarin and any",
                    "priority": 5, "prompts": {"min": 2, "max": 4}, "dead_air": 2.5,
                    "ended_by": "caller", "duration": {"max": 30}, "answered_by": "1001",
                    "record": {"outcome": "queued", "tier": "local"}}},
        agents=[{"ext": "1001", "ring": 0.5, "talk": [1, 2], "no_answer": 0.25}],
    ), "mem")
    call = sc.calls[0]
    assert [s.kind for s in call.steps] == ["wait", "dtmf", "pause", "dtmf", "hangup"]
    assert call.steps[3].secret
    assert call.expect.skills == frozenset({"mandarin", "any"})
    assert call.expect.prompts == Range(2, 4)
    assert sc.agents[0].password == "agent-1001-dev" and sc.agents[0].talk == (1.0, 2.0)


def test_withheld_call_has_no_number():
    sc = from_mapping(_one({"withheld": True, "script": "w"}), "mem")
    assert sc.calls[0].caller == "" and sc.calls[0].withheld


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"calls": []}, "calls"),
        (_one({"caller": "13800138000", "colour": "red"}), "calls[0]"),
        (_one({"caller": "13800138000", "script": "w,x"}), "calls[0].script"),
        (_one({"caller": "abc"}), "calls[0].caller"),
        (_one({"caller": 13800138000.5}), "calls[0].caller"),
        (_one({"caller": "1001"}), "calls[0].caller"),
        (_one({"withheld": True, "caller": "13800138000"}), "calls[0]"),
        (_one({"caller": "13800138000", "dial": "40 08"}), "calls[0].dial"),
        (_one({"caller": "13800138000", "expect": {"ended_by": "god"}}),
         "calls[0].expect.ended_by"),
        (_one({"caller": "13800138000", "expect": {"priority": "high"}}),
         "calls[0].expect.priority"),
        (_one({"caller": "13800138000", "expect": {"prompts": {"min": 3, "max": 1}}}),
         "calls[0].expect.prompts"),
        (_one({"caller": "13800138000", "expect": {"record": {"pin": "1"}}}),
         "calls[0].expect.record"),
        (_one({"caller": "13800138000", "expect": {"answered_by": "1002"}}),
         "calls[0].expect.answered_by"),
        (_one({"caller": "13800138000"}, agents=[{"ext": "2001"}]), "agents[0].ext"),
        (_one({"caller": "13800138000"}, agents=[{"ext": "1001", "no_answer": 2}]),
         "agents[0].no_answer"),
        (_one({"caller": "13800138000"}, agents=[{"ext": "1001"}, {"ext": "1001"}]), "agents"),
        (_one({"caller": "13800138000"}, agents=[{"ext": "1001", "talk": [3, 1]}]),
         "agents[0].talk"),
    ],
)
def test_mistakes_name_the_key(data, where):
    with pytest.raises(ScenarioError) as err:
        from_mapping(data, "x.yaml")
    assert err.value.where == where
    assert str(err.value).startswith(f"x.yaml: {where}: ")


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("calls: [\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load(bad)
    with pytest.raises(ScenarioError, match="No such file"):
        load(tmp_path / "missing.yaml")


def test_skills_of_and_ranges():
    assert skills_of("risk and mandarin") == {"risk", "mandarin"}
    assert Range(None, 3).contains(3) and not Range(None, 3).contains(3.01)
    assert Range(2, 2).describe() == "2" and Range(1, None).describe() == ">= 1"
