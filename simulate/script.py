"""DTMF scripts for simulated callers: when to press what.

A script is a comma-separated list of steps:
  `w`       wait until the current prompt ends (speech heard, then silence; webrtcvad)
  `p1.5`    pause 1.5 seconds
  `123#`    send these digits at once (type-ahead)
  `s:1234`  send digits that are secret (a PIN): masked in every event and report
  `h`       hang up
Example: "w,1,w,s:123456,w,p2,h".
"""

from __future__ import annotations

from dataclasses import dataclass

from simulate.sip import SimCall

_DIGITS = set("0123456789*#ABCD")


class ScriptError(ValueError):
    pass


@dataclass(frozen=True)
class Step:
    kind: str  # "wait", "pause", "dtmf", "hangup"
    value: str = ""
    seconds: float = 0.0
    secret: bool = False

    def describe(self) -> str:
        if self.kind == "dtmf":
            return "send " + ("*" * len(self.value) if self.secret else self.value)
        if self.kind == "pause":
            return f"pause {self.seconds:g}s"
        return self.kind


def parse(script: str) -> list[Step]:
    steps: list[Step] = []
    for i, raw in enumerate(s.strip() for s in script.split(",")):
        if not raw:
            continue
        where = f"step {i + 1} ({raw!r})"
        if raw == "w":
            steps.append(Step("wait"))
        elif raw == "h":
            steps.append(Step("hangup"))
        elif raw.startswith("p"):
            try:
                seconds = float(raw[1:])
            except ValueError:
                raise ScriptError(f"{where}: pause needs seconds, e.g. p1.5") from None
            if not 0 <= seconds <= 600:
                raise ScriptError(f"{where}: pause must be 0-600 seconds")
            steps.append(Step("pause", seconds=seconds))
        else:
            secret = raw.startswith("s:")
            digits = raw[2:] if secret else raw
            if not digits or set(digits) - _DIGITS:
                raise ScriptError(f"{where}: not a step (w, pN, h, digits 0-9*#A-D, s:digits)")
            steps.append(Step("dtmf", value=digits, secret=secret))
    return steps


def run(call: SimCall, steps: list[Step], *, prompt_timeout: float = 20.0) -> list[str]:
    """Run the steps on a connected call; return what happened, one line per step."""
    done: list[str] = []
    for step in steps:
        if call.is_ended:
            done.append(f"call ended before: {step.describe()}")
            break
        if step.kind == "wait":
            end = call.wait_prompt_end(timeout=prompt_timeout)
            done.append(f"prompt ended at {end:.2f}s")
        elif step.kind == "pause":
            call.stack.pump(step.seconds)
            done.append(step.describe())
        elif step.kind == "dtmf":
            call.send_dtmf(step.value, mask=step.secret)
            done.append(step.describe())
        elif step.kind == "hangup":
            call.end()
            done.append("hung up")
    return done
