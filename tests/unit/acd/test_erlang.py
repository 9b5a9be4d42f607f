"""Erlang B/C/A against published values, and against each other."""

from __future__ import annotations

import math

import pytest

from acd import erlang
from acd.errors import ConfigurationError


def test_erlang_c_call_centre_helper_worked_example() -> None:
    # Call Centre Helper, "Erlang C Formula - Made Simple with an Easy Worked Example":
    # 100 calls per 30 minutes, AHT 180 s -> 10 erlangs; with 11 agents the probability that a
    # call waits is 68.21%, and 14 raw agents are needed for 80% answered in 20 s.
    rate = 100 / 1800
    assert erlang.erlang_c(11, 10.0) == pytest.approx(0.6821, abs=5e-5)
    assert erlang.staffing_c(rate, 180.0, 0.80, 20.0) == 14
    assert (
        erlang.service_level_c(13, rate, 180.0, 20.0)
        < 0.80
        <= erlang.service_level_c(14, rate, 180.0, 20.0)
    )


def test_erlang_b_table_values() -> None:
    # Standard Erlang B tables (e.g. ITU-T E.800 companion tables, any traffic-engineering
    # text): 10 circuits carry 4.46 erlangs at 1% blocking and 5.08 erlangs at 2% blocking.
    assert erlang.erlang_b(10, 4.46) == pytest.approx(0.01, abs=2e-4)
    assert erlang.erlang_b(10, 5.08) == pytest.approx(0.02, abs=2e-4)


def test_erlang_c_single_server_is_rho() -> None:
    # M/M/1: P(wait) = rho, mean wait = rho / (mu - lambda) (Kleinrock, Queueing Systems I).
    for rho in (0.1, 0.5, 0.9):
        assert erlang.erlang_c(1, rho) == pytest.approx(rho)
        assert erlang.asa_c(1, rho / 60.0, 60.0) == pytest.approx(rho / (1 / 60 - rho / 60))


def test_erlang_a_tends_to_erlang_c_with_infinite_patience() -> None:
    rate = 100 / 1800
    a = erlang.erlang_a(12, rate, 180.0, 1e6, 20.0)
    assert a.p_wait == pytest.approx(erlang.erlang_c(12, 10.0), rel=1e-3)
    assert a.service_level == pytest.approx(erlang.service_level_c(12, rate, 180.0, 20.0), abs=1e-3)
    assert a.p_abandon < 1e-4


def test_erlang_a_abandonment_helps_the_rest() -> None:
    rate = 100 / 1800
    a = erlang.erlang_a(11, rate, 180.0, 120.0, 20.0)
    assert 0 < a.p_abandon < a.p_wait < 1
    assert a.service_level > erlang.service_level_c(11, rate, 180.0, 20.0)
    assert erlang.staffing_a(rate, 180.0, 120.0, 0.8, 20.0) <= erlang.staffing_c(
        rate, 180.0, 0.8, 20.0
    )
    # Overloaded Erlang C is unstable; Erlang A still answers.
    assert erlang.service_level_c(8, rate, 180.0, 20.0) == 0.0
    assert math.isinf(erlang.asa_c(8, rate, 180.0))
    assert 0 < erlang.erlang_a(8, rate, 180.0, 120.0, 20.0).p_abandon < 1


def test_bad_input() -> None:
    with pytest.raises(ConfigurationError):
        erlang.erlang_c(0, 1.0)
    with pytest.raises(ConfigurationError):
        erlang.staffing_c(1.0, 180.0, 1.5, 20.0)
