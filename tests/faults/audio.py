"""Reading a simulated caller's received audio for dead air (webrtcvad, 20 ms frames)."""

from __future__ import annotations

from dataclasses import dataclass

from simulate.sip import find_speech


@dataclass(frozen=True)
class DeadAir:
    last_speech_end: float  # end of the last speech the caller heard before the fault
    next_speech_start: float  # start of the first speech after it (the apology)
    fault_at: float

    @property
    def gap(self) -> float:
        return self.next_speech_start - self.last_speech_end


def dead_air_around(pcm: bytes, fault_at: float) -> DeadAir:
    """The silence the caller heard across a fault at media time `fault_at`: from the end of
    the last speech that began before the fault (a prompt cut by it, or the prompt before a
    silent wait) to the start of the next speech (what the PBX plays instead: the apology).

    Segments are merged only across gaps under 100 ms, so a prompt cut off and an apology that
    follows at once are still two segments. Raises if no speech follows the fault: that is
    dead air until the end of the recording, which the caller may not be spared."""
    segments = find_speech(pcm, merge_gap_ms=100, min_speech_ms=100).segments
    before = [s for s in segments if s[0] < fault_at]
    if not before:
        raise AssertionError(f"no speech before the fault at {fault_at:.2f}s: {segments}")
    last_end = before[-1][1]
    after = [s for s in segments if s[0] >= last_end and s[0] > before[-1][0]]
    if not after:
        heard = len(pcm) / 16000
        raise AssertionError(
            f"no speech after the fault at {fault_at:.2f}s (last speech ended {last_end:.2f}s, "
            f"recording {heard:.2f}s): {segments}"
        )
    return DeadAir(last_end, after[0][0], fault_at)
