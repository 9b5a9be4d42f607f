"""`ivr-engine prompts build`: every sound the catalogue can name, as Asterisk plays it.

Output: `<prompts>/sounds/<lang>/<name>.wav`, 8 kHz mono 16-bit signed PCM (Asterisk's
format_wav reads it as slin). Sources, per sound:
- a studio recording `<prompts>/recorded/<lang>/<name>.(wav|flac|ogg)`, converted with sox.
  Recordings take precedence over synthesis and are only ever read, never written;
- otherwise espeak-ng, then sox (resample, trim the synthesizer's silence, normalize, pad).

Incremental and idempotent: `sounds/.manifest.json` holds a digest per file (the recording's
bytes, or the text, voice and pipeline settings). A file is rebuilt only when its digest
changed or the file is gone; `force_synth` rebuilds every synthesized file (recordings keep
their digest). Files are written to a temporary name and renamed, so an interrupted build
leaves no half file. Jobs run in parallel, one subprocess pipeline per CPU by default.

Voices: espeak-ng 1.51's `cmn` voice reads Chinese characters as pinyin spelled out in
English ("yi one qian one"), so Mandarin uses `cmn-latn-pinyin`, which reads characters
correctly; Cantonese uses `yue`; English `en-us`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ivr_engine.prompts.catalogue import PromptCatalogue, SoundItem
from ivr_engine.prompts.errors import PromptBuildError

log = logging.getLogger(__name__)

VOICES: dict[str, str] = {"cmn": "cmn-latn-pinyin", "yue": "yue", "en": "en-us"}
SPEED_WPM: dict[str, int] = {"cmn": 150, "yue": 150, "en": 160}
# Words of composed speech (一 千 二 百 ...) are played back to back: a little faster and with
# a shorter gap than sentences, so 1234.50 sounds like one amount rather than a list.
WORD_SPEEDUP_WPM = 20
RECORDED_EXTENSIONS = (".wav", ".flac", ".ogg")
MANIFEST = ".manifest.json"
# Bump when the synthesis pipeline changes: every synthesized file is then rebuilt once.
PIPELINE_VERSION = "2"
# 8 kHz mono 16-bit signed PCM: what format_wav plays without transcoding surprises.
_OUT_FORMAT = ["-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer"]
# Trim the synthesizer's leading and trailing silence, normalize, leave a short gap after.
_TRIM = ["silence", "1", "0.02", "0.5%", "reverse", "silence", "1", "0.02", "0.5%", "reverse",
         "norm", "-3"]
_SENTENCE_PAD = ["pad", "0.02", "0.10"]
_WORD_PAD = ["pad", "0.01", "0.03"]


def synth_settings(item: SoundItem) -> tuple[str, str, int, list[str]]:
    """(voice language, text, words per minute, sox effects) for a synthesized sound."""
    voice, text = item.spoken
    speed = SPEED_WPM[voice] + (WORD_SPEEDUP_WPM if item.word else 0)
    return voice, text, speed, _TRIM + (_WORD_PAD if item.word else _SENTENCE_PAD)


@dataclass
class BuildReport:
    synthesized: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)  # rebuilt from a recording
    up_to_date: int = 0
    recorded: int = 0  # sounds that come from a recording (converted now or up to date)
    unknown_recordings: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # built files the catalogue no longer names
    pruned: bool = False
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        stale = f", {len(self.stale)} stale {'removed' if self.pruned else 'left'}"
        return (
            f"{len(self.synthesized)} synthesized, {len(self.converted)} converted from "
            f"recordings, {self.up_to_date} up to date, {self.recorded} recorded kept"
            f"{stale if self.stale else ''}, {len(self.failed)} failed"
        )


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return "recorded:" + h.hexdigest()


def synth_digest(item: SoundItem) -> str:
    voice, text, speed, effects = synth_settings(item)
    return "synth:" + _digest(PIPELINE_VERSION, VOICES[voice], str(speed), " ".join(effects), text)


def find_recording(recorded_root: Path, file: str) -> Path | None:
    for ext in RECORDED_EXTENSIONS:
        candidate = recorded_root / f"{file}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _load_manifest(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("prompt manifest %s unreadable (%s): rebuilding everything", path, exc)
        return {}
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        log.warning("prompt manifest %s malformed: rebuilding everything", path)
        return {}
    return data


def _write_manifest(path: Path, manifest: dict[str, str]) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=0, sort_keys=True, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)


async def _run(argv: Sequence[str], *, stdin: bytes | None, seconds: float) -> None:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise PromptBuildError(f"cannot run {argv[0]}: {exc.strerror}") from None
    try:
        async with asyncio.timeout(seconds):
            _, err = await proc.communicate(stdin)
    except TimeoutError:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise PromptBuildError(f"{argv[0]} took longer than {seconds:g}s") from None
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        detail = err.decode("utf-8", "replace").strip()[-300:]
        raise PromptBuildError(f"{argv[0]} exited with {proc.returncode}: {detail}")


class PromptBuilder:
    """Builds the sounds of one catalogue. `build()` is safe to run again at any time."""

    def __init__(
        self,
        catalogue: PromptCatalogue,
        *,
        espeak: str = "espeak-ng",
        sox: str = "sox",
        jobs: int | None = None,
        timeout: float = 30.0,
    ):
        self.catalogue = catalogue
        self.root = catalogue.sound_root()
        self.recorded_root = catalogue.recorded_root()
        self.espeak = espeak
        self.sox = sox
        self.jobs = max(1, jobs or os.cpu_count() or 2)
        self.timeout = timeout

    def _tool(self, name: str) -> str:
        path = shutil.which(name)
        if path is None:
            raise PromptBuildError(
                f"{name} not found on PATH: install it (apt-get install espeak-ng sox, "
                "or `make system`)"
            )
        return path

    async def build(
        self,
        *,
        force_synth: bool = False,
        prune: bool = False,
        items: Sequence[SoundItem] | None = None,
    ) -> BuildReport:
        """Build what is missing or changed; raise PromptBuildError if any sound failed."""
        try:
            return await self._build(force_synth=force_synth, prune=prune, items=items)
        except OSError as exc:  # the sound directory itself: permissions, disk full
            where = exc.filename or self.root
            raise PromptBuildError(f"cannot write {where}: {exc.strerror}") from None

    async def _build(
        self, *, force_synth: bool, prune: bool, items: Sequence[SoundItem] | None
    ) -> BuildReport:
        if prune and items is not None:
            raise PromptBuildError("prune needs the whole catalogue: do not pass items with it")
        items = list(self.catalogue.sound_items() if items is None else items)
        report = BuildReport(pruned=prune)
        self.root.mkdir(parents=True, exist_ok=True)
        manifest_path = self.root / MANIFEST
        manifest = _load_manifest(manifest_path)
        todo: list[tuple[SoundItem, Path | None, str]] = []
        for item in items:
            recording = find_recording(self.recorded_root, item.file)
            digest = _file_digest(recording) if recording else synth_digest(item)
            if recording:
                report.recorded += 1
            out = self.root / f"{item.file}.wav"
            fresh = manifest.get(item.file) == digest and out.is_file()
            if fresh and not (force_synth and recording is None):
                report.up_to_date += 1
            else:
                todo.append((item, recording, digest))
        known = {item.file for item in items}
        report.unknown_recordings = self._unknown_recordings(known)
        report.stale = self._stale(known)
        if todo:
            espeak = self._tool(self.espeak) if any(r is None for _, r, _ in todo) else ""
            sox = self._tool(self.sox)
            # One private scratch directory per build: two builds at once never share files.
            tmp_dir = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
            limit = asyncio.Semaphore(self.jobs)
            try:
                async with asyncio.TaskGroup() as tg:
                    for item, recording, digest in todo:
                        tg.create_task(
                            self._one(item, recording, digest, espeak, sox, tmp_dir, limit,
                                      manifest, report),
                            name=f"prompts-build:{item.file}",
                        )
            finally:
                _write_manifest(manifest_path, manifest)
                shutil.rmtree(tmp_dir, ignore_errors=True)
        if prune and report.stale:
            for file in report.stale:
                (self.root / f"{file}.wav").unlink(missing_ok=True)
                manifest.pop(file, None)
            _write_manifest(manifest_path, manifest)
        report.synthesized.sort()
        report.converted.sort()
        if report.failed:
            first = "; ".join(f"{f}: {why}" for f, why in report.failed[:3])
            raise PromptBuildError(f"{len(report.failed)} sound(s) failed to build: {first}")
        return report

    async def _one(
        self,
        item: SoundItem,
        recording: Path | None,
        digest: str,
        espeak: str,
        sox: str,
        tmp_dir: Path,
        limit: asyncio.Semaphore,
        manifest: dict[str, str],
        report: BuildReport,
    ) -> None:
        out = self.root / f"{item.file}.wav"
        token = uuid.uuid4().hex
        raw = tmp_dir / f"{token}.raw.wav"
        tmp_out = tmp_dir / f"{token}.wav"
        async with limit:
            try:
                if recording is None:
                    voice, text, speed, effects = synth_settings(item)
                    await _run(
                        [espeak, "-v", VOICES[voice], "-s", str(speed), "-w", str(raw), "--stdin"],
                        stdin=text.encode("utf-8"), seconds=self.timeout,
                    )
                    await _run([sox, str(raw), *_OUT_FORMAT, str(tmp_out), *effects],
                               stdin=None, seconds=self.timeout)
                else:
                    await _run([sox, "-G", str(recording), *_OUT_FORMAT, str(tmp_out)],
                               stdin=None, seconds=self.timeout)
                try:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp_out, out)
                except OSError as exc:
                    raise PromptBuildError(f"cannot write {out}: {exc.strerror}") from None
            except PromptBuildError as exc:
                log.debug("prompt sound %s failed: %s", item.file, exc)
                report.failed.append((item.file, str(exc)))
                manifest.pop(item.file, None)
                return
            finally:
                raw.unlink(missing_ok=True)
                tmp_out.unlink(missing_ok=True)
        manifest[item.file] = digest
        (report.synthesized if recording is None else report.converted).append(item.file)

    def _unknown_recordings(self, known: set[str]) -> list[str]:
        if not self.recorded_root.is_dir():
            return []
        out = []
        for path in sorted(self.recorded_root.rglob("*")):
            if path.suffix in RECORDED_EXTENSIONS and path.is_file():
                name = path.relative_to(self.recorded_root).with_suffix("").as_posix()
                if name not in known:
                    out.append(path.relative_to(self.recorded_root).as_posix())
        return out

    def _stale(self, known: set[str]) -> list[str]:
        out = []
        for path in sorted(self.root.rglob("*.wav")):
            rel = path.relative_to(self.root)
            if rel.parts[0].startswith("."):
                continue
            name = rel.with_suffix("").as_posix()
            if name not in known:
                out.append(name)
        return out
