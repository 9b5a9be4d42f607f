"""Readable reports of scenario runs: markdown for people, JSON for tools.

A failing call shows the failing expectation first, then what the caller did and heard, the
channel variables Asterisk reported, and the engine's own record of the call, so that the
report alone says where to look.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simulate.runner import CallResult, ScenarioResult


def call_to_dict(c: CallResult) -> dict[str, Any]:
    s = c.sip
    return {
        "name": s.spec.name,
        "ok": c.ok,
        "caller": s.spec.caller or "withheld",
        "dial": s.spec.dial,
        "script": " ".join(step.describe() for step in s.spec.steps),
        "uniqueid": c.uniqueid,
        "status": s.status,
        "reason": s.reason,
        "duration": round(c.observed.duration, 2),
        "prompts": c.observed.prompts,
        "dead_air": round(c.observed.dead_air, 2),
        "ended_by": c.observed.ended_by,
        "answered_by": c.observed.answered_by,
        "steps": s.steps,
        "speech": [[round(a, 2), round(b, 2)] for a, b in s.speech],
        "heard_seconds": round(s.heard, 2),
        "agent_legs": [
            {"ext": leg.ext, "declined": leg.declined, "answered": leg.answered_at is not None,
             "hung_up_by_agent": leg.hung_up_by_agent}
            for leg in s.legs
        ],
        "variables": dict(c.observed.variables),
        "checks": [
            {"name": k.name, "ok": k.ok, "expected": k.expected, "actual": k.actual}
            for k in c.checks
        ],
        "record": c.observed.record,
        "recording": s.wav,
        "error": s.error,
    }


def to_dict(result: ScenarioResult) -> dict[str, Any]:
    return {
        "scenario": result.scenario.name,
        "source": result.scenario.source,
        "ok": result.ok,
        "seconds": round(result.seconds, 1),
        "ami_events": result.ami_events,
        "ami_dropped": result.ami_dropped,
        "calls": [call_to_dict(c) for c in result.calls],
    }


def _record_lines(record: dict[str, Any] | None) -> list[str]:
    if record is None:
        return ["  engine record: none"]
    q = record.get("queue") or {}
    lines = [
        f"  engine record {record.get('id')}: outcome={record.get('outcome')} "
        f"tier={record.get('tier')} language={record.get('language')} "
        f"region={record.get('region')}",
    ]
    if q:
        lines.append(f"    queue {q.get('name')} skills={','.join(q.get('skills') or [])} "
                     f"priority={q.get('priority')}")
    for step in record.get("steps", []):
        result = f" -> {step['result']}" if step.get("result") else ""
        lines.append(f"    step {step.get('at')} {step.get('node')} ({step.get('type')}){result}")
    for a in record.get("announcements", []):
        lines.append(f"    played {a}")
    return lines


def markdown(results: list[ScenarioResult]) -> str:
    lines = ["# Simulator run", ""]
    total = sum(len(r.calls) for r in results)
    failed = sum(1 for r in results for c in r.calls if not c.ok)
    lines.append(f"{len(results)} scenario(s), {total} call(s), {failed} failed.")
    lines.append("")
    for r in results:
        lines.append(f"## {r.scenario.name}: {'PASS' if r.ok else 'FAIL'} ({r.seconds:.1f}s)")
        if r.scenario.description:
            lines.append(f"{r.scenario.description}")
        lines.append("")
        for c in r.calls:
            d = call_to_dict(c)
            lines.append(f"### {d['name']}: {'PASS' if c.ok else 'FAIL'}")
            lines.append("")
            lines.append("```")
            for k in c.checks:
                if not k.ok:
                    lines.append(f"FAILED {k.name}: expected {k.expected}, got {k.actual}")
            lines.append(f"caller {d['caller']} -> {d['dial']}, call {d['uniqueid'] or '?'}, "
                         f"{d['duration']}s, ended by {d['ended_by']}, "
                         f"answered by {d['answered_by'] or 'no agent'}")
            for k in c.checks:
                mark = "ok  " if k.ok else "FAIL"
                lines.append(f"  {mark} {k.name:<16} expected {k.expected:<28} got {k.actual}")
            for step in d["steps"]:
                lines.append(f"  step: {step}")
            lines.append(f"  heard {d['heard_seconds']}s; speech {d['speech']}; "
                         f"dead air {d['dead_air']}s")
            if d["variables"]:
                lines.append("  AMI: " + " ".join(f"{k}={v}" for k, v in
                                                  sorted(d["variables"].items())))
            for leg in d["agent_legs"]:
                lines.append(f"  agent {leg['ext']}: "
                             + ("let it ring" if leg["declined"] else
                                "answered" if leg["answered"] else "rang, not answered")
                             + (", hung up" if leg["hung_up_by_agent"] else ""))
            if not c.ok or d["record"] is not None:
                lines.extend(_record_lines(d["record"]))
            if d["recording"]:
                lines.append(f"  recording: {d['recording']}")
            lines.append("```")
            lines.append("")
    return "\n".join(lines)


def write(results: list[ScenarioResult], folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / "report.md"
    js = folder / "report.json"
    md.write_text(markdown(results), encoding="utf-8")
    js.write_text(json.dumps([to_dict(r) for r in results], ensure_ascii=False, indent=2),
                  encoding="utf-8")
    return md, js
