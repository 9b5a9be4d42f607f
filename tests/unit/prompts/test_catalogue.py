"""The catalogue: loading, errors with file:line, render with the fallback chain, placeholders."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivr_engine.errors import PromptError
from ivr_engine.prompts import (
    LANGUAGES,
    CatalogueError,
    PromptCatalogue,
    SpeechValueError,
    Utterance,
    language_chain,
)
from ivr_engine.prompts.speech import VOCABULARY

REPO_PROMPTS = Path(__file__).resolve().parents[3] / "prompts"

# A value for every placeholder name the real catalogue uses, by kind.
SAMPLES: dict[str, object] = {
    "number": 2, "ordinal": 3, "money": Decimal("1234.50"), "date": dt.date(2026, 11, 28),
    "time": "14:30", "digits": "13800138000", "masked": "6222021234567890", "surname": "Chen",
    "title": "mr", "region": "Guangzhou, Guangdong",
}


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "catalogue.yaml").write_text(text, encoding="utf-8")
    return tmp_path


@pytest.fixture(scope="module")
def real() -> PromptCatalogue:
    return PromptCatalogue.load(REPO_PROMPTS)


# --- the real catalogue ------------------------------------------------------------------------


HOTLINE_PROMPTS = {
    "welcome", "greeting_name", "greeting_name_region", "region_announce", "main_menu",
    "main_menu_short", "cantonese_welcome", "greeting_vip", "vip_line", "bill_statement",
    "repayment_guidance", "balance", "card_loss_confirm", "card_blocked", "card_activated",
    "limit_raise_submitted", "instalment_menu", "pin_entry", "pin_wrong", "pin_locked",
    "transfer_readback", "wealth_readback", "confirm_or_reenter", "operation_cancelled",
    "operation_done", "risk_desk_transfer", "retention_offer", "survey", "thanks",
    "no_input_1", "no_input_2", "no_input_3", "no_match_1", "no_match_2", "no_match_3",
    "please_hold", "queue_position", "queue_wait", "callback_offer", "callback_confirmed",
    "operator", "goodbye", "technical_difficulty", "after_hours",
}


def test_real_catalogue_has_the_hotline_prompts_in_every_language(real: PromptCatalogue) -> None:
    assert HOTLINE_PROMPTS <= real.ids()
    assert real.gaps() == {}
    assert real.languages == LANGUAGES == {"cmn", "yue", "en"}


def test_real_catalogue_placeholders(real: PromptCatalogue) -> None:
    assert real.placeholders("bill_statement") == {
        "amount": "money", "minimum": "money", "due": "date"
    }
    assert real.placeholders("transfer_readback") == {"amount": "money", "target": "masked"}
    assert real.placeholders("queue_position") == {"position": "ordinal"}
    assert real.placeholders("queue_wait") == {"minutes": "number"}
    assert real.placeholders("welcome") == {}


def test_every_real_prompt_renders_in_every_language_from_known_sounds(
    real: PromptCatalogue,
) -> None:
    buildable = {item.file for item in real.sound_items()}
    for pid in sorted(real.ids()):
        variables = {name: SAMPLES[kind] for name, kind in real.placeholders(pid).items()}
        for lang in ("cmn", "yue", "en"):
            utterances = real.render(pid, [lang], variables)
            assert utterances, pid
            for u in utterances:
                assert u.lang == lang
                assert u.file in buildable, (pid, u.file)
                assert u.text


def test_chinese_texts_use_the_right_script(real: PromptCatalogue) -> None:
    # A few characters that differ: simplified only in cmn, traditional only in yue.
    simplified, traditional = set("们这为务请时间话银户额设"), set("們這為務請時間話銀戶額設")
    for pid in real.ids():
        assert not set(real.text(pid, "cmn")) & (traditional - simplified), pid
        assert not set(real.text(pid, "yue")) & (simplified - traditional), pid
        assert real.text(pid, "en").isascii(), pid


def test_bill_statement_render(real: PromptCatalogue) -> None:
    variables = {"amount": Decimal("1234.50"), "minimum": "123.45", "due": dt.date(2026, 11, 28)}
    cmn = real.render("bill_statement", ["cmn"], variables)
    assert "".join(u.text for u in cmn) == (
        "您本期账单金额为一千二百三十四元五角，最低还款额为一百二十三元四角五分，"
        "到期还款日为二零二六年十一月二十八日"
    )
    assert cmn[0] == Utterance("cmn/bill_statement-1", "您本期账单金额为", "cmn")
    assert cmn[1] == Utterance("cmn/num/1_tone4", "一", "cmn")  # yì qiān
    yue = real.render("bill_statement", language_chain("yue"), variables)
    assert {u.lang for u in yue} == {"yue"}
    assert "".join(u.text for u in yue).endswith("二零二六年十一月二十八號")


def test_transfer_readback_is_masked(real: PromptCatalogue) -> None:
    account = "6222021234567890"
    for lang in ("cmn", "yue", "en"):
        utterances = real.render(
            "transfer_readback", [lang], {"amount": 500, "target": account}
        )
        transcript = " ".join(u.text for u in utterances) + " ".join(u.file for u in utterances)
        spoken = [u for u in utterances if "/num/" in u.file]
        # 500 is 五百 / five hundred (1 digit sound) + the last four digits of the account
        assert len(spoken) == 5, lang
        assert "62220212345" not in transcript


# --- fallback chain ----------------------------------------------------------------------------


@pytest.mark.parametrize(("preferred", "default", "chain"), [
    ("yue", "cmn", ("yue", "cmn", "en")), ("en", "cmn", ("en", "cmn")),
    ("cmn", "cmn", ("cmn", "en")), (None, "cmn", ("cmn", "en")), ("", "cmn", ("cmn", "en")),
    (None, "yue", ("yue", "cmn", "en")), ("zh-HK", "cmn", ("yue", "cmn", "en")),
    ("zh", "cmn", ("cmn", "en")), ("en-US", "cmn", ("en", "cmn")),
])
def test_language_chain(preferred: str | None, default: str, chain: tuple[str, ...]) -> None:
    assert language_chain(preferred, default) == chain


def test_language_chain_refuses_unknown() -> None:
    with pytest.raises(PromptError, match="unknown language 'fr'"):
        language_chain("fr")


def test_render_falls_back_along_the_chain(tmp_path: Path) -> None:
    cat = PromptCatalogue.load(write(tmp_path, """
