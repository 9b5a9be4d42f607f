"""The prompt catalogue: `prompts/catalogue.yaml` -> prompt texts, fragments and placeholders.

The file maps a prompt id to its text per language, plus an optional `note` for admins:

```yaml
bill_statement:
  note: proactive bill announcement
  cmn: 您本期账单金额为{amount:money}，最低还款额为{minimum:money}，到期还款日为{due:date}。
  yue: ...
  en: ...
```

A placeholder is `{name:kind}`; the kinds are those of `say()` (number, money, date, time,
digits, masked, surname, title, region). Every language of a prompt must use the same
placeholders. The fixed text between placeholders becomes fragments, each one pre-built sound
(`cmn/bill_statement-1`); a prompt without placeholders is one sound (`cmn/welcome`).
`render()` never touches the disk: building the audio is `ivr_engine.prompts.build`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from ivr_engine.prompts import speech
from ivr_engine.prompts.errors import CatalogueError, PromptError, SpeechValueError
from ivr_engine.prompts.languages import LANGUAGES, normalize_language
from ivr_engine.prompts.utterance import Utterance

CATALOGUE_FILE = "catalogue.yaml"
SOUNDS_DIR = "sounds"
RECORDED_DIR = "recorded"

_ID = re.compile(r"[a-z][a-z0-9_]*\Z")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_SLOT = re.compile(r"([a-z_][a-z0-9_]*):([a-z]+)\Z")
_SPEAKABLE = re.compile(r"\w")


@dataclass(frozen=True)
class Fragment:
    file: str  # relative to the sound root, no extension
    text: str
    utterance: Utterance  # built once: render() hands out the same immutable object


@dataclass(frozen=True)
class Slot:
    name: str
    kind: str


Part = Fragment | Slot


@dataclass(frozen=True)
class SoundItem:
    """One sound the catalogue needs on disk: a prompt fragment or a word.

    `text` is what the sound says (as transcripts show it); the synthesizer reads `synth_text`
    with the voice of `voice` ("cmn" reads Chinese names inside English prompts: the English
    voice says "Xu" as "zoo").
    """

    file: str
    text: str
    lang: str
    synth_text: str = ""
    voice: str = ""
    word: bool = False  # a word of composed speech (numbers, names), not a prompt fragment

    @property
    def spoken(self) -> tuple[str, str]:
        """(voice language, text to synthesize)."""
        return self.voice or self.lang, self.synth_text or self.text


@dataclass(frozen=True)
class Prompt:
    id: str
    texts: Mapping[str, str]
    parts: Mapping[str, tuple[Part, ...]]
    placeholders: Mapping[str, str]
    note: str
    line: int


def parse_template(
    prompt_id: str, lang: str, text: str
) -> tuple[tuple[Part, ...], dict[str, str]]:
    """Split `text` into fragments and slots; ValueError with a plain message when malformed."""
    parts: list[Part] = []
    slots: dict[str, str] = {}
    pieces: list[str | Slot] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        pieces.append(text[pos:m.start()])
        slot = _SLOT.match(m[1].strip())
        if slot is None:
            raise ValueError(f"placeholder {m[0]} must be {{name:kind}}, e.g. {{amount:money}}")
        name, kind = slot[1], slot[2]
        if kind not in speech.KINDS:
            raise ValueError(
                f"placeholder {m[0]}: unknown kind {kind!r} "
                f"(known: {', '.join(sorted(speech.KINDS))})"
            )
        if slots.get(name, kind) != kind:
            raise ValueError(f"placeholder {name!r} is used with two kinds")
        slots[name] = kind
        pieces.append(Slot(name, kind))
        pos = m.end()
    pieces.append(text[pos:])
    for piece in pieces:
        if isinstance(piece, str) and ("{" in piece or "}" in piece):
            raise ValueError("unbalanced brace (placeholders are {name:kind})")
    fixed = [p for p in pieces if isinstance(p, str) and _SPEAKABLE.search(p)]
    single = not slots and len(fixed) == 1
    n = 0
    for piece in pieces:
        if isinstance(piece, Slot):
            parts.append(piece)
        elif _SPEAKABLE.search(piece):
            n += 1
            file = f"{lang}/{prompt_id}" if single else f"{lang}/{prompt_id}-{n}"
            parts.append(Fragment(file, piece.strip(), Utterance(file, piece.strip(), lang)))
    return tuple(parts), slots


class _Loader(yaml.SafeLoader):
    """SafeLoader; we walk the composed node tree ourselves to keep line numbers."""


def _load_prompts(path: Path) -> dict[str, Prompt]:
    where = str(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogueError(f"cannot read: {exc.strerror}", path=where) from None
    except UnicodeDecodeError:
        raise CatalogueError("not UTF-8", path=where) from None
    try:
        root = yaml.compose(raw, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise CatalogueError(
            f"YAML syntax: {exc.problem}", path=where,
            line=mark.line + 1 if mark else None, col=mark.column + 1 if mark else None,
        ) from None
    except yaml.YAMLError as exc:
        raise CatalogueError(f"YAML: {exc}", path=where) from None
    if root is None:
        return {}

    def err(node: yaml.Node, message: str) -> CatalogueError:
        return CatalogueError(
            message, path=where, line=node.start_mark.line + 1, col=node.start_mark.column + 1
        )

    if not isinstance(root, yaml.MappingNode):
        raise err(root, "the catalogue must be a mapping of prompt id -> texts")
    prompts: dict[str, Prompt] = {}
    for key_node, value_node in root.value:
        if not isinstance(key_node, yaml.ScalarNode) or not _ID.match(str(key_node.value)):
            raise err(key_node, f"prompt id {key_node.value!r} must match [a-z][a-z0-9_]*")
        pid = str(key_node.value)
        if pid in prompts:
            raise err(key_node, f"duplicate prompt id {pid!r} (first at line {prompts[pid].line})")
        if not isinstance(value_node, yaml.MappingNode):
            raise err(value_node, f"prompt {pid!r}: expected a mapping of language -> text")
        texts: dict[str, str] = {}
        parts: dict[str, tuple[Part, ...]] = {}
        note = ""
        placeholders: dict[str, str] | None = None
        first_lang = ""
        for lang_node, text_node in value_node.value:
            lang = str(lang_node.value)
            if lang != "note" and lang not in LANGUAGES:
                raise err(
                    lang_node, f"prompt {pid!r}: unknown key {lang!r} (known: cmn, yue, en, note)"
                )
            if lang in texts or (lang == "note" and note):
                raise err(lang_node, f"prompt {pid!r}: duplicate key {lang!r}")
            if not isinstance(text_node, yaml.ScalarNode) or text_node.tag != (
                "tag:yaml.org,2002:str"
            ):
                raise err(text_node, f"prompt {pid!r}: {lang} must be a string")
            text = " ".join(str(text_node.value).split())
            if not text:
                raise err(text_node, f"prompt {pid!r}: {lang} is empty")
            if lang == "note":
                note = text
                continue
            try:
                lang_parts, slots = parse_template(pid, lang, text)
            except ValueError as exc:
                raise err(text_node, f"prompt {pid!r} ({lang}): {exc}") from None
            if placeholders is None:
                placeholders, first_lang = slots, lang
            elif slots != placeholders:
                raise err(
                    text_node,
                    f"prompt {pid!r}: {lang} placeholders {_fmt(slots)} differ from "
                    f"{first_lang} {_fmt(placeholders)}",
                )
            texts[lang] = text
            parts[lang] = lang_parts
        if not texts:
            raise err(value_node, f"prompt {pid!r} has no text in any language")
        prompts[pid] = Prompt(
            pid, texts, parts, placeholders or {}, note, key_node.start_mark.line + 1
        )
    return prompts


# Every word sound as a ready Utterance: composed speech reuses these immutable objects.
_WORDS: dict[str, dict[str, Utterance]] = {
    lang: {key: Utterance(f"{lang}/{key}", text, lang) for key, text in vocab.items()}
    for lang, vocab in speech.VOCABULARY.items()
}


def _fmt(slots: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{k}:{v}" for k, v in sorted(slots.items())) + "}"


class PromptCatalogue:
    """Prompt texts per language, rendered into `Utterance`s of pre-built sounds."""

    languages: frozenset[str] = LANGUAGES

    def __init__(self, prompts: Mapping[str, Prompt], directory: Path):
        self._prompts = dict(prompts)
        self._directory = directory

    @classmethod
    def load(cls, directory: str | Path) -> PromptCatalogue:
        """Load `directory/catalogue.yaml` (a path to the YAML file itself works too)."""
        path = Path(directory)
        if path.suffix in (".yaml", ".yml"):
            return cls(_load_prompts(path), path.parent)
        return cls(_load_prompts(path / CATALOGUE_FILE), path)

    # --- queries -----------------------------------------------------------------------------

    def ids(self) -> frozenset[str]:
        return frozenset(self._prompts)

    def has(self, prompt_id: str, lang: str) -> bool:
        prompt = self._prompts.get(prompt_id)
        return prompt is not None and lang in prompt.texts

    def _get(self, prompt_id: str) -> Prompt:
        try:
            return self._prompts[prompt_id]
        except KeyError:
            raise PromptError(f"unknown prompt id {prompt_id!r}") from None

    def text(self, prompt_id: str, lang: str) -> str:
        prompt = self._get(prompt_id)
        try:
            return prompt.texts[lang]
        except KeyError:
            raise PromptError(f"prompt {prompt_id!r} has no {lang!r} text") from None

    def placeholders(self, prompt_id: str) -> dict[str, str]:
        return dict(self._get(prompt_id).placeholders)

    def note(self, prompt_id: str) -> str:
        return self._get(prompt_id).note

    def gaps(self) -> dict[str, tuple[str, ...]]:
        """Prompt id -> the languages it lacks (only ids with gaps)."""
        out: dict[str, tuple[str, ...]] = {}
        for pid, prompt in sorted(self._prompts.items()):
            missing = tuple(lang for lang in ("cmn", "yue", "en") if lang not in prompt.texts)
            if missing:
                out[pid] = missing
        return out

    # --- speech ------------------------------------------------------------------------------

    def render(
        self,
        prompt_id: str,
        langs: Sequence[str],
        variables: Mapping[str, object] | None = None,
    ) -> list[Utterance]:
        """The prompt in the first language of `langs` that has it, placeholders spoken."""
        prompt = self._get(prompt_id)
        chain = [normalize_language(lang) for lang in langs]
        lang = next((lang for lang in chain if lang in prompt.texts), None)
        if lang is None:
            raise PromptError(
                f"prompt {prompt_id!r} has no text in any of {', '.join(chain) or '(no languages)'}"
            )
        variables = variables or {}
        out: list[Utterance] = []
        for part in prompt.parts[lang]:
            if isinstance(part, Fragment):
                out.append(part.utterance)
                continue
            if part.name not in variables or variables[part.name] is None:
                raise PromptError(
                    f"prompt {prompt_id!r}: variable {part.name!r} ({part.kind}) was not given"
                )
            try:
                out += self._say(part.kind, variables[part.name], lang)
            except SpeechValueError as exc:
                raise SpeechValueError(
                    f"prompt {prompt_id!r}, {{{part.name}:{part.kind}}}: {exc}"
                ) from None
        return out

    def say(self, kind: str, value: object, langs: Sequence[str]) -> list[Utterance]:
        """`value` spoken as `kind` in the first language of `langs` (every kind exists in all)."""
        chain = [normalize_language(lang) for lang in langs]
        if not chain:
            raise PromptError("say: the language chain is empty")
        return self._say(kind, value, chain[0])

    def can_say(self, kind: str, value: object, lang: str = "cmn") -> bool:
        """Whether `say(kind, value, [lang])` would succeed: e.g. a surname outside the tables.

        Lets the composition root decide "greet by name" before the call reaches the prompt.
        """
        try:
            self._say(kind, value, normalize_language(lang))
        except SpeechValueError:
            return False
        return True

    @staticmethod
    def _say(kind: str, value: object, lang: str) -> list[Utterance]:
        words = _WORDS[lang]
        return [words[key] for key in speech.speak(kind, value, lang)]

    # --- files -------------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._directory

    def sound_root(self) -> Path:
        """Where the built audio lives: `<prompts dir>/sounds` (8 kHz mono 16-bit .wav)."""
        return self._directory / SOUNDS_DIR

    def recorded_root(self) -> Path:
        """Studio recordings, `recorded/<lang>/<name>.wav`: they replace synthesized sounds."""
        return self._directory / RECORDED_DIR

    def sound_items(self) -> list[SoundItem]:
        """Every sound render() and say() can name: prompt fragments, then the word sounds."""
        items: dict[str, SoundItem] = {}
        for prompt in self._prompts.values():
            for lang, parts in prompt.parts.items():
                for part in parts:
                    if isinstance(part, Fragment):
                        items[part.file] = SoundItem(part.file, part.text, lang)
        for lang in sorted(speech.VOCABULARY):
            for key, text in speech.VOCABULARY[lang].items():
                file = f"{lang}/{key}"
                voice, synth_text = speech.synthesis_source(lang, key)
                items.setdefault(file, SoundItem(file, text, lang, synth_text, voice, word=True))
        return list(items.values())
