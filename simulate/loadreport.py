"""Load-test reports: JSON (every number), a markdown summary, PNG plots over time."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulate.loadtest import StepResult


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, spec)


def sustained(steps: Sequence[StepResult], *, capacity_only: bool = False) -> float | None:
    """The highest rate that ran with zero failed calls (or zero failures other than flow
    errors, which a caller's data causes at any rate)."""
    ok = [s.plan.rate for s in steps
          if s.offered == s.plan.calls
          and (s.capacity_failures == 0 if capacity_only else s.zero_failures)]
    return max(ok) if ok else None


def markdown(steps: Sequence[StepResult], *, command: str, context: dict[str, Any]) -> str:
    lines = ["# Load test: IVR-only journey of the demo hotline", "",
             f"Command: `{command}`", ""]
    for key, value in context.items():
        lines.append(f"- {key}: {value}")
    lines += ["", "| rate offered (calls/s) | measured | dispersion | offered | answered | failed "
              "| answer p50/p99 ms | AGI think p50/p99 ms | peak in system "
              "| CPU % daemon / Asterisk / machine | daemon RSS start/peak MB | RSS per call KB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in steps:
        lines.append(
            f"| {s.plan.rate:g} | {s.arrival_rate:.1f} | {s.dispersion:.2f} | {s.offered} "
            f"| {s.answered} | **{s.failed}** | {_fmt(s.answer_ms_p50, '.0f')} / "
            f"{_fmt(s.answer_ms_p99, '.0f')} | {_fmt(s.agi_think_ms_p50, '.0f')} / "
            f"{_fmt(s.agi_think_ms_p99, '.0f')} | {s.peak_in_system} "
            f"| {_fmt(s.cpu_percent, '.0f')} / "
            f"{_fmt(s.asterisk_cpu_percent, '.0f')} / {_fmt(s.machine_cpu_percent, '.0f')} "
            f"| {_fmt(s.rss_start and s.rss_start / 1e6)} / {_fmt(s.rss_peak and s.rss_peak / 1e6)}"
            f" | {_fmt(s.bytes_per_call and s.bytes_per_call / 1024)} |"
        )
    best = sustained(steps)
    cap = sustained(steps, capacity_only=True)
    lines += ["", f"**Sustained with zero failed calls: "
              f"{'none of the rates' if best is None else f'{best:g} calls/s'}**; "
              f"with zero SIP/AGI/fallback failures (flow errors aside): "
              f"{'none of the rates' if cap is None else f'{cap:g} calls/s'}", ""]
    for s in steps:
        lines.append(f"## {s.plan.rate:g} calls/s for {s.plan.duration:g} s")
        lines.append("")
        lines.append(f"- calls: {s.plan.calls} planned, {s.offered} offered, {s.answered} "
                     f"answered, {s.completed} completed; failed {s.failed} (SIPp "
                     f"{s.failed_sipp}, dialplan fallbacks {s.fallbacks}, daemon "
                     f"{s.daemon_failed}, flow errors {s.flow_errors}); the daemon served "
                     f"{s.daemon_calls}")
        if s.sipp_failures:
            lines.append(f"- SIPp failure counters: {s.sipp_failures}")
        if s.agi_round_trip_ms:
            rt = ", ".join(f"{verb} {_fmt(v['p50'], '.0f')}/{_fmt(v['p99'], '.0f')}"
                           for verb, v in s.agi_round_trip_ms.items())
            lines.append(f"- AGI command round trip p50/p99 ms (command written -> reply "
                         f"read; STREAM FILE includes the audio played): {rt}")
        for e in s.errors[:5]:
            lines.append(f"- error: `{e.strip()[:300]}`")
        lines.append(f"- plots: `{plot_name(s)}`")
        lines.append("")
    return "\n".join(lines)


def plot_name(step: StepResult) -> str:
    return f"load-{step.plan.rate:g}cps.png"


def plot(step: StepResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = step.series
    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    ax = axes[0]
    ax.plot(s["t"], s["in_system"], label="calls in system (answered, not ended)")
    ax.plot(s["t"], s["offered"], label="offered per second", alpha=0.6)
    ax.set_ylabel("calls")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"IVR-only load: {step.plan.rate:g} calls/s offered for "
                 f"{step.plan.duration:g} s; {step.failed} failed")
    ax = axes[1]
    ax.plot(s["t"], s["service_level"], color="tab:green")
    ax.set_ylabel("% answered\nwithin 1 s")
    ax.set_ylim(-5, 105)
    ax = axes[2]
    ax.plot(s["t"], s["answer_ms_p50"], label="INVITE->200 p50")
    ax.plot(s["t"], s["answer_ms_p99"], label="INVITE->200 p99")
    if any(not math.isnan(x) for x in s["agi_think_ms_p50"]):
        ax.plot(s["t"], s["agi_think_ms_p50"], label="AGI step (engine) p50")
        ax.plot(s["t"], s["agi_think_ms_p99"], label="AGI step (engine) p99")
    ax.set_ylabel("latency ms")
    ax.set_yscale("symlog", linthresh=1)
    ax.legend(loc="upper right", fontsize=8)
    ax = axes[3]
    ax.plot(s["cpu_t"], s["cpu_percent"], label="daemon CPU % of a core", color="tab:red")
    ax.set_ylabel("CPU %")
    ax2 = ax.twinx()
    ax2.plot(s["t"], s["rss_mb"], label="daemon RSS MB", color="tab:purple")
    ax2.set_ylabel("RSS MB")
    ax.set_xlabel("seconds since the first call")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _no_nan(value: Any) -> Any:
    """JSON has no NaN: seconds without a sample become null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


def write(steps: Sequence[StepResult], folder: Path, *, command: str,
          context: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"command": command, "context": context, "sustained_zero_failures": sustained(steps),
            "sustained_zero_capacity_failures": sustained(steps, capacity_only=True),
            "steps": [s.to_dict() for s in steps]}
    (folder / "report.json").write_text(json.dumps(_no_nan(data), indent=1, allow_nan=False),
                                        encoding="utf-8")
    for s in steps:
        plot(s, folder / plot_name(s))
    md = folder / "report.md"
    md.write_text(markdown(steps, command=command, context=context), encoding="utf-8")
    return md


# ------------------------------------------------------------------ load with agents


def agent_sustained(steps: Sequence[Any], router: str) -> float | None:
    """The highest rate `router` ran with zero failed calls (abandons are callers' choices)."""
    ok = [s.rate for s in steps if s.router == router and s.zero_failures]
    return max(ok) if ok else None


def _ratio(ours: float | None, theirs: float | None, floor: float = 1.0) -> str:
    """app_queue / ACD; the ACD's latency is timed in whole milliseconds (the daemon's `at`),
    so a 0 ms is read as "under 1 ms" and the ratio as a lower bound."""
    if ours is None or theirs is None:
        return "-"
    if ours < floor / 2:  # a 0 ms reading
        return f"> {theirs / floor:.0f}x"
    return f"{theirs / ours:.1f}x"


def agents_markdown(steps: Sequence[Any], *, command: str, context: dict[str, Any]) -> str:
    lines = ["# Load test with agents: app_queue and ivr-engine's ACD side by side", "",
             f"Command: `{command}`", ""]
    for key, value in context.items():
        lines.append(f"- {key}: {value}")
    lines += ["", "| router | rate (calls/s) | offered | answered | abandoned | failed | ASA s "
              "| service level % | AHT s | decision p50 / p99 ms (n) | double offers "
              "| daemon CPU % |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in steps:
        lines.append(
            f"| {s.router} | {s.rate:g} | {s.offered} | {s.answered} | {s.abandoned} "
            f"| **{s.failed}** | {_fmt(s.asa, '.2f')} | {_fmt(s.service_level, '.1f')} "
            f"| {_fmt(s.aht, '.2f')} | {_fmt(s.decision_ms_p50, '.1f')} / "
            f"{_fmt(s.decision_ms_p99, '.1f')} ({s.decisions}) "
            f"| {len(s.double_offers)} / {len(s.phone_double_offers)} "
            f"| {_fmt(s.daemon_cpu_percent, '.0f')} |")
    routers = sorted({s.router for s in steps})
    lines += ["", "Service level: answered within the threshold, % of offered calls. Decision "
              "latency: from an agent becoming free (app_queue AgentComplete, AMI timestamps; "
              "ACD CallEnded, the daemon's own clock in whole ms) while a caller waits with no "
              "offer, to the next offer (AgentCalled; the ACD's screen pop, sent before the "
              "phone rings). Double offers: by the router's events / at the agents' phones.", ""]
    for router in routers:
        best = agent_sustained(steps, router)
        lines.append(f"- **{router}: sustained with zero failed calls: "
                     f"{'none of the rates' if best is None else f'{best:g} calls/s'}**")
    if {"app_queue", "acd"} <= set(routers):
        lines += ["", "| rate | decision p50 app_queue / ACD | ratio | p99 app_queue / ACD "
                  "| ratio |", "|---|---|---|---|---|"]
        for rate in sorted({s.rate for s in steps}):
            a = next((s for s in steps if s.router == "app_queue" and s.rate == rate), None)
            o = next((s for s in steps if s.router == "acd" and s.rate == rate), None)
            if a is None or o is None:
                continue
            lines.append(
                f"| {rate:g} | {_fmt(a.decision_ms_p50, '.1f')} / {_fmt(o.decision_ms_p50, '.1f')}"
                f" | {_ratio(o.decision_ms_p50, a.decision_ms_p50)} "
                f"| {_fmt(a.decision_ms_p99, '.1f')} / {_fmt(o.decision_ms_p99, '.1f')} "
                f"| {_ratio(o.decision_ms_p99, a.decision_ms_p99)} |")
        a_best, o_best = agent_sustained(steps, "app_queue"), agent_sustained(steps, "acd")
        if a_best and o_best:
            lines.append(f"\nRate sustained with zero failed calls, ACD / app_queue: "
                         f"{o_best / a_best:.2f}x (bounded by the agents' capacity: both may "
                         f"reach the highest rate tried).")
    lines.append("")
    for s in steps:
        lines.append(f"## {s.router} at {s.rate:g} calls/s for {s.duration:g} s")
        lines.append("")
        lines.append(f"- failures by reason: {s.failures or 'none'}; PBX fallback lines "
                     f"{s.pbx_fallbacks}; calls the daemon failed {s.daemon_failed}")
        for d in (s.double_offers + s.phone_double_offers)[:5]:
            lines.append(f"- double offer: `{d}`")
        lines.append(f"- plot: `{agents_plot_name(s)}`")
        lines.append("")
    return "\n".join(lines)


def agents_plot_name(step: Any) -> str:
    return f"agents-{step.router}-{step.rate:g}cps.png"


def agents_plot(step: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = step.series
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    ax = axes[0]
    ax.plot(s["t"], s["in_system"], label="calls in system (answered by the IVR, not ended)")
    ax.plot(s["t"], s["waiting"], label="waiting in the queue (no agent yet)")
    ax.set_ylabel("calls")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{step.router}: {step.rate:g} calls/s for {step.duration:g} s, "
                 f"{step.agents} agents; {step.failed} failed, {step.abandoned} abandoned")
    ax = axes[1]
    ax.plot(s["t"], s["service_level"], color="tab:green")
    ax.set_ylabel(f"% answered within\n{step.sl_threshold:g} s (by arrival)")
    ax.set_ylim(-5, 105)
    ax = axes[2]
    ax.plot(s["t"], s["decision_ms_p50"], ".", label="decision latency p50")
    ax.plot(s["t"], s["decision_ms_p99"], ".", label="decision latency p99")
    ax.set_ylabel("ms (agent free -> offer)")
    ax.set_yscale("symlog", linthresh=1)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("seconds since the first call")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_agents(steps: Sequence[Any], folder: Path, *, command: str,
                 context: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"command": command, "context": context,
            "sustained_zero_failures": {r: agent_sustained(steps, r)
                                        for r in sorted({s.router for s in steps})},
            "steps": [s.to_dict() for s in steps]}
    (folder / "report.json").write_text(json.dumps(_no_nan(data), indent=1, allow_nan=False),
                                        encoding="utf-8")
    for s in steps:
        agents_plot(s, folder / agents_plot_name(s))
    md = folder / "report.md"
    md.write_text(agents_markdown(steps, command=command, context=context), encoding="utf-8")
    return md
