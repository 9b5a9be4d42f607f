"""Ids, names and extensions are matched whole: a final newline is refused, not let through
into an MQTT topic level, a dialplan variable or a log line (`$` also matches before one)."""

from __future__ import annotations

import pytest

from acd.errors import ConfigurationError
from acd.model import AgentSpec
from acd.roster import RosterError, _agent
from ivr_engine.agent_confirm import RequestError, parse_request
from ivr_engine.agent_sources import PAUSE_REASON
from ivr_engine.commands.supervise import UsageError, check_args
from ivr_engine.flow.fields import CHANNEL_VAR, NAME, NODE_ID

GOOD_REQUEST = {
    "id": "r1",
    "call_id": "1700000000.1",
    "operation": "transfer",
    "amount": "100.00",
    "account": "6222020200112233",
}


def test_acd_agent_ids_and_skills_are_matched_whole() -> None:
    AgentSpec("1001", {"mandarin": 5})
    with pytest.raises(ConfigurationError, match="agent id"):
        AgentSpec("1001\n", {"mandarin": 5})
    with pytest.raises(ConfigurationError, match="bad skill name"):
        AgentSpec("1001", {"mandarin\n": 5})


def test_roster_extensions_and_endpoints_are_matched_whole() -> None:
    assert _agent("1001", {"endpoint": "PJSIP/1001"}, "roster.yaml").endpoint == "PJSIP/1001"
    with pytest.raises(RosterError, match="extension"):
        _agent("1001\n", {}, "roster.yaml")
    with pytest.raises(RosterError, match="endpoint"):
        _agent("1001", {"endpoint": "PJSIP/1001\n"}, "roster.yaml")


def test_agent_confirm_ids_are_matched_whole() -> None:
    assert parse_request("1001", GOOD_REQUEST).id == "r1"
    with pytest.raises(RequestError, match="agent id"):
        parse_request("1001\n", GOOD_REQUEST)
    with pytest.raises(RequestError, match="^id must"):
        parse_request("1001", {**GOOD_REQUEST, "id": "r1\n"})


def test_pause_reasons_supervisor_extensions_and_flow_names_are_matched_whole() -> None:
    assert PAUSE_REASON.match("lunch") and not PAUSE_REASON.match("lunch\n")
    assert check_args("listen", "1001", "1009").agent == "1001"
    with pytest.raises(UsageError, match="AGENT"):
        check_args("listen", "1001\n", "1009")
    for pattern, good in ((NAME, "amount"), (NODE_ID, "main-menu"), (CHANNEL_VAR, "IVR_NEXT")):
        assert pattern.match(good) and not pattern.match(good + "\n")
