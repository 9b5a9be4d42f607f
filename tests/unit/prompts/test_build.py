"""`prompts build` with the real espeak-ng and sox: format, idempotence, recordings, changes.

These tests run the real tools (installed by `make`); a missing tool fails them loudly.
"""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import pytest

from ivr_engine import cli
from ivr_engine.prompts import PromptBuildError, PromptCatalogue, SoundItem
from ivr_engine.prompts.build import MANIFEST, PromptBuilder

CATALOGUE = """\
welcome:
  cmn: 您好，欢迎致电。
  yue: 你好，歡迎致電。
  en: Hello and welcome.
balance:
  cmn: "您的余额为{balance:money}。"
  yue: "你嘅結餘係{balance:money}。"
  en: "Your balance is {balance:money}."
"""
WORDS = {"cmn/num/5", "yue/num/5", "en/num/5", "cmn/word/yuan"}


def small_items(cat: PromptCatalogue) -> list[SoundItem]:
    """The prompt fragments plus a few words: the whole vocabulary takes too long per test."""
    return [i for i in cat.sound_items() if i.file.count("/") == 1 or i.file in WORDS]


def make(tmp_path: Path, text: str = CATALOGUE) -> PromptCatalogue:
    (tmp_path / "catalogue.yaml").write_text(text, encoding="utf-8")
    return PromptCatalogue.load(tmp_path)


async def build(cat: PromptCatalogue, **kwargs: bool) -> object:
    return await PromptBuilder(cat, jobs=2).build(items=small_items(cat), **kwargs)


def wav_format(path: Path) -> tuple[int, int, int, float]:
    with wave.open(str(path)) as w:
        return w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes() / 8000


