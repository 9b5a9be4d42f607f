"""Numbers, money, dates, times, digits and masked reads in cmn, yue and en."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr_engine.errors import PromptError
from ivr_engine.prompts import PromptCatalogue, SpeechValueError
from ivr_engine.prompts.speech import MAX_INTEGER, VOCABULARY, speak


def words(kind: str, value: object, lang: str) -> list[str]:
    return [VOCABULARY[lang][key] for key in speak(kind, value, lang)]


def zh(kind: str, value: object, lang: str = "cmn") -> str:
    return "".join(words(kind, value, lang))


def en(kind: str, value: object) -> str:
    return " ".join(words(kind, value, "en"))


# --- reference parsers: an independent way back from speech to the number ---------------------

_ZH_DIGITS = {c: i for i, c in enumerate("零一二三四五六七八九")} | {"两": 2, "兩": 2, "幺": 1}
_ZH_UNITS = {"十": 10, "百": 100, "千": 1000}


def parse_zh(text: str) -> int:
    total = section = number = 0
    for ch in text:
        if ch in _ZH_DIGITS:
            number = _ZH_DIGITS[ch]
        elif ch in _ZH_UNITS:
            section += (number or (1 if ch == "十" else 0)) * _ZH_UNITS[ch]
            number = 0
        elif ch in "万萬":
            total += (section + number) * 10**4
            section = number = 0
        elif ch in "亿億":
            total = (total + section + number) * 10**8
            section = number = 0
        else:
            raise ValueError(ch)
    return total + section + number


_EN_SMALL = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
_EN_TENS = {w: 10 * (i + 2) for i, w in enumerate(
    "twenty thirty forty fifty sixty seventy eighty ninety".split())}
_EN_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9}


def parse_en(text: str) -> int:
    total = current = 0
    for word in text.replace("-", " ").split():
        if word in _EN_SMALL:
            current += _EN_SMALL[word]
        elif word in _EN_TENS:
            current += _EN_TENS[word]
        elif word == "hundred":
            current *= 100
        elif word in _EN_SCALES:
            total += current * _EN_SCALES[word]
            current = 0
        else:
            raise ValueError(word)
    return total + current


# --- Mandarin ----------------------------------------------------------------------------------

CMN_NUMBERS = [
    (0, "零"), (1, "一"), (2, "两"), (3, "三"), (10, "十"), (11, "十一"), (12, "十二"),
    (20, "二十"), (22, "二十二"), (99, "九十九"), (100, "一百"), (101, "一百零一"),
    (110, "一百一十"), (111, "一百一十一"), (200, "两百"), (250, "两百五十"), (1000, "一千"),
    (1005, "一千零五"), (1010, "一千零一十"), (1050, "一千零五十"), (1200, "一千二百"),
    (1234, "一千二百三十四"), (2000, "两千"), (2222, "两千二百二十二"), (10000, "一万"),
    (10005, "一万零五"), (10500, "一万零五百"), (12000, "一万两千"), (20000, "两万"),
    (100000, "十万"), (100010, "十万零一十"), (110000, "十一万"), (220000, "二十二万"),
    (1000000, "一百万"), (2000000, "两百万"), (10000000, "一千万"), (100000000, "一亿"),
    (100000005, "一亿零五"), (100001000, "一亿零一千"), (100010000, "一亿零一万"),
    (200000000, "两亿"), (1200000000, "十二亿"), (100000000000, "一千亿"),
    (999999999999, "九千九百九十九亿九千九百九十九万九千九百九十九"),
]


@pytest.mark.parametrize(("n", "expected"), CMN_NUMBERS)
def test_cmn_number(n: int, expected: str) -> None:
    assert zh("number", n) == expected


CMN_MONEY = [
    ("1234.50", "一千二百三十四元五角"), ("1234.05", "一千二百三十四元零五分"),
    ("1234.55", "一千二百三十四元五角五分"), ("1234", "一千二百三十四元"), ("0", "零元"),
    ("0.05", "五分"), ("0.5", "五角"), ("0.50", "五角"), ("2", "两元"), ("0.02", "两分"),
    ("10", "十元"), ("100000", "十万元"), ("100000000", "一亿元"), ("1005.10", "一千零五元一角"),
    (Decimal("88.8"), "八十八元八角"), (3, "三元"), (12.3, "十二元三角"),
]


@pytest.mark.parametrize(("amount", "expected"), CMN_MONEY)
def test_cmn_money(amount: object, expected: str) -> None:
    assert zh("money", amount) == expected


def test_cmn_date_time_digits() -> None:
    assert zh("date", dt.date(2026, 11, 28)) == "二零二六年十一月二十八日"
    assert zh("date", "2026-02-02") == "二零二六年二月二日"
    assert zh("date", dt.datetime(2030, 1, 10, 9, 0)) == "二零三零年一月十日"
    assert zh("time", "14:30") == "十四点三十分"
    assert zh("time", dt.time(14, 5)) == "十四点零五分"
    assert zh("time", "02:00") == "两点整"
    assert zh("time", "0:00") == "零点整"
    assert zh("digits", "13800138000") == "幺三八零零幺三八零零零"
    assert zh("digits", "138-0013 8000") == "幺三八零零幺三八零零零"
    assert zh("number", 3.0) == "三"  # flow expressions of type num are floats
    assert zh("number", Decimal("20")) == "二十"
    assert zh("ordinal", 2) == "第二"
    assert zh("ordinal", 11) == "第十一"
    assert zh("masked", "6222021234567890") == "尾号七八九零"


# --- Cantonese ---------------------------------------------------------------------------------

YUE_NUMBERS = [
    (0, "零"), (2, "兩"), (10, "十"), (12, "十二"), (20, "二十"), (22, "二十二"),
    (110, "一百一十"), (200, "兩百"), (1005, "一千零五"), (1200, "一千兩百"), (2000, "兩千"),
    (10000, "一萬"), (20000, "兩萬"), (100000, "十萬"), (220000, "二十二萬"),
    (100000000, "一億"), (200000000, "兩億"), (100000005, "一億零五"),
]


@pytest.mark.parametrize(("n", "expected"), YUE_NUMBERS)
def test_yue_number(n: int, expected: str) -> None:
    assert zh("number", n, "yue") == expected


@pytest.mark.parametrize(("amount", "expected"), [
    ("1234.50", "一千兩百三十四元五角"), ("0.05", "五分"), ("2", "兩元"), ("0", "零元"),
    ("100000", "十萬元"), ("1234.05", "一千兩百三十四元零五分"),
])
def test_yue_money(amount: str, expected: str) -> None:
    assert zh("money", amount, "yue") == expected


def test_yue_date_time_digits() -> None:
    assert zh("date", "2026-11-28", "yue") == "二零二六年十一月二十八號"
    assert zh("time", "14:30", "yue") == "十四點三十分"
    assert zh("time", "02:00", "yue") == "兩點整"
    assert zh("digits", "13800138000", "yue") == "一三八零零一三八零零零"
    assert zh("masked", "6222 0212 3456 7890", "yue") == "尾號七八九零"


# --- English -----------------------------------------------------------------------------------

EN_NUMBERS = [
    (0, "zero"), (7, "seven"), (10, "ten"), (12, "twelve"), (20, "twenty"),
    (34, "thirty-four"), (100, "one hundred"), (110, "one hundred ten"),
    (1005, "one thousand five"), (1234, "one thousand two hundred thirty-four"),
    (100000, "one hundred thousand"), (100000000, "one hundred million"),
    (1000000001, "one billion one"),
    (999999999999, "nine hundred ninety-nine billion nine hundred ninety-nine million "
                   "nine hundred ninety-nine thousand nine hundred ninety-nine"),
]


@pytest.mark.parametrize(("n", "expected"), EN_NUMBERS)
def test_en_number(n: int, expected: str) -> None:
    assert en("number", n) == expected


@pytest.mark.parametrize(("amount", "expected"), [
    ("1234.50", "one thousand two hundred thirty-four yuan and fifty fen"),
    ("0.05", "five fen"), ("0", "zero yuan"), ("1", "one yuan"), ("1.01", "one yuan and one fen"),
    ("100000", "one hundred thousand yuan"),
])
def test_en_money(amount: str, expected: str) -> None:
    assert en("money", amount) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("2026-11-28", "November twenty-eighth twenty twenty-six"),
    ("2005-02-01", "February first two thousand five"),
    ("2000-12-31", "December thirty-first two thousand"),
    ("1999-07-04", "July fourth nineteen ninety-nine"),
    ("1905-03-22", "March twenty-second nineteen oh five"),
    ("1900-01-01", "January first nineteen hundred"),
])
def test_en_date(value: str, expected: str) -> None:
    assert en("date", value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("14:30", "two thirty p.m."), ("14:05", "two oh five p.m."), ("14:00", "two p.m."),
    ("00:15", "twelve fifteen a.m."), ("12:00", "twelve p.m."), ("09:45", "nine forty-five a.m."),
])
def test_en_time(value: str, expected: str) -> None:
    assert en("time", value) == expected


@pytest.mark.parametrize(("n", "expected"), [
    (1, "first"), (2, "second"), (22, "twenty-second"), (100, "one hundredth"),
    (101, "one hundred first"), (2000, "two thousandth"), (1000000, "one millionth"),
])
def test_en_ordinal(n: int, expected: str) -> None:
    assert en("ordinal", n) == expected


def test_en_digits_and_masked() -> None:
    assert en("digits", "1200") == "one two zero zero"
    assert en("masked", "6222021234567890") == "ending in seven eight nine zero"


# --- names -------------------------------------------------------------------------------------


def test_names() -> None:
    assert zh("surname", "Chen") == "陈"
    assert zh("surname", "陳", "yue") == "陳"
    assert zh("surname", "Chan", "yue") == "陳"  # Hong Kong romanisation
    assert zh("surname", "许") == "许"  # characters pick the exact surname
    assert speak("surname", "许", "cmn") != speak("surname", "徐", "cmn")
    assert en("surname", "Wang") == "Wang"
    assert zh("title", "mr") + zh("title", "ms") == "先生女士"
    assert speak("title", "", "cmn") == []
    assert zh("region", "Guangzhou, Guangdong") == "广东广州"
    assert zh("region", "广东省广州市", "yue") == "廣東廣州"
    assert zh("region", "Beijing") == "北京"
    assert en("region", "Guangzhou, Guangdong") == "Guangzhou Guangdong"
    assert zh("region", "Hong Kong", "yue") == "香港"


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "value"), [
    ("number", -1), ("number", "-3"), ("number", MAX_INTEGER + 1), ("number", 10**20),
    ("number", 1.5), ("number", float("nan")), ("number", Decimal("NaN")), ("number", "12a"),
    ("number", True), ("number", None), ("number", Decimal("1E+999999999")), ("number", "١٢"),
    ("money", Decimal("1E+999999999")), ("money", "9" * 5000),
    ("money", "1.0000000000000000000000000001"), ("money", "0.001"),
    ("money", "-0.01"), ("money", -5), ("money", "1.005"), ("money", "abc"), ("money", "NaN"),
    ("money", Decimal("Infinity")), ("money", 10**12), ("money", [1]), ("money", False),
    ("ordinal", 0), ("date", "2026-13-01"), ("date", "1899-12-31"), ("date", 20261128),
    ("time", "24:00"), ("time", "12:60"), ("time", "noon"),
    ("digits", ""), ("digits", "12a4"), ("digits", "1" * 65), ("masked", "123"),
    ("masked", "1234567x"), ("surname", "Smithers"), ("surname", ""), ("title", "dr"),
    ("region", "Atlantis"), ("region", 42), ("colour", "red"),
])
@pytest.mark.parametrize("lang", ["cmn", "yue", "en"])
def test_refused(kind: str, value: object, lang: str) -> None:
    with pytest.raises(SpeechValueError):
        speak(kind, value, lang)


def test_refusals_never_echo_secret_digits() -> None:
    for kind, value in [("digits", "6222021234567890x"), ("masked", "62220212345678xx")]:
        with pytest.raises(SpeechValueError) as info:
            speak(kind, value, "cmn")
        assert "6222" not in str(info.value)
        assert "5678" not in str(info.value)


def test_speech_error_is_a_prompt_error() -> None:
    assert issubclass(SpeechValueError, PromptError)


# --- properties --------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=MAX_INTEGER))
def test_cmn_and_yue_round_trip(n: int) -> None:
    for lang in ("cmn", "yue"):
        text = zh("number", n, lang)
        assert parse_zh(text) == n
        assert "零零" not in text
        if n:
            assert not text.startswith("零")
            assert not text.endswith("零")
        # 两 only as a count of 2 or right before a unit, never in the tens or units place
        for i, ch in enumerate(text):
            if ch in "两兩":
                assert n == 2 or text[i + 1 : i + 2] in ("百", "千", "万", "萬", "亿", "億")


@given(st.integers(min_value=0, max_value=MAX_INTEGER))
def test_en_round_trip(n: int) -> None:
    assert parse_en(en("number", n)) == n


@given(st.integers(min_value=0, max_value=MAX_INTEGER), st.integers(min_value=0, max_value=99))
def test_money_round_trip(yuan: int, fen: int) -> None:
    amount = Decimal(yuan) + Decimal(fen) / 100
    text = zh("money", amount)
    jiao_part = text.split("元")[-1] if "元" in text else text
    spoken_fen = 0
    if "角" in jiao_part:
        spoken_fen += 10 * parse_zh(jiao_part.split("角")[0])
        jiao_part = jiao_part.split("角")[1]
    if "分" in jiao_part:
        spoken_fen += parse_zh(jiao_part.split("分")[0].lstrip("零"))
    spoken_yuan = parse_zh(text.split("元")[0]) if "元" in text else 0
    assert (spoken_yuan, spoken_fen) == (yuan, fen)


@settings(max_examples=200)
@given(
    st.text(alphabet="0123456789", min_size=4, max_size=24), st.sampled_from(["cmn", "yue", "en"])
)
def test_masked_never_says_more_than_the_last_four(number: str, lang: str) -> None:
    catalogue = PromptCatalogue({}, directory=Path("."))
    utterances = catalogue.say("masked", number, [lang])
    spoken_digits = [u for u in utterances if "/num/" in u.file]
    assert len(spoken_digits) == 4
    assert [u.file.rsplit("/", 1)[1] for u in spoken_digits] == [
        ("yao" if d == "1" and lang == "cmn" else d) for d in number[-4:]
    ]
    # nothing else in the utterances carries a digit of the number
    others = [u for u in utterances if "/num/" not in u.file]
    assert [u.file.split("/", 1)[1] for u in others] == ["word/ending"]


def test_chinese_names_in_english_are_synthesized_by_the_mandarin_voice() -> None:
    from ivr_engine.prompts.speech import synthesis_source

    assert synthesis_source("en", "surname/xu") == ("cmn", "徐")
    assert synthesis_source("en", "city/xiamen") == ("cmn", "厦门")
    assert synthesis_source("en", "region/hong_kong") == ("en", "Hong Kong")
    assert synthesis_source("en", "title/ms") == ("en", "Miz")  # "Ms." is read "em es"
    assert synthesis_source("en", "num/5") == ("en", "five")
    assert synthesis_source("yue", "surname/chen") == ("yue", "陳")
    assert VOCABULARY["en"]["surname/xu"] == "Xu"  # transcripts still show pinyin


@pytest.mark.parametrize(("kind", "value", "keys"), [
    ("money", "1", ["num/1_tone4", "word/yuan"]),  # yì yuán
    ("money", "11", ["word/ten", "num/1", "word/yuan"]),  # shí yī yuán
    ("money", "1.1", ["num/1_tone4", "word/yuan", "num/1_tone4", "word/jiao"]),
    ("money", "10001", ["num/1_tone2", "word/tenthousand", "num/0", "num/1", "word/yuan"]),
    ("number", 1000, ["num/1_tone4", "word/thousand"]),
    ("number", 110, ["num/1_tone4", "word/hundred", "num/1", "word/ten"]),
    ("number", 100000000, ["num/1_tone2", "word/hundredmillion"]),
    ("number", 1, ["num/1"]),
    ("time", "01:01", ["num/1_tone4", "word/hour", "num/0", "num/1", "word/minute"]),
    ("date", "2001-01-01", ["num/2", "num/0", "num/0", "num/1", "word/year", "num/1",
                            "word/month", "num/1", "word/day"]),
    ("ordinal", 1, ["word/ordinal", "num/1"]),
])
def test_mandarin_tone_sandhi_of_yi(kind: str, value: object, keys: list[str]) -> None:
    assert speak(kind, value, "cmn") == keys
    # the same number in Cantonese has no sandhi sounds
    assert not [k for k in speak(kind, value, "yue") if "tone" in k]


def test_sandhi_sounds_are_synthesized_from_a_stand_in_with_the_right_tone() -> None:
    from ivr_engine.prompts.speech import synthesis_source

    assert synthesis_source("cmn", "num/1_tone4") == ("cmn", "意")
    assert synthesis_source("cmn", "num/1_tone2") == ("cmn", "移")
    assert VOCABULARY["cmn"]["num/1_tone4"] == VOCABULARY["cmn"]["num/1_tone2"] == "一"
