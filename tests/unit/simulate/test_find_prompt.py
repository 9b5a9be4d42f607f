"""find_prompt: a known recording found in received audio, also when a frame went missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simulate.sip import CLOCK_RATE, find_prompt, write_wav

FRAME = CLOCK_RATE // 50  # 20 ms, one RTP packet


def _voice(seconds: float, seed: int) -> np.ndarray:
    """Speech-like audio: noise shaped by a slow envelope (syllables)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * CLOCK_RATE)
    envelope = 0.5 + 0.5 * np.sin(np.arange(n) * 2 * np.pi * 4 / CLOCK_RATE) ** 2
    return (rng.normal(0, 4000, n) * envelope).clip(-32000, 32000).astype(np.int16)


def _wav(path: Path, samples: np.ndarray) -> Path:
    return write_wav(path, samples.tobytes())


def _heard(*parts: np.ndarray) -> bytes:
    return np.concatenate(parts).astype(np.int16).tobytes()


def test_a_prompt_is_found_where_it_starts_and_each_time(tmp_path: Path) -> None:
    prompt = _voice(2.0, 1)
    music = _voice(3.0, 2)
    wav = _wav(tmp_path / "prompt.wav", prompt)
    heard = _heard(music, prompt, music, prompt)
    assert find_prompt(heard, wav) == [3.0, 8.0]


def test_another_recording_is_not_found(tmp_path: Path) -> None:
    wav = _wav(tmp_path / "prompt.wav", _voice(2.0, 1))
    assert find_prompt(_heard(_voice(3.0, 2), _voice(2.0, 3)), wav) == []


def test_a_frame_lost_inside_a_long_prompt_sinks_the_whole_match_but_not_its_head(
    tmp_path: Path,
) -> None:
    prompt = _voice(5.5, 1)
    wav = _wav(tmp_path / "apology.wav", prompt)
    # the jitter buffer dropped one 20 ms frame halfway through the prompt
    half = len(prompt) // 2
    gapped = np.concatenate((prompt[:half], prompt[half + FRAME :]))
    heard = _heard(_voice(3.0, 2), gapped)
    assert find_prompt(heard, wav) == []
    assert find_prompt(heard, wav, head=1.0) == [3.0]
