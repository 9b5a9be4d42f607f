"""Erlang B, Erlang C (M/M/N) and Erlang A (M/M/N+M, Palm) with staffing for a target service level.

Units: `rate` is arrivals per second, `aht` (average handle time) and `patience` are seconds,
`traffic` = rate * aht is in erlangs. Service level is the fraction of OFFERED calls answered
within `t` seconds (callers who abandon count against it).

Erlang C uses the stable recursion through Erlang B (no factorials). Erlang A is computed on
the birth-death chain of the number of callers in the system (rates lambda up, min(k, N) mu +
max(k - N, 0) theta down), truncated where the remaining mass is negligible; its service level
follows a tagged caller through the line by uniformisation (a caller with j ahead moves one
place at rate N mu + j theta and leaves at rate theta).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from acd.errors import ConfigurationError


def _check(servers: int, traffic: float) -> None:
    if not isinstance(servers, int) or servers < 1:
        raise ConfigurationError(f"servers must be an integer >= 1, got {servers!r}")
    if not math.isfinite(traffic) or traffic < 0:
        raise ConfigurationError(f"traffic must be a finite number >= 0, got {traffic!r}")


def erlang_b(servers: int, traffic: float) -> float:
    """Blocking probability of M/M/N/N."""
    _check(servers, traffic)
    b = 1.0
    for k in range(1, servers + 1):
        b = traffic * b / (k + traffic * b)
    return b


def erlang_c(servers: int, traffic: float) -> float:
    """Probability that a caller waits in M/M/N (1.0 when traffic >= servers: unstable)."""
    _check(servers, traffic)
    if traffic >= servers:
        return 1.0
    b = erlang_b(servers, traffic)
    return servers * b / (servers - traffic * (1.0 - b))


def service_level_c(servers: int, rate: float, aht: float, t: float) -> float:
    """Fraction answered within t seconds (Erlang C)."""
    traffic = rate * aht
    if traffic >= servers:
        return 0.0
    return 1.0 - erlang_c(servers, traffic) * math.exp(-(servers - traffic) * t / aht)


def asa_c(servers: int, rate: float, aht: float) -> float:
    """Average speed of answer in seconds (Erlang C; inf when unstable)."""
    traffic = rate * aht
    if traffic >= servers:
        return math.inf
    return erlang_c(servers, traffic) * aht / (servers - traffic)


@dataclass(frozen=True)
class ErlangA:
    servers: int
    p_wait: float
    p_abandon: float
    service_level: float
    avg_wait: float  # mean time in queue over all offered calls (abandoners included)
    occupancy: float


def erlang_a(servers: int, rate: float, aht: float, patience: float, t: float) -> ErlangA:
    """M/M/N+M with exponential patience of mean `patience` seconds."""
    _check(servers, rate * aht)
    if aht <= 0 or patience <= 0 or rate <= 0:
        raise ConfigurationError("rate, aht and patience must be > 0")
    mu, theta, lam = 1.0 / aht, 1.0 / patience, rate
    # Unnormalised stationary weights, grown until the tail is negligible.
    weights = [1.0]
    k = 0
    while True:
        k += 1
        down = min(k, servers) * mu + max(k - servers, 0) * theta
        w = weights[-1] * lam / down
        weights.append(w)
        if k > servers and w < 1e-13 * sum(weights[-50:]) or k > servers + 100_000:
            break
    total = math.fsum(weights)
    pi = [w / total for w in weights]
    p_wait = math.fsum(pi[servers:])
    queue = [(kk - servers, p) for kk, p in enumerate(pi) if kk > servers]
    p_abandon = math.fsum(j * theta * p for j, p in queue) / lam
    avg_wait = math.fsum(j * p for j, p in queue) / lam
    busy = math.fsum(min(kk, servers) * p for kk, p in enumerate(pi))
    served_late = _served_within(servers, mu, theta, t, pi[servers:])
    return ErlangA(
        servers=servers,
        p_wait=p_wait,
        p_abandon=p_abandon,
        service_level=(1.0 - p_wait) + served_late,
        avg_wait=avg_wait,
        occupancy=busy / servers,
    )


def _served_within(servers: int, mu: float, theta: float, t: float, start: list[float]) -> float:
    """Mass of callers (start[j]: arrived with j ahead) served within t, by uniformisation."""
    if t <= 0 or not start:
        return 0.0
    j_max = len(start) - 1
    rate_max = servers * mu + j_max * theta + theta
    lt = rate_max * t
    mass = list(start)
    served = 0.0
    total = 0.0
    n = 0
    poisson = math.exp(-lt) if lt < 700 else 0.0
    log_p = -lt
    # served_by[n] = mass absorbed in "served" within n uniformised steps.
    n_max = int(lt + 12 * math.sqrt(lt + 1) + 20)
    for n in range(n_max + 1):
        poisson = math.exp(log_p)
        total += poisson * served
        # one step
        new = [0.0] * len(mass)
        for j, m in enumerate(mass):
            if m == 0.0:
                continue
            move = (servers * mu + j * theta) / rate_max
            leave = theta / rate_max
            if j == 0:
                served += m * move
            else:
                new[j - 1] += m * move
            new[j] += m * (1.0 - move - leave)
        mass = new
        log_p += math.log(lt) - math.log(n + 1) if lt > 0 else -math.inf
    return total


def staffing_c(rate: float, aht: float, target: float, t: float) -> int:
    """Fewest agents whose Erlang C service level reaches `target` (0..1)."""
    _check_target(target)
    n = max(1, math.floor(rate * aht) + 1)
    while service_level_c(n, rate, aht, t) < target:
        n += 1
    return n


def staffing_a(rate: float, aht: float, patience: float, target: float, t: float) -> int:
    """Fewest agents whose Erlang A service level reaches `target` (0..1)."""
    _check_target(target)
    # Service level grows with N; abandonment only helps the callers who stay, so the Erlang C
    # figure is an upper bound in practice. Binary search below it, then step up if needed.
    hi = staffing_c(rate, aht, target, t)
    while erlang_a(hi, rate, aht, patience, t).service_level < target:
        hi += 1
    lo = 0  # service level at lo is below target (or lo is 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if erlang_a(mid, rate, aht, patience, t).service_level >= target:
            hi = mid
        else:
            lo = mid
    return hi


def _check_target(target: float) -> None:
    if not 0 < target < 1:
        raise ConfigurationError(f"service-level target must be between 0 and 1, got {target!r}")