only_cmn:
  cmn: 只有普通话。
cmn_en:
  cmn: 普通话。
  en: English.
"""))
    assert cat.render("only_cmn", ["yue", "cmn", "en"]) == [
        Utterance("cmn/only_cmn", "只有普通话。", "cmn")
    ]
    assert cat.render("cmn_en", ["yue", "en", "cmn"])[0].lang == "en"
    assert cat.has("cmn_en", "en") and not cat.has("cmn_en", "yue")
    assert not cat.has("nope", "cmn")
    with pytest.raises(PromptError, match="no text in any of yue"):
        cat.render("only_cmn", ["yue"])
    with pytest.raises(PromptError, match="unknown prompt id 'nope'"):
        cat.render("nope", ["cmn"])
    with pytest.raises(PromptError, match="has no 'yue' text"):
        cat.text("only_cmn", "yue")
    assert cat.gaps() == {"only_cmn": ("yue", "en"), "cmn_en": ("yue",)}


def test_render_variables(tmp_path: Path) -> None:
    cat = PromptCatalogue.load(write(tmp_path, """
pay:
  cmn: "请于{due:date}前还款{amount:money}。"
  en: "Please pay {amount:money} by {due:date}."
"""))
    assert cat.placeholders("pay") == {"due": "date", "amount": "money"}
    out = cat.render("pay", ["en"], {"amount": 2, "due": "2026-01-02", "unused": 1})
    assert [u.file for u in out][:3] == ["en/pay-1", "en/num/2", "en/word/yuan"]
    assert out[-1].file == "en/num/26"  # the closing "." is not a sound of its own
    with pytest.raises(PromptError, match="variable 'due' \\(date\\) was not given"):
        cat.render("pay", ["cmn"], {"amount": 2})
    with pytest.raises(SpeechValueError, match="prompt 'pay', \\{amount:money\\}: money: negative"):
        cat.render("pay", ["cmn"], {"amount": -2, "due": "2026-01-02"})


def test_say_uses_the_first_language() -> None:
    cat = PromptCatalogue({}, Path("."))
    assert cat.can_say("surname", "Chen") and cat.can_say("surname", "陳", "yue")
    assert not cat.can_say("surname", "Smithers", "en")
    assert not cat.can_say("money", -1)
    assert cat.say("number", 2, ["yue", "cmn"]) == [Utterance("yue/num/liang", "兩", "yue")]
    with pytest.raises(PromptError, match="empty"):
        cat.say("number", 2, [])


# --- catalogue errors --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "message"), [
    ("a:\n  cmn: x\na:\n  cmn: y\n",
     r"catalogue.yaml:3:1: duplicate prompt id 'a' \(first at line 1\)"),
    ("a:\n  fr: bonjour\n", r":2:3: prompt 'a': unknown key 'fr'"),
    ("a:\n  cmn: x\n  cmn: y\n", r":3:3: prompt 'a': duplicate key 'cmn'"),
    ("Bad-Id:\n  cmn: x\n", r":1:1: prompt id 'Bad-Id' must match"),
    ("a:\n  cmn: 12\n", r":2:8: prompt 'a': cmn must be a string"),
    ("a:\n  cmn: '{amount}'\n", r"placeholder \{amount\} must be \{name:kind\}"),
    ("a:\n  cmn: '{amount:colour}'\n", r"unknown kind 'colour'"),
    ("a:\n  cmn: 'x {'\n", r"unbalanced brace"),
    ("a:\n  cmn: '{n:number}'\n  en: 'x'\n", r":3:7: prompt 'a': en placeholders \{\} differ"),
    ("a:\n  cmn: '{n:number}{n:money}'\n", r"used with two kinds"),
    ("a: [1, 2]\n", r":1:4: prompt 'a': expected a mapping"),
    ("- a\n", r":1:1: the catalogue must be a mapping"),
    ("a:\n  note: only a note\n", r"prompt 'a' has no text in any language"),
    ("a:\n  cmn: ''\n", r"prompt 'a': cmn is empty"),
    ("a: {cmn: x\n", r"YAML syntax"),
])
def test_catalogue_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CatalogueError, match=message) as info:
        PromptCatalogue.load(write(tmp_path, text))
    assert str(tmp_path / "catalogue.yaml") in str(info.value)


def test_missing_catalogue(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="cannot read"):
        PromptCatalogue.load(tmp_path)


def test_sound_items_cover_fragments_and_every_word(tmp_path: Path) -> None:
    text = "a:\n  cmn: '你好{n:number}位。'\n  en: 'Hi {n:number}.'\n"
    cat = PromptCatalogue.load(write(tmp_path, text))
    files = {i.file for i in cat.sound_items()}
    assert {"cmn/a-1", "cmn/a-2", "en/a-1"} <= files
    for lang, vocab in VOCABULARY.items():
        assert {f"{lang}/{key}" for key in vocab} <= files
    assert cat.sound_root() == tmp_path / "sounds"


def test_bench_measures_every_case_in_every_language(real: PromptCatalogue) -> None:
    from ivr_engine.prompts import bench

    rows = bench.run(real, seconds=0.001)
    assert {(r.prompt, r.lang) for r in rows} == {
        (pid, lang) for pid, _ in bench.CASES for lang in ("cmn", "yue", "en")
    }
    assert all(r.render_us > 0 and r.floor_us > 0 and r.utterances > 0 for r in rows)
    assert "bill_statement" in bench.report(rows)


_yaml_pieces = st.sampled_from([
    "a:", "  cmn: ", "  yue: ", "  en: ", "  note: ", "{n:number}", "{x:money}", "{", "}", "你好",
    "'", '"', "- ", "[", "]", "&a ", "*a", "!!str ", "!!int ", "? ", ": ", "\n", "  ", "b:",
    "\t", "#", "1", "null", "{n:kind}", "｛",
])


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_yaml_pieces, max_size=30).map("".join) | st.text(max_size=200))
def test_loader_fuzz_gives_a_catalogue_or_a_catalogue_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "catalogue.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        cat = PromptCatalogue.load(path)
    except CatalogueError:
        return
    for pid in cat.ids():
        assert cat.placeholders(pid) is not None
