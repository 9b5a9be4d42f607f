"""The unit of speech the flow interpreter plays: one sound file and what it says."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Utterance:
    """One sound to play: `file` is relative to the prompt sound root, without extension.

    `text` is what the sound says, for transcripts; it is already masked when it came from a
    masked say. `lang` is "cmn", "yue" or "en".
    """

    file: str
    text: str
    lang: str
