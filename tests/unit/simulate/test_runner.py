"""The runner's matching of SIP calls to Asterisk channels and what it concludes per call."""

import pytest

from ivr_engine.protocol.ami import AmiEvent, Newchannel, VarSet
from simulate.runner import AgentLeg, SipCall, _match, observe, trunk_channels
from simulate.scenario import from_mapping


def _spec(**kw):
    return from_mapping({"calls": [{"caller": "13800138000", **kw}]}, "mem").calls[0]


def _newchannel(uid: str, ts: float, context: str = "from-trunk", exten: str = "4008"):
    return Newchannel("Newchannel", {"Timestamp": f"{ts:.6f}"}, f"PJSIP/devtrunk-{uid}", uid,
                      uid, "Ring", "13800138000", "", context, exten)


def test_trunk_channels_collect_ivr_variables_only():
    events = [
        (0.0, _newchannel("a", 100.0)),
        (0.0, _newchannel("agent", 101.0, context="agents", exten="1009")),
        (0.0, VarSet("VarSet", {}, "x", "a", "IVR_QUEUE", "general")),
        (0.0, VarSet("VarSet", {}, "x", "a", "SOMETHING", "else")),
        (0.0, VarSet("VarSet", {}, "x", "a", "IVR_QUEUE", "vip")),  # the last value wins
        (0.0, AmiEvent("Hangup", {})),
        (0.0, _newchannel("b", 130.0)),
    ]
    channels = trunk_channels(events, "4008")
    assert [c.uniqueid for c in channels] == ["a", "b"]
    assert channels[0].variables == {"IVR_QUEUE": "vip"}


def test_calls_claim_the_first_channel_of_their_lifetime_once():
    channels = trunk_channels([(0.0, _newchannel("a", 100.2)), (0.0, _newchannel("b", 130.1))],
                              "4008")
    taken: set[str] = set()
    first = SipCall(_spec(), started=100.0, ended_at=120.0)
    second = SipCall(_spec(), started=130.0, ended_at=150.0)
    late = SipCall(_spec(), started=200.0, ended_at=210.0)
    assert _match(first, channels, taken).uniqueid == "a"
    assert _match(second, channels, taken).uniqueid == "b"
    assert _match(late, channels, taken) is None


def test_observe_who_ended_and_the_ivr_part():
    call = SipCall(_spec(), started=100.0, connected_at=100.1, media_at=100.2, ended_at=120.0,
                   speech=[(0.1, 5.0), (6.0, 8.0), (15.0, 16.0)], heard=19.8)
    obs = observe(call, None, None)
    assert obs.ended_by == "pbx" and obs.prompts == 3 and obs.answered_by is None
    assert obs.dead_air == 7.0 and obs.duration == 20.0

    # An agent answered at media time 9.8: only what came before counts for the IVR.
    call.legs = [AgentLeg("1009", rang_at=108.0, declined=True),
                 AgentLeg("1009", rang_at=109.0, answered_at=110.0, hung_up_by_agent=True)]
    obs = observe(call, None, None)
    assert obs.ended_by == "agent" and obs.answered_by == "1009"
    assert obs.prompts == 2 and obs.dead_air == pytest.approx(1.8)

    call.ended_locally = True
    assert observe(call, None, None).ended_by == "caller"
