"""Prompt catalogue, language fallback, and number/money/date speech in cmn, yue and en.

```python
cat = PromptCatalogue.load("prompts")
cat.render("bill_statement", language_chain("yue"),
           {"amount": Decimal("1234.50"), "minimum": 123, "due": date(2026, 11, 28)})
cat.say("masked", "6222021234567890", ["en"])   # "ending in 7 8 9 0", never more
```
`Utterance.file` is relative to `cat.sound_root()`, without extension; `ivr-engine prompts
build` puts an 8 kHz mono 16-bit .wav there for every sound the catalogue can name. See
`speech` for the spoken forms chosen in each language.
"""

from __future__ import annotations

from ivr_engine.prompts.catalogue import PromptCatalogue, SoundItem
from ivr_engine.prompts.errors import (
    CatalogueError,
    PromptBuildError,
    PromptError,
    SpeechValueError,
)
from ivr_engine.prompts.languages import LANGUAGES, language_chain, normalize_language
from ivr_engine.prompts.speech import KINDS
from ivr_engine.prompts.utterance import Utterance

__all__ = [
    "KINDS",
    "LANGUAGES",
    "CatalogueError",
    "PromptBuildError",
    "PromptCatalogue",
    "PromptError",
    "SoundItem",
    "SpeechValueError",
    "Utterance",
    "language_chain",
    "normalize_language",
]
