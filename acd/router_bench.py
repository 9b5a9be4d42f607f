"""Decision latency of the router: from "agent became ready" / "call queued" to the Redirect
(the Dial) being issued, with 2,000 agents and 1,000 waiting calls.

`python -m acd.router_bench [--agents 2000] [--waiting 1000] [--events 2000] [--rtt-ms 1.0]`

The router runs as in the daemon (asyncio loop, `loop.call_later` timers, one task per PBX
command), against a fake `PbxCommands` whose every command costs `--rtt-ms` of simulated AMI
round trip (an `asyncio.sleep`, so other events run meanwhile). The centre: 2,000 agents with
1-2 languages of mandarin/cantonese/english and 2-3 of six products; flow requirements
"<language> and <product>" (18 combinations). Calls in Mandarin or Cantonese are queued until
1,000 wait while every eligible agent is busy; English calls are never left waiting (one that
finds no free agent hangs up at once), so English agents free up and stay ready, and a new
English call is a "call queued" event that finds one.

Measured, one event at a time (the next event after the previous command was acknowledged):
- `agent-ready`: a connected call ends (no wrap-up): the agent takes the best waiting call;
- `call-queued`: an English call arrives and an idle eligible agent is offered it.
`issued` is event in -> the Redirect is sent: the decision, the loop's scheduling and the
screen pop's broker acknowledgement (one simulated round trip: the daemon rings only after it);
`acked` adds the Redirect's simulated AMI round trip. Baselines measured in the same run: the bare
`Matcher` call for the same kind of event (no router, no asyncio), and the RTT alone.
The issue's reference: Asterisk 22 app_queue, agent complete -> next agent called while
callers waited, p50 651 ms, p99 1,322 ms (its one-second re-check).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import time
from collections.abc import Mapping
from typing import Any

from acd.model import AgentSpec
from acd.roster import QueuePolicy, Roster, RosterAgent
from acd.router import LatencyLog, Router

LANGS = ("mandarin", "cantonese", "english")
PRODUCTS = ("private_banking", "corporate", "risk", "cards", "loans", "wealth")


class SimulatedAmi:
    """`PbxCommands` whose commands each take one simulated AMI round trip."""

    def __init__(self, rtt: float) -> None:
        self.rtt = rtt
        self.redirects: list[tuple[str, str, str]] = []

    async def redirect(self, channel: str, context: str, exten: str, priority: int = 1) -> None:
        await asyncio.sleep(self.rtt)
        self.redirects.append((channel, context, exten))

    async def set_variable(self, channel: str, name: str, value: str) -> None:
        await asyncio.sleep(self.rtt)

    async def hangup(self, channel: str, cause: int = 16) -> None:
        await asyncio.sleep(self.rtt)


class _Quiet:
    def publish(self, topic: str, payload: Mapping[str, Any], *, retain: bool = False) -> None:
        return None


def centre(n_agents: int, rng: random.Random) -> Roster:
    agents = {}
    for i in range(n_agents):
        ext = str(100000 + i)
        langs = rng.sample(LANGS, rng.choice((1, 1, 2)))
        skills = {lang: rng.randint(3, 10) for lang in langs}
        skills.update({p: rng.randint(1, 10) for p in rng.sample(PRODUCTS, rng.randint(2, 3))})
        agents[ext] = RosterAgent(AgentSpec(ext, skills), f"Agent {ext}", f"PJSIP/{ext}")
    queues = {q: QueuePolicy(q) for q in ("vip", "corporate", "risk", "general", "cantonese")}
    return Roster(None, agents, queues)


def _queue_of(lang: str, product: str) -> str:
    if product == "private_banking":
        return "vip"
    if product in ("corporate", "risk"):
        return product
    return "cantonese" if lang == "cantonese" else "general"


def _pct(samples: list[float], q: float) -> float:
    return LatencyLog.percentile(samples, q) * 1000


async def run(
    n_agents: int = 2000, waiting: int = 1000, events: int = 2000, rtt: float = 0.001, seed: int = 7
) -> dict[str, Any]:
    rng = random.Random(seed)
    roster = centre(n_agents, rng)
    pbx = SimulatedAmi(rtt)

    async def pop_sender(topic: str, payload: Mapping[str, Any]) -> None:
        await asyncio.sleep(rtt)  # the screen pop's QoS 1 round trip to the broker

    router = Router(roster, pbx, _Quiet(), ring_timeout=3600, guard_margin=0, pop_sender=pop_sender)
    seq = 0
    connected: list[str] = []

    async with router:
        for agent_id in roster.agents:
            router.contact_changed(agent_id, True)
        router.m.settle()

        def new_call(lang: str) -> str:
            nonlocal seq
            seq += 1
            call_id = f"c{seq}"
            product = rng.choice(PRODUCTS)
            router.register(
                call_id,
                queue=_queue_of(lang, product),
                requirement=f"{lang} and {product}",
                priority=rng.choice((10, 8, 5, 5, 5, 3)),
                language=lang,
                screen_pop={"customer": call_id},
            )
            router.call_waiting(call_id, f"PJSIP/trunk-{call_id}")
            return call_id

        async def settle_offers() -> None:
            await router.drain()
            for call in list(router.calls.values()):
                if call.state == "ringing":
                    router.answered(call.call_id, call.agent)
                    connected.append(call.call_id)
            await router.drain()

        # Warm the 18 matcher queues, then fill: Mandarin/Cantonese calls until `waiting` wait.
        t_fill = time.perf_counter()
        while sum(1 for c in router.calls.values() if c.state == "waiting") < waiting:
            new_call(rng.choice(("mandarin", "cantonese")))
            await settle_offers()
        fill_s = time.perf_counter() - t_fill
        busy = sum(1 for a in roster.agents if router.m.agent_state(a).value == "on-call")
        ready = sum(1 for a in roster.agents if router.m.agent_state(a).value == "ready")
        router.latency.issued.clear()
        router.latency.acked.clear()

        samples: dict[str, dict[str, list[float]]] = {
            k: {"issued": [], "acked": [], "matcher": []} for k in ("agent-ready", "call-queued")
        }
        gc_was = gc.isenabled()
        gc.disable()  # the matcher makes no cyclic garbage (docs/acd.md)
        try:
            for i in range(events):
                if i % 2 == 0:
                    kind = "agent-ready"
                    call_id = connected.pop(rng.randrange(len(connected)))
                    call = router.calls[call_id]
                    before = len(router.latency.issued)
                    router.dial_result(call_id, call.agent, "ANSWER")  # agent hangs up
                else:
                    kind = "call-queued"
                    before = len(router.latency.issued)
                    english = new_call("english")
                await router.drain()
                new = len(router.latency.issued) - before
                if new == 1:
                    samples[kind]["issued"].append(router.latency.issued[-1])
                    samples[kind]["acked"].append(router.latency.acked[-1])
                await settle_offers()
                # keep `waiting` callers waiting: the freed agent took one, so one more comes
                if kind == "call-queued" and new == 0:
                    # no English agent free: that caller gives up, the backlog stays at target
                    router.channel_gone(f"PJSIP/trunk-{english}")
                if kind == "agent-ready" and new == 1:
                    new_call(rng.choice(("mandarin", "cantonese")))
                    await settle_offers()
        finally:
            if gc_was:
                gc.enable()
        still_waiting = sum(1 for c in router.calls.values() if c.state == "waiting")

    # Baseline in the same run: the bare matcher for the same events, no router, no loop.
    base = await _matcher_baseline(roster, events, waiting, seed)
    rtt_alone: list[float] = []
    for _ in range(200):
        t0 = time.perf_counter()
        await asyncio.sleep(rtt)
        rtt_alone.append(time.perf_counter() - t0)

    out: dict[str, Any] = {
        "agents": n_agents,
        "waiting_target": waiting,
        "waiting_at_end": still_waiting,
        "busy_after_fill": busy,
        "ready_after_fill": ready,
        "fill_seconds": round(fill_s, 2),
        "rtt_ms": rtt * 1000,
        "rtt_measured_p50_ms": round(statistics.median(rtt_alone) * 1000, 3),
        "events": {},
        "app_queue_reference_ms": {"p50": 651, "p99": 1322},
    }
    for kind, s in samples.items():
        out["events"][kind] = {
            "n": len(s["issued"]),
            "issued_p50_ms": round(_pct(s["issued"], 50), 3),
            "issued_p99_ms": round(_pct(s["issued"], 99), 3),
            "acked_p50_ms": round(_pct(s["acked"], 50), 3),
            "acked_p99_ms": round(_pct(s["acked"], 99), 3),
            "matcher_p50_ms": round(_pct(base[kind], 50), 4),
            "matcher_p99_ms": round(_pct(base[kind], 99), 4),
        }
    return out


async def _matcher_baseline(
    roster: Roster, events: int, waiting: int, seed: int
) -> dict[str, list[float]]:
    """The same centre and event mix straight through a Matcher (what the router adds is the
    difference)."""
    rng = random.Random(seed + 1)
    pbx = SimulatedAmi(0)
    router = Router(roster, pbx, _Quiet(), ring_timeout=3600, guard_margin=0)
    out: dict[str, list[float]] = {"agent-ready": [], "call-queued": []}
    async with router:
        m = router.m
        for agent_id in roster.agents:
            router.contact_changed(agent_id, True)
        m.settle()
        from acd.model import CallSpec

        seq = 0
        connected: list[str] = []

        def arrive(lang: str) -> tuple[list[Any], float]:
            nonlocal seq
            seq += 1
            product = rng.choice(PRODUCTS)
            q = router._matcher_queue(_queue_of(lang, product), f"{lang} and {product}")
            spec = CallSpec(f"b{seq}", q, "voice", rng.choice((0, 1, 4, 4, 4, 6)))
            t0 = time.perf_counter()
            decisions = m.call_arrived(spec, 0.0)
            return decisions, time.perf_counter() - t0

        def take(decisions: list[Any]) -> None:
            for d in decisions:
                m.answered(d.call, d.agent, 0.0)
                connected.append(d.call)

        n_waiting = 0
        while n_waiting < waiting:
            decisions, _ = arrive(rng.choice(("mandarin", "cantonese")))
            if decisions:
                take(decisions)
            else:
                n_waiting += 1
        for i in range(events):
            if i % 2 == 0:
                call_id = connected.pop(rng.randrange(len(connected)))
                t0 = time.perf_counter()
                decisions = m.call_ended(call_id, 0.0)
                dt = time.perf_counter() - t0
                if decisions:
                    out["agent-ready"].append(dt)
                take(decisions)
                decisions, _ = arrive(rng.choice(("mandarin", "cantonese")))
                take(decisions)
            else:
                decisions, dt = arrive("english")
                if decisions:
                    out["call-queued"].append(dt)
                take(decisions)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m acd.router_bench", description=__doc__)
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--waiting", type=int, default=1000)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rtt-ms", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.agents, args.waiting, args.events, args.rtt_ms / 1000, args.seed))
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0


def report(result: Mapping[str, Any]) -> str:
    """The result of `run` as the table `ivr-engine acd latency` prints."""
    lines = [
        f"router decision latency: {result['agents']} agents, "
        f"{result['waiting_at_end']} waiting calls at the end "
        f"({result['busy_after_fill']} agents on a call after the fill, {result['fill_seconds']}s),"
        f" simulated AMI round trip {result['rtt_ms']:g} ms "
        f"(measured p50 {result['rtt_measured_p50_ms']} ms)",
        f"{'event':<12} {'n':>5} {'issued p50':>11} {'p99':>8} {'acked p50':>10} {'p99':>8} "
        f"{'matcher p50':>12} {'p99':>8}  ms",
    ]
    for kind, e in result["events"].items():
        lines.append(
            f"{kind:<12} {e['n']:>5} {e['issued_p50_ms']:>11.3f} {e['issued_p99_ms']:>8.3f} "
            f"{e['acked_p50_ms']:>10.3f} {e['acked_p99_ms']:>8.3f} "
            f"{e['matcher_p50_ms']:>12.4f} {e['matcher_p99_ms']:>8.4f}"
        )
    ready = result["events"]["agent-ready"]
    ref = result["app_queue_reference_ms"]
    if ready["acked_p99_ms"] > 0:
        lines.append(
            f"agent ready -> Redirect acknowledged p99 {ready['acked_p99_ms']:.2f} ms: "
            f"{ref['p99'] / ready['acked_p99_ms']:.0f}x below app_queue's {ref['p99']} ms p99 "
            f"(issue 6 reference; p50 {ref['p50'] / max(ready['acked_p50_ms'], 1e-9):.0f}x)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
