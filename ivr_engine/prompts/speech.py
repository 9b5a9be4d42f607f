"""Numbers, money, dates, times and digit strings, spoken from small word sounds.

Asterisk ships no Chinese sounds, so every composed phrase is a list of word-level sounds
(`cmn/num/5`, `cmn/word/thousand`, `en/num/34` ...) that `ivr-engine prompts build` synthesizes
once. This module is pure: values in, vocabulary keys out. Keys are language-neutral
("word/thousand" is 千 in cmn and yue, "thousand" in en); `VOCABULARY[lang][key]` is the text.

Choices (the bank's formal telephone register):

Mandarin (cmn)
  - 零 for internal zeros, once per run: 1005 一千零五, 1050 一千零五十, 100010 十万零一十,
    100000005 一亿零五. 万 and 亿 groups.
  - 十 alone at the very start (10 十, 12 十二, 100000 十万), 一十 elsewhere (110 一百一十).
  - 两: before 千 (两千, 一万两千), before 百 only at the start of the number (两百, but
    一千二百), for a group of exactly 2 before 万/亿 (两万, 两亿, but 二十二万), and for a count of
    exactly 2 (`number` and the units of `money`: 两位, 两元, 两角, 两分). Elsewhere 二.
  - Money: 元/角/分 (formal, not 块/毛). 1234.50 一千二百三十四元五角; 1234.05
    一千二百三十四元零五分; 0.05 五分; 0 零元; whole amounts end at 元 (no 整).
  - Dates: 二零二六年十一月二十八日 (year digit by digit). Times, 24-hour: 十四点三十分,
    十四点零五分, 两点整.
  - `number` is a count, `ordinal` a rank: 第二 (二 even for 2), 第十一.
  - Tone sandhi of 一 (the synthesizer does not apply it): yì before 千/百 and in a quantity of
    exactly one (一元, 一角, 一点), yí before 万/亿. Same character in transcripts; a separate
    sound (`num/1_tone4`, `num/1_tone2`). Dates, digit strings and 十一 keep yī.
  - Digit strings: one by one, 1 as 幺 (the telephone convention, avoids confusing 一 and 七);
    used for account and phone numbers and for masked reads.
Cantonese (yue)
  - Same structure in traditional characters (萬, 億, 兩, 點). Formal banking register:
    元/角/分, not the colloquial 蚊/毫/仙; 二十 not the colloquial 廿; 一百一十 not 百一.
  - 兩 before 百 and 千 anywhere (兩百, 一千兩百, as Cantonese says it), for a group of exactly 2
    before 萬/億, and for a count of 2. Dates use 號: 二零二六年十一月二十八號.
  - Digit strings: 一 (Cantonese has no 幺).
English (en)
  - American style, no "and" inside numbers: 1234 "one thousand two hundred thirty-four".
  - Money: "one thousand two hundred thirty-four yuan and fifty fen" (the minor unit is the fen,
    0.01 yuan; jiao is not used in English); 0.05 "five fen"; 0 "zero yuan".
  - Ordinals: "second", "twenty-second", "one hundred first", "two thousandth".
  - Dates: "November twenty-eighth, twenty twenty-six". Times, 12-hour: "two thirty p.m.",
    "two oh five p.m.", "two p.m.".
  - Digit strings: "zero" for 0 (not "oh").
All languages: `masked` speaks only the last four digits: 尾号七八九零 / 尾號七八九零 /
"ending in seven eight nine zero". Integers from 0 to 999,999,999,999 (below 一万亿); money to
the fen, below 10^12 yuan. Negative, fractional counts, over-precise or huge values are
refused with `SpeechValueError`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from decimal import Context, Decimal, InvalidOperation

from ivr_engine.prompts import names
from ivr_engine.prompts.errors import SpeechValueError

KINDS: frozenset[str] = frozenset(
    {"number", "ordinal", "money", "date", "time", "digits", "masked", "surname", "title",
     "region"}
)

MAX_INTEGER = 999_999_999_999
MAX_DIGITS = 64
_FEN = Decimal("0.01")

_CMN_DIGITS = "零一二三四五六七八九"
_EN_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_EN_MONTHS = (
    "January February March April May June July August September October November December"
).split()
_EN_ORD_ONES = (
    "_ first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth"
).split()


def _en_cardinal(n: int) -> str:
    if n < 20:
        return _EN_ONES[n]
    tens, ones = divmod(n, 10)
    return _EN_TENS[tens] + (f"-{_EN_ONES[ones]}" if ones else "")


def _en_ordinal(n: int) -> str:
    if n < 20:
        return _EN_ORD_ONES[n]
    tens, ones = divmod(n, 10)
    if ones == 0:
        return _EN_TENS[tens][:-1] + "ieth"
    return f"{_EN_TENS[tens]}-{_EN_ORD_ONES[ones]}"


def _zh_vocabulary(trad: bool) -> dict[str, str]:
    v = {f"num/{d}": _CMN_DIGITS[d] for d in range(10)}
    v.update({
        "num/liang": "兩" if trad else "两",
        "word/ten": "十", "word/hundred": "百", "word/thousand": "千",
        "word/tenthousand": "萬" if trad else "万", "word/hundredmillion": "億" if trad else "亿",
        "word/yuan": "元", "word/jiao": "角", "word/fen": "分",
        "word/year": "年", "word/month": "月", "word/day": "號" if trad else "日",
        "word/hour": "點" if trad else "点", "word/minute": "分", "word/oclock": "整",
        "word/ending": "尾號" if trad else "尾号", "word/ordinal": "第",
    })
    if not trad:
        v["num/yao"] = "幺"
        # 一 changes tone before another syllable (tone sandhi): yì qiān, yì bǎi, yí wàn, yí yì.
        v["num/1_tone4"] = "一"
        v["num/1_tone2"] = "一"
    return v


def _en_vocabulary() -> dict[str, str]:
    v = {f"num/{n}": _en_cardinal(n) for n in range(100)}
    v.update({f"ord/{n}": _en_ordinal(n) for n in range(1, 100)})
    v.update({f"month/{i + 1}": m for i, m in enumerate(_EN_MONTHS)})
    v.update({
        "word/hundred": "hundred", "word/thousand": "thousand", "word/million": "million",
        "word/billion": "billion", "word/yuan": "yuan", "word/fen": "fen", "word/and": "and",
        "word/oh": "oh", "word/am": "a.m.", "word/pm": "p.m.", "word/ending": "ending in",
        "word/hundredth": "hundredth", "word/thousandth": "thousandth",
        "word/millionth": "millionth", "word/billionth": "billionth",
    })
    return v


def _names_vocabulary(lang: str) -> dict[str, str]:
    v: dict[str, str] = {}
    for n in names.SURNAMES:
        v[f"surname/{n.slug}"] = n.text(lang)
    for n in names.TITLES.values():
        v[f"title/{n.slug}"] = n.text(lang)
    for n in names.PROVINCES:
        v[f"region/{n.slug}"] = n.text(lang)
    for n in names.CITIES:
        v[f"city/{n.slug}"] = n.text(lang)
    return v


VOCABULARY: dict[str, dict[str, str]] = {
    "cmn": _zh_vocabulary(trad=False) | _names_vocabulary("cmn"),
    "yue": _zh_vocabulary(trad=True) | _names_vocabulary("yue"),
    "en": _en_vocabulary() | _names_vocabulary("en"),
}


# --- value parsing -------------------------------------------------------------------------


def _integer(value: object, kind: str) -> int:
    if isinstance(value, bool):
        raise SpeechValueError(f"{kind}: expected a whole number, got a boolean")
    if isinstance(value, int):
        n = value
    elif isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        # before int(): Decimal("1E+999999999") is cheap, its int is not (nor is abs())
        if value.adjusted() >= 12:
            raise SpeechValueError(f"{kind}: {value} is larger than {MAX_INTEGER:,}")
        n = int(value)
    elif isinstance(value, float) and value.is_integer():
        n = int(value)  # flow expressions of type num arrive as float: 3.0 is spoken as 3
    elif isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,15}\s*", value):
        n = int(value)
    else:
        raise SpeechValueError(f"{kind}: expected a whole number, got {value!r}")
    if n < 0:
        raise SpeechValueError(f"{kind}: negative values are not spoken, got {n}")
    if n > MAX_INTEGER:
        raise SpeechValueError(f"{kind}: {n} is larger than {MAX_INTEGER:,}")
    return n


def _ordinal(value: object) -> int:
    n = _integer(value, "ordinal")
    if n == 0:
        raise SpeechValueError("ordinal: there is no zeroth")
    return n


def _money(value: object) -> tuple[int, int]:
    """(yuan, fen) from an int, Decimal, float or "1234.50"; refuses more than 2 decimals."""
    if isinstance(value, bool):
        raise SpeechValueError("money: expected an amount, got a boolean")
    try:
        if isinstance(value, int | Decimal):
            amount = Decimal(value)
        elif isinstance(value, float):
            amount = Decimal(repr(value))
        elif isinstance(value, str):
            amount = Decimal(value.strip().replace(",", ""))
        else:
            raise SpeechValueError(f"money: expected an amount, got {type(value).__name__}")
    except InvalidOperation:
        raise SpeechValueError(f"money: {value!r} is not an amount") from None
    if not amount.is_finite():
        raise SpeechValueError(f"money: {value!r} is not a finite amount")
    if amount < 0:
        raise SpeechValueError(f"money: negative amounts are not spoken, got {amount}")
    if amount.adjusted() >= 12:  # >= 10**12, checked without arithmetic that could overflow
        raise SpeechValueError(f"money: {amount} is larger than {MAX_INTEGER:,} yuan")
    # Exact arithmetic: below 10**12 with 2 decimals needs 14 digits, the default context 28
    # would round "1.0000000000000000000000000001" to a clean 1.00.
    exact = Context(prec=40)
    fen_amount = amount.quantize(_FEN, context=exact)
    if fen_amount != amount:
        raise SpeechValueError(f"money: {amount} has more than two decimal places")
    yuan, fen = divmod(int(fen_amount.scaleb(2, context=exact)), 100)
    if yuan > MAX_INTEGER:
        raise SpeechValueError(f"money: {amount} is larger than {MAX_INTEGER:,} yuan")
    return yuan, fen


def _date(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        d = value.date()
    elif isinstance(value, dt.date):
        d = value
    elif isinstance(value, str):
        try:
            d = dt.date.fromisoformat(value.strip())
        except ValueError:
            raise SpeechValueError(f"date: {value!r} is not YYYY-MM-DD") from None
    else:
        raise SpeechValueError(f"date: expected a date or 'YYYY-MM-DD', got {type(value).__name__}")
    if not 1900 <= d.year <= 2099:
        raise SpeechValueError(f"date: year {d.year} is outside 1900-2099")
    return d


def _time(value: object) -> dt.time:
    if isinstance(value, dt.datetime):
        return value.time()
    if isinstance(value, dt.time):
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})(?::\d{2})?\s*", value)
        if m and int(m[1]) < 24 and int(m[2]) < 60:
            return dt.time(int(m[1]), int(m[2]))
        raise SpeechValueError(f"time: {value!r} is not HH:MM")
    raise SpeechValueError(f"time: expected a time or 'HH:MM', got {type(value).__name__}")


def _digit_string(value: object, kind: str) -> str:
    """Digits only, separators (space, hyphen) dropped. Never echoes the value: it may be a PIN."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise SpeechValueError(f"{kind}: expected a string of digits, got {type(value).__name__}")
    text = re.sub(r"[\s-]", "", str(value))
    if kind == "digits":
        if not text or not text.isascii() or not text.isdigit():
            raise SpeechValueError(f"digits: expected only 0-9, got {len(text)} characters")
        if len(text) > MAX_DIGITS:
            raise SpeechValueError(f"digits: {len(text)} digits is more than {MAX_DIGITS}")
    return text


