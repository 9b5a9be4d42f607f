"""Prompt errors: all of them are `PromptError`s, so callers can catch the shared class."""

from __future__ import annotations

from ivr_engine.errors import PromptError

__all__ = ["CatalogueError", "PromptBuildError", "PromptError", "SpeechValueError"]


class CatalogueError(PromptError):
    """`catalogue.yaml` cannot be loaded: names the file, and the line and column when known."""

    def __init__(
        self, message: str, *, path: str | None = None, line: int | None = None,
        col: int | None = None,
    ):
        self.message = message
        self.path = path
        self.line = line
        self.col = col
        loc = path or "<catalogue>"
        if line is not None:
            loc += f":{line}"
            if col is not None:
                loc += f":{col}"
        super().__init__(f"{loc}: {message}")


class SpeechValueError(PromptError):
    """A value that cannot be spoken as the requested kind (negative, too large, malformed).

    The message never repeats a digit string or a masked value: those may be a PIN or a card
    number.
    """


class PromptBuildError(PromptError):
    """Synthesizing or converting prompt audio failed (espeak-ng or sox missing or failing)."""
