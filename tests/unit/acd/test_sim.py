"""The simulator against Erlang C on a single-skill queue, and a bank day end to end."""

from __future__ import annotations

import pytest

from acd import erlang, sim
from acd.model import Strategy


@pytest.mark.slow
def test_simulator_agrees_with_erlang_c_on_a_single_skill_queue() -> None:
    # M/M/10 at 7 erlangs (AHT 180 s), no abandonment, three seeded runs of 40,000 calls each.
    # Stated tolerance: service level (20 s) and P(wait) within 0.02 absolute, ASA within 15%.
    agents, erlangs, aht = 10, 7.0, 180.0
    rate = erlangs / aht
    runs = [
        sim.simulate(sim.single_queue(agents, erlangs, calls=40_000, seed=s)) for s in (1, 2, 3)
    ]
    sl = sum(r.total["service_level"] for r in runs) / 3
    asa = sum(r.total["asa_s"] for r in runs) / 3
    p_wait = sum(r.p_wait for r in runs) / 3
    assert sl == pytest.approx(erlang.service_level_c(agents, rate, aht, 20.0), abs=0.02)
    assert p_wait == pytest.approx(erlang.erlang_c(agents, erlangs), abs=0.02)
    assert asa == pytest.approx(erlang.asa_c(agents, rate, aht), rel=0.15)
    occupancy = sum(r.occupancy for r in runs) / 3
    assert occupancy == pytest.approx(erlangs / agents, abs=0.02)


def test_bank_day_compares_strategies() -> None:
    scenario = sim.bank_day(agents=40, calls=1500, seed=3)
    reports = [sim.simulate(scenario, s) for s in (None, Strategy.RING_ALL)]
    for r in reports:
        total = r.total
        assert total["offered"] == sum(q["offered"] for q in r.queues.values())
        assert total["answered"] + total["abandoned"] + total["overflowed"] == total["offered"]
        assert 0 < total["service_level"] <= 1
        assert 0 < r.occupancy < 1
    assert (
        reports[0].erlang["centre"]["agents_erlang_c"]
        >= reports[0].erlang["centre"]["agents_erlang_a"]
    )
