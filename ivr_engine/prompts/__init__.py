"""Prompt catalogue, language fallback, and number/money/date speech in cmn, yue and en."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Utterance:
    """One sound to play: `file` is relative to the prompt sound root, without extension."""

    file: str
    text: str
    lang: str
