"""Expectations against observed calls, and dead air found in speech timelines."""

import pytest

from simulate.checks import Observed, dead_air, evaluate
from simulate.scenario import Expect, Range, skills_of


def test_dead_air_between_segments_and_to_the_end():
    speech = [(0.5, 3.0), (3.4, 6.0), (10.5, 12.0)]
    assert dead_air(speech, [], until=12.0) == pytest.approx(4.5)
    assert dead_air(speech, [], until=16.0) == pytest.approx(4.5)
    assert dead_air(speech, [], until=17.0) == pytest.approx(5.0)  # after the last prompt
    assert dead_air([], [], until=4.0) == pytest.approx(4.0)  # nothing at all was said
    assert dead_air([(2.0, 5.0)], [], until=5.0) == pytest.approx(2.0)  # silence before speech


def test_the_callers_own_pauses_are_not_dead_air():
    speech = [(0.5, 3.0), (10.5, 12.0)]
    assert dead_air(speech, [(3.2, 9.0)], until=12.0) == pytest.approx(7.5 - 5.8)


def test_speech_after_until_is_ignored():
    assert dead_air([(0.1, 1.0), (9.0, 10.0)], [], until=2.0) == pytest.approx(1.0)


def _obs(**kw) -> Observed:
    base = dict(connected=True, duration=40.0, prompts=3, dead_air=0.8, ended_by="pbx",
                answered_by=None,
                variables={"IVR_NEXT": "queue", "IVR_QUEUE": "general",
                           "IVR_SKILLS": "mandarin and any", "IVR_PRIORITY": "5"},
                record={"outcome": "queued", "tier": "local",
                        "queue": {"name": "general", "skills": ["mandarin", "any"],
                                  "priority": 5}})
    base.update(kw)
    return Observed(**base)


EXPECT = Expect(next="queue", queue="general", skills=skills_of("any and mandarin"), priority=5,
                prompts=Range(2, None), ended_by="pbx", duration=Range(None, 60),
                answered_by="none", record={"outcome": "queued", "tier": "local"})


def test_all_met():
    checks = evaluate(EXPECT, _obs())
    assert all(c.ok for c in checks), checks
    assert {c.name for c in checks} >= {"queue", "skills", "priority", "dead air", "record.tier"}


def test_each_failure_says_expected_and_actual():
    checks = {c.name: c for c in evaluate(EXPECT, _obs(
        variables={"IVR_NEXT": "queue", "IVR_QUEUE": "vip", "IVR_SKILLS": "mandarin",
                   "IVR_PRIORITY": "10"},
        prompts=1, dead_air=3.5, ended_by="caller", duration=75.0, answered_by="1001",
        record={"outcome": "hangup-by-caller", "tier": "vip"}))}
    failed = {n for n, c in checks.items() if not c.ok}
    assert failed == {"queue", "skills", "priority", "prompts heard", "dead air", "ended by",
                      "duration", "answered by", "record.outcome", "record.tier"}
    assert checks["queue"].actual == "vip (AMI)" and checks["queue"].expected == "general"
    assert checks["dead air"].actual == "3.50s"


def test_without_ami_the_call_record_answers():
    checks = {c.name: c for c in evaluate(EXPECT, _obs(variables={}))}
    assert checks["queue"].ok and checks["queue"].actual == "general (call record)"
    assert checks["skills"].ok and checks["priority"].ok


def test_unanswered_call_fails_once_and_stops():
    checks = evaluate(EXPECT, _obs(connected=False, error="call not answered: 503"))
    assert [(c.name, c.ok) for c in checks] == [("connected", False)]
    assert "503" in checks[0].actual


def test_missing_record_fails_record_expectations():
    checks = {c.name: c for c in evaluate(EXPECT, _obs(record=None))}
    assert not checks["record.outcome"].ok and "no call record" in checks["record.outcome"].actual