# --- Chinese numbers ---------------------------------------------------------------------------


def _zh_group(v: int, *, first: bool, yue: bool) -> list[str]:
    """One 4-digit group (1..9999). `first`: no higher group was spoken before it."""
    out: list[str] = []
    zero = False
    emitted = False
    for pos, d in ((3, v // 1000), (2, v // 100 % 10), (1, v // 10 % 10), (0, v % 10)):
        if d == 0:
            zero = zero or emitted
            continue
        if zero:
            out.append("num/0")
            zero = False
        leading = first and not emitted
        if pos == 3:
            out += ["num/liang" if d == 2 else f"num/{d}", "word/thousand"]
        elif pos == 2:
            two = d == 2 and (yue or leading)
            out += ["num/liang" if two else f"num/{d}", "word/hundred"]
        elif pos == 1:
            out += ["word/ten"] if d == 1 and leading else [f"num/{d}", "word/ten"]
        else:
            out.append(f"num/{d}")
        emitted = True
    return out


def zh_integer(n: int, *, yue: bool = False, count: bool = False) -> list[str]:
    """Vocabulary keys for 0 <= n <= MAX_INTEGER; `count`: exactly 2 is 两 (两位, 两元)."""
    if n == 0:
        return ["num/0"]
    if count and n == 2:
        return ["num/liang"]
    out: list[str] = []
    started = False
    pending_zero = False
    groups = ((n // 10**8, "word/hundredmillion"), (n // 10**4 % 10**4, "word/tenthousand"),
              (n % 10**4, ""))
    for value, unit in groups:
        if value == 0:
            pending_zero = pending_zero or started
            continue
        if started and value < 1000:
            pending_zero = True
        if pending_zero:
            out.append("num/0")
            pending_zero = False
        if unit and value == 2:
            out.append("num/liang")
        else:
            out += _zh_group(value, first=not started, yue=yue)
        if unit:
            out.append(unit)
        started = True
    return out


_BEFORE_TONE4 = frozenset({"word/tenthousand", "word/hundredmillion"})  # 万 wàn, 亿 yì
_MULTIPLIERS = frozenset({"word/hundred", "word/thousand"})  # 百 bǎi, 千 qiān
_MEASURES = frozenset({"word/yuan", "word/jiao", "word/fen", "word/hour"})  # 元 角 分 点


def _cmn_tone_sandhi(keys: list[str]) -> list[str]:
    """Mandarin 一 before a unit: yí before a 4th tone (一万, 一亿), yì before the others
    (一千, 一百, and a quantity of exactly one: 一元, 一角, 一分, 一点). Not at the end of a
    longer number (十一元 is shí yī yuán) nor in dates, digit strings or 一十."""
    out = list(keys)
    for i, key in enumerate(keys[:-1]):
        if key != "num/1":
            continue
        nxt = keys[i + 1]
        starts = i == 0 or not (keys[i - 1].startswith("num/") or keys[i - 1] == "word/ten")
        if nxt in _BEFORE_TONE4:
            out[i] = "num/1_tone2"
        elif nxt in _MULTIPLIERS or (nxt in _MEASURES and starts):
            out[i] = "num/1_tone4"
    return out


def _zh_money(yuan: int, fen: int, yue: bool) -> list[str]:
    jiao, fen = divmod(fen, 10)
    out: list[str] = []
    if yuan:
        out += zh_integer(yuan, yue=yue, count=True) + ["word/yuan"]
    if jiao:
        out += zh_integer(jiao, yue=yue, count=True) + ["word/jiao"]
    if fen:
        if yuan and not jiao:
            out.append("num/0")
        out += zh_integer(fen, yue=yue, count=True) + ["word/fen"]
    return out or ["num/0", "word/yuan"]


def _zh_date(d: dt.date, yue: bool) -> list[str]:
    year = [f"num/{c}" for c in str(d.year)]
    return (year + ["word/year"] + zh_integer(d.month, yue=yue) + ["word/month"]
            + zh_integer(d.day, yue=yue) + ["word/day"])


def _zh_time(t: dt.time, yue: bool) -> list[str]:
    out = zh_integer(t.hour, yue=yue, count=True) + ["word/hour"]
    if t.minute == 0:
        return out + ["word/oclock"]
    if t.minute < 10:
        out.append("num/0")
    return out + zh_integer(t.minute, yue=yue) + ["word/minute"]


def _zh_digits(text: str, yue: bool) -> list[str]:
    return [("num/yao" if c == "1" and not yue else f"num/{c}") for c in text]


# --- English -----------------------------------------------------------------------------------


def en_integer(n: int) -> list[str]:
    """Vocabulary keys for 0 <= n <= MAX_INTEGER, American style (no "and")."""
    if n == 0:
        return ["num/0"]
    out: list[str] = []
    for scale, word in ((10**9, "word/billion"), (10**6, "word/million"), (10**3, "word/thousand"),
                        (1, "")):
        chunk = n // scale % 1000
        if not chunk:
            continue
        hundreds, rest = divmod(chunk, 100)
        if hundreds:
            out += [f"num/{hundreds}", "word/hundred"]
        if rest:
            out.append(f"num/{rest}")
        if word:
            out.append(word)
    return out


def en_ordinal(n: int) -> list[str]:
    """"first", "twenty-second", "one hundred first", "two thousandth" (1 <= n <= MAX_INTEGER)."""
    rest = n % 100
    if rest:
        return (en_integer(n - rest) if n >= 100 else []) + [f"ord/{rest}"]
    keys = en_integer(n)
    return keys[:-1] + [keys[-1] + "th"]


def _en_money(yuan: int, fen: int) -> list[str]:
    if yuan and fen:
        return en_integer(yuan) + ["word/yuan", "word/and"] + en_integer(fen) + ["word/fen"]
    if fen:
        return en_integer(fen) + ["word/fen"]
    return en_integer(yuan) + ["word/yuan"]


def _en_year(y: int) -> list[str]:
    hi, lo = divmod(y, 100)
    if 2000 <= y <= 2009:
        return ["num/2", "word/thousand"] + ([f"num/{lo}"] if lo else [])
    if lo == 0:
        return [f"num/{hi}", "word/hundred"]
    if lo < 10:
        return [f"num/{hi}", "word/oh", f"num/{lo}"]
    return [f"num/{hi}", f"num/{lo}"]


def _en_date(d: dt.date) -> list[str]:
    return [f"month/{d.month}", f"ord/{d.day}"] + _en_year(d.year)


def _en_time(t: dt.time) -> list[str]:
    hour12 = t.hour % 12 or 12
    out = [f"num/{hour12}"]
    if t.minute:
        out += (["word/oh"] if t.minute < 10 else []) + [f"num/{t.minute}"]
    return out + ["word/am" if t.hour < 12 else "word/pm"]


# --- dispatch ----------------------------------------------------------------------------------


def _masked(value: object) -> str:
    text = _digit_string(value, "masked")
    last4 = text[-4:]
    if len(last4) < 4 or not (last4.isascii() and last4.isdigit()):
        raise SpeechValueError("masked: needs a number whose last 4 characters are digits")
    return last4


def _name_keys(kind: str, value: object, lang: str) -> list[str]:
    if kind == "surname":
        return [f"surname/{names.surname(value).slug}"]
    if kind == "title":
        t = names.title(value)
        return [f"title/{t.slug}"] if t else []
    keys = [
        f"region/{p.slug}" if p in names.PROVINCES else f"city/{p.slug}"
        for p in names.region(value)
    ]
    # Chinese goes from large to small (广东广州), English from small to large (Guangzhou).
    return keys[::-1] if lang == "en" else keys


def speak(kind: str, value: object, lang: str) -> list[str]:
    """Vocabulary keys that say `value` as `kind` in `lang` (see the module docstring)."""
    if lang not in VOCABULARY:
        raise SpeechValueError(f"no speech rules for language {lang!r}")
    yue = lang == "yue"
    en = lang == "en"
    sandhi = _cmn_tone_sandhi if lang == "cmn" else list
    if kind == "money":
        return _en_money(*_money(value)) if en else sandhi(_zh_money(*_money(value), yue))
    if kind == "number":
        n = _integer(value, "number")
        return en_integer(n) if en else sandhi(zh_integer(n, yue=yue, count=True))
    if kind == "date":
        return _en_date(_date(value)) if en else _zh_date(_date(value), yue)
    if kind == "time":
        return _en_time(_time(value)) if en else sandhi(_zh_time(_time(value), yue))
    if kind == "ordinal":
        n = _ordinal(value)
        return en_ordinal(n) if en else ["word/ordinal"] + zh_integer(n, yue=yue)
    if kind == "digits":
        text = _digit_string(value, "digits")
        return [f"num/{c}" for c in text] if en else _zh_digits(text, yue)
    if kind == "masked":
        last4 = _masked(value)
        return ["word/ending"] + ([f"num/{c}" for c in last4] if en else _zh_digits(last4, yue))
    if kind in ("surname", "title", "region"):
        return _name_keys(kind, value, lang)
    raise SpeechValueError(f"unknown say kind {kind!r} (known: {', '.join(sorted(KINDS))})")


# English names of places that are English words, not pinyin: the English voice says them.
_ENGLISH_PLACE_NAMES = frozenset({"hong_kong", "macau", "tibet", "inner_mongolia", "taiwan"})
_ENGLISH_SYNTH_TEXT = {"title/mr": "Mister", "title/ms": "Miz"}
# The synthesizer always says 一 as yī: a character with the wanted tone stands in for it.
_MANDARIN_SYNTH_TEXT = {"num/1_tone4": "意", "num/1_tone2": "移"}


def synthesis_source(lang: str, key: str) -> tuple[str, str]:
    """(voice language, text) that `prompts build` synthesizes for a word sound.

    English transcripts show pinyin ("Xu", "Xiamen"), but the English voice mangles pinyin
    ("zoo", "zai-amen"), so Chinese names in English prompts are said by the Mandarin voice.
    """
    text = VOCABULARY[lang][key]
    if lang == "cmn":
        return lang, _MANDARIN_SYNTH_TEXT.get(key, text)
    if lang != "en":
        return lang, text
    if key in _ENGLISH_SYNTH_TEXT:
        return "en", _ENGLISH_SYNTH_TEXT[key]
    group, _, slug = key.partition("/")
    if group == "surname" or (group in ("region", "city") and slug not in _ENGLISH_PLACE_NAMES):
        return "cmn", VOCABULARY["cmn"][key]
    return "en", text


def text_of(keys: Iterable[str], lang: str) -> list[str]:
    vocab = VOCABULARY[lang]
    return [vocab[k] for k in keys]
