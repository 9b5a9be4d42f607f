"""The agent state machine, table-driven: every (event, state) pair is either listed or raises."""

from __future__ import annotations

import itertools

import pytest

from acd import agent_state
from acd.agent_state import AgentState as S
from acd.errors import IllegalTransition

LEGAL = {
    ("login", S.LOGGED_OUT): {S.READY, S.PAUSED},
    ("logout", S.READY): {S.LOGGED_OUT},
    ("logout", S.PAUSED): {S.LOGGED_OUT},
    ("logout", S.WRAP_UP): {S.LOGGED_OUT},
    ("pause", S.READY): {S.PAUSED},
    ("pause", S.WRAP_UP): {S.PAUSED},
    ("pause", S.PAUSED): {S.PAUSED},
    ("resume", S.PAUSED): {S.READY},
    ("offer", S.READY): {S.RESERVED},
    ("offer", S.ON_CALL): {S.RESERVED},
    ("answer", S.RESERVED): {S.ON_CALL},
    ("no-answer", S.RESERVED): {S.READY, S.ON_CALL, S.PAUSED},
    ("withdraw", S.RESERVED): {S.READY, S.ON_CALL},
    ("end", S.ON_CALL): {S.ON_CALL, S.WRAP_UP, S.READY},
    ("end", S.RESERVED): {S.RESERVED},
    ("wrapup-done", S.WRAP_UP): {S.READY},
}


@pytest.mark.parametrize(
    ("event", "state", "target"),
    list(itertools.product(sorted(agent_state.EVENTS), list(S), list(S))),
)
def test_every_transition(event: str, state: S, target: S) -> None:
    if target in LEGAL.get((event, state), set()):
        assert agent_state.check("a1", event, state, target) is target
    else:
        with pytest.raises(IllegalTransition) as info:
            agent_state.check("a1", event, state, target)
        assert info.value.agent_id == "a1" and info.value.event == event


def test_table_is_what_the_docs_say() -> None:
    assert {k: set(v) for k, v in agent_state.TRANSITIONS.items()} == LEGAL
    for event, by_state in agent_state.BY_EVENT.items():
        for state, targets in by_state.items():
            assert agent_state.TRANSITIONS[(event, state)] == targets
