"""Reading a simulated caller's received audio for dead air: webrtcvad speech segments
around a fault, and runs of silence by energy (20 ms frames)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


@dataclass(frozen=True)
class Silence:
    start: float  # media seconds
    length: float


def longest_silence(
    pcm: bytes, start: float, end: float, *, rms_below: float = 100.0, frame_ms: int = 20
) -> Silence:
    """The longest run of near-silent frames (RMS under `rms_below` of 32,768: about -50 dBFS)
    in 8 kHz 16-bit mono PCM between media times `start` and `end`.

    Energy, not voice activity: music on hold is not speech to webrtcvad, but it is not dead
    air either. The dev PBX's hold music is a chime that decays to silence once a second, so
    its own quiet tail is a few tens of milliseconds."""
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype=np.int16).astype(np.float64)
    size = 8000 * frame_ms // 1000
    first, last = int(start * 1000) // frame_ms, int(end * 1000) // frame_ms
    best, best_at, run, run_at = 0, first, 0, first
    for i in range(first, min(last, len(samples) // size)):
        frame = samples[i * size : (i + 1) * size]
        if float(np.sqrt(np.mean(frame * frame))) < rms_below:
            if run == 0:
                run_at = i
            run += 1
            if run > best:
                best, best_at = run, run_at
        else:
            run = 0
    return Silence(best_at * frame_ms / 1000, best * frame_ms / 1000)