def write_tone(path: Path, *, rate: int, channels: int, seconds: float, freq: float) -> None:
    """A "studio recording": a sine tone in any rate and channel count (16-bit)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = bytearray()
    for i in range(int(rate * seconds)):
        sample = int(8000 * math.sin(2 * math.pi * freq * i / rate))
        frames += struct.pack("<h", sample) * channels
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in root.rglob("*.wav")
    }


async def test_build_makes_8khz_mono_16bit_files_and_second_build_does_nothing(
    tmp_path: Path,
) -> None:
    cat = make(tmp_path)
    items = small_items(cat)
    report = await build(cat)
    assert sorted(report.synthesized) == sorted(i.file for i in items)  # type: ignore[attr-defined]
    root = cat.sound_root()
    for item in items:
        rate, channels, width, seconds = wav_format(root / f"{item.file}.wav")
        assert (rate, channels, width) == (8000, 1, 2), item.file
        assert 0.1 < seconds < 10, item.file
    # every sound a render names is there
    for u in cat.render("balance", ["yue"], {"balance": 5}):
        if u.file.count("/") == 1 or u.file in WORDS:
            assert (root / f"{u.file}.wav").is_file()
    before = snapshot(root)
    again = await build(cat)
    assert again.synthesized == [] and again.converted == []  # type: ignore[attr-defined]
    assert again.up_to_date == len(items)  # type: ignore[attr-defined]
    assert snapshot(root) == before
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]


async def test_changed_text_resynthesizes_only_that_file(tmp_path: Path) -> None:
    cat = make(tmp_path)
    await build(cat)
    before = snapshot(cat.sound_root())
    changed = make(tmp_path, CATALOGUE.replace("Hello and welcome.", "Good day, welcome."))
    report = await build(changed)
    assert report.synthesized == ["en/welcome"]  # type: ignore[attr-defined]
    after = snapshot(cat.sound_root())
    assert after["en/welcome.wav"] != before["en/welcome.wav"]
    del after["en/welcome.wav"], before["en/welcome.wav"]
    assert after == before


async def test_recording_takes_precedence_and_is_never_overwritten(tmp_path: Path) -> None:
    cat = make(tmp_path)
    recorded = tmp_path / "recorded" / "cmn" / "welcome.wav"
    write_tone(recorded, rate=44100, channels=2, seconds=1.5, freq=440)
    original = recorded.read_bytes()
    original_mtime = recorded.stat().st_mtime_ns
    report = await build(cat)
    assert report.converted == ["cmn/welcome"]  # type: ignore[attr-defined]
    assert "cmn/welcome" not in report.synthesized  # type: ignore[attr-defined]
    assert report.recorded == 1  # type: ignore[attr-defined]
    rate, channels, width, seconds = wav_format(cat.sound_root() / "cmn/welcome.wav")
    assert (rate, channels, width) == (8000, 1, 2)
    assert seconds == pytest.approx(1.5, abs=0.01)  # the recording, not the synthesizer
    forced = await build(cat, force_synth=True)
    assert "cmn/welcome" not in forced.synthesized  # type: ignore[attr-defined]
    assert forced.converted == []  # type: ignore[attr-defined]
    assert len(forced.synthesized) == len(small_items(cat)) - 1  # type: ignore[attr-defined]
    assert recorded.read_bytes() == original
    assert recorded.stat().st_mtime_ns == original_mtime
    # replacing the recording converts it again; removing it goes back to synthesis
    write_tone(recorded, rate=16000, channels=1, seconds=0.7, freq=300)
    again = await build(cat)
    assert again.converted == ["cmn/welcome"]  # type: ignore[attr-defined]
    assert wav_format(cat.sound_root() / "cmn/welcome.wav")[3] == pytest.approx(0.7, abs=0.01)
    recorded.unlink()
    last = await build(cat)
    assert last.synthesized == ["cmn/welcome"]  # type: ignore[attr-defined]


async def test_deleted_output_is_rebuilt_and_corrupt_manifest_rebuilds(tmp_path: Path) -> None:
    cat = make(tmp_path)
    await build(cat)
    (cat.sound_root() / "yue/welcome.wav").unlink()
    report = await build(cat)
    assert report.synthesized == ["yue/welcome"]  # type: ignore[attr-defined]
    (cat.sound_root() / MANIFEST).write_text("{not json", encoding="utf-8")
    report = await build(cat)
    assert len(report.synthesized) == len(small_items(cat))  # type: ignore[attr-defined]


async def test_missing_tool_fails_loudly(tmp_path: Path) -> None:
    cat = make(tmp_path)
    builder = PromptBuilder(cat, espeak="no-such-espeak-ng-binary")
    with pytest.raises(PromptBuildError, match="no-such-espeak-ng-binary not found"):
        await builder.build(items=small_items(cat))


async def test_failing_synthesis_is_reported_per_file(tmp_path: Path) -> None:
    cat = make(tmp_path)
    fake = tmp_path / "fake-espeak"
    fake.write_text("#!/bin/sh\necho 'voice broken' >&2\nexit 3\n")
    fake.chmod(0o755)
    builder = PromptBuilder(cat, espeak=str(fake))
    with pytest.raises(PromptBuildError, match=r"failed to build: .*exited with 3: voice broken"):
        await builder.build(items=small_items(cat))
    assert not list(cat.sound_root().rglob("*.wav"))


def test_cli_check_say_render_and_unknown_recording(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make(tmp_path, CATALOGUE + "gap:\n  cmn: 只有普通话。\n")
    assert cli.main(["prompts", "check", "--dir", str(tmp_path)]) == 1
    assert capsys.readouterr().out.strip() == "gap: missing yue, en"
    assert cli.main(["prompts", "say", "money", "1234.50", "--lang", "yue",
                     "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "一千兩百三十四元五角"
    assert "  yue/word/thousand\t千" in out
    assert cli.main(["prompts", "say", "masked", "6222021234567890", "--lang", "en",
                     "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "ending in seven eight nine zero"
    assert "6222" not in out
    assert cli.main(["prompts", "render", "balance", "--lang", "yue", "--var", "balance=2",
                     "--dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "你嘅結餘係兩元"
    assert cli.main(["prompts", "say", "number", "-1", "--dir", str(tmp_path)]) == 1
    assert "negative" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_full_build_of_the_real_catalogue_is_complete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole catalogue and vocabulary, through the command; then `check --audio` passes."""
    real = Path(__file__).resolve().parents[3] / "prompts" / "catalogue.yaml"
    (tmp_path / "catalogue.yaml").write_bytes(real.read_bytes())
    write_tone(tmp_path / "recorded/en/not_a_prompt.wav", rate=8000, channels=1, seconds=0.2,
               freq=300)
    assert cli.main(["prompts", "check", "--audio", "--dir", str(tmp_path)]) == 1
    capsys.readouterr()
    assert cli.main(["prompts", "build", "--dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    total = len(PromptCatalogue.load(tmp_path).sound_items())
    assert f"{total} synthesized, 0 converted from recordings, 0 up to date" in captured.out
    assert "recorded/en/not_a_prompt.wav matches no sound" in captured.err
    assert cli.main(["prompts", "build", "--dir", str(tmp_path)]) == 0
    assert f"0 synthesized, 0 converted from recordings, {total} up to date" in (
        capsys.readouterr().out
    )
    assert cli.main(["prompts", "check", "--audio", "--dir", str(tmp_path)]) == 0
    # a prompt removed from the catalogue: its sounds are stale, --prune removes only them
    text = (tmp_path / "catalogue.yaml").read_text(encoding="utf-8")
    start = text.index("\napology_wait:")
    end = text.index("\n\n", start + 1)
    (tmp_path / "catalogue.yaml").write_text(text[:start] + text[end:], encoding="utf-8")
    root = tmp_path / "sounds"
    before = snapshot(root)
    assert cli.main(["prompts", "build", "--dir", str(tmp_path)]) == 0
    assert "3 stale left" in capsys.readouterr().out
    assert snapshot(root) == before
    assert cli.main(["prompts", "build", "--prune", "--dir", str(tmp_path)]) == 0
    assert "3 stale removed" in capsys.readouterr().out
    after = snapshot(root)
    assert set(before) - set(after) == {f"{lang}/apology_wait.wav" for lang in ("cmn", "yue", "en")}
    assert all(after[name] == before[name] for name in after)


async def test_prune_refuses_a_partial_item_list(tmp_path: Path) -> None:
    cat = make(tmp_path)
    with pytest.raises(PromptBuildError, match="prune needs the whole catalogue"):
        await PromptBuilder(cat).build(items=small_items(cat), prune=True)


async def test_unwritable_sound_directory_is_a_build_error(tmp_path: Path) -> None:
    cat = make(tmp_path)
    (tmp_path / "sounds").write_text("a file where the directory should be")
    with pytest.raises(PromptBuildError, match="cannot write"):
        await PromptBuilder(cat).build(items=small_items(cat))
