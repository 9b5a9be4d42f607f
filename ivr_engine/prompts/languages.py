"""The three prompt languages and the per-call fallback chain.

Codes are ISO 639-3: `cmn` Mandarin (simplified characters), `yue` Cantonese (traditional
characters, Cantonese wording), `en` English. Common aliases from caller data are accepted
("zh", "zh-CN", "zh-HK", "cantonese", "en-US" ...).

Fallback chains: a Cantonese speaker understands Mandarin better than English; an English
speaker is offered Mandarin next (the bank's main language); Mandarin falls back to English.
"""

from __future__ import annotations

from ivr_engine.prompts.errors import PromptError

LANGUAGES: frozenset[str] = frozenset({"cmn", "yue", "en"})

_CHAINS: dict[str, tuple[str, ...]] = {
    "cmn": ("cmn", "en"),
    "yue": ("yue", "cmn", "en"),
    "en": ("en", "cmn"),
}

_ALIASES: dict[str, str] = {
    "cmn": "cmn", "zh": "cmn", "zh-cn": "cmn", "zh-hans": "cmn", "zh-cmn": "cmn",
    "mandarin": "cmn", "putonghua": "cmn", "普通话": "cmn", "国语": "cmn",
    "yue": "yue", "zh-hk": "yue", "zh-mo": "yue", "zh-yue": "yue", "zh-hant-hk": "yue",
    "cantonese": "yue", "粤语": "yue", "粵語": "yue", "廣東話": "yue", "广东话": "yue",
    "en": "en", "en-us": "en", "en-gb": "en", "eng": "en", "english": "en", "英语": "en",
}


def normalize_language(code: str) -> str:
    """The canonical code for `code` ("zh-HK" -> "yue"); PromptError if it is not one of ours."""
    if code in LANGUAGES:
        return code
    key = code.strip().lower().replace("_", "-")
    try:
        return _ALIASES[key]
    except KeyError:
        raise PromptError(
            f"unknown language {code!r} (known: cmn, yue, en and aliases such as zh, zh-HK)"
        ) from None


def language_chain(preferred: str | None, default: str = "cmn") -> tuple[str, ...]:
    """The languages to try in order: "yue" -> ("yue","cmn","en"), None -> chain of `default`."""
    code = normalize_language(preferred) if preferred else normalize_language(default)
    return _CHAINS[code]
