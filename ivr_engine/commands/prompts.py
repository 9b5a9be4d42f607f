"""`ivr-engine prompts build|list|check|say|render`: the prompt catalogue and its audio."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path

from ivr_engine.prompts import KINDS, PromptCatalogue, Utterance, bench, language_chain
from ivr_engine.prompts.build import PromptBuilder
from ivr_engine.prompts.errors import PromptError


def _catalogue(args: argparse.Namespace) -> PromptCatalogue:
    directory = args.dir or args.settings.prompts.dir
    return PromptCatalogue.load(Path(directory))


def _print_utterances(utterances: list[Utterance], as_json: bool) -> None:
    if as_json:
        print(json.dumps([dataclasses.asdict(u) for u in utterances], ensure_ascii=False, indent=2))
        return
    sep = " " if utterances and utterances[0].lang == "en" else ""
    print(sep.join(u.text for u in utterances))
    for u in utterances:
        print(f"  {u.file}\t{u.text}")


def _build(args: argparse.Namespace) -> int:
    catalogue = _catalogue(args)
    builder = PromptBuilder(catalogue, jobs=args.jobs)
    report = asyncio.run(builder.build(force_synth=args.force_synth, prune=args.prune))
    for name in report.unknown_recordings:
        print(f"warning: recorded/{name} matches no sound of the catalogue", file=sys.stderr)
    if report.stale and not args.prune:
        print(f"note: {len(report.stale)} built file(s) no longer used; --prune removes them",
              file=sys.stderr)
    print(f"prompts: {report.summary()} -> {catalogue.sound_root()}")
    return 0


def _list(args: argparse.Namespace) -> int:
    catalogue = _catalogue(args)
    rows: list[dict[str, object]] = []
    for pid in sorted(catalogue.ids()):
        langs = [lang for lang in ("cmn", "yue", "en") if catalogue.has(pid, lang)]
        slots = catalogue.placeholders(pid)
        rows.append({"id": pid, "languages": langs, "placeholders": slots,
                     "note": catalogue.note(pid)})
        if not args.json:
            shown = " ".join(f"{{{k}:{v}}}" for k, v in slots.items())
            print(f"{pid:<28} {','.join(langs):<11} {shown}".rstrip())
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    return 0


def _check(args: argparse.Namespace) -> int:
    catalogue = _catalogue(args)
    problems = [
        f"{pid}: missing {', '.join(langs)}" for pid, langs in catalogue.gaps().items()
    ]
    if args.audio:
        root = catalogue.sound_root()
        missing = [
            i.file for i in catalogue.sound_items() if not (root / f"{i.file}.wav").is_file()
        ]
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            problems.append(
                f"{len(missing)} sound(s) not built (run `ivr-engine prompts build`): {shown}"
            )
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"prompts: {len(catalogue.ids())} prompts, every one in cmn, yue and en")
    return 0


def _say(args: argparse.Namespace) -> int:
    catalogue = _catalogue(args)
    _print_utterances(catalogue.say(args.kind, args.value, language_chain(args.lang)), args.json)
    return 0


def _render(args: argparse.Namespace) -> int:
    catalogue = _catalogue(args)
    variables: dict[str, object] = {}
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise PromptError(f"--var {item!r}: expected NAME=VALUE")
        variables[name] = value
    utterances = catalogue.render(args.prompt_id, language_chain(args.lang), variables)
    _print_utterances(utterances, args.json)
    return 0


def _bench(args: argparse.Namespace) -> int:
    rows = bench.run(_catalogue(args), seconds=args.seconds)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) | {"ratio": r.ratio} for r in rows], indent=2))
    else:
        print(bench.report(rows))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("prompts", help="prompt catalogue: build audio, list, check, say")
    cmds = parser.add_subparsers(dest="prompts_command", metavar="ACTION", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=help_text)
        p.add_argument("--dir", help="prompts directory (default: settings prompts.dir)")
        return p

    build = add("build", "synthesize every missing or changed sound (never touches recordings)")
    build.add_argument("--force-synth", action="store_true",
                       help="synthesize every non-recorded sound again")
    build.add_argument("--prune", action="store_true",
                       help="delete built sounds the catalogue no longer names")
    build.add_argument("--jobs", type=int, default=None, help="parallel jobs (default: CPUs)")
    build.set_defaults(func=_build)

    lst = add("list", "list prompt ids, languages and placeholders")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_list)

    check = add("check", "every prompt in every language (exit 1 listing the gaps)")
    check.add_argument("--audio", action="store_true", help="also require every sound built")
    check.set_defaults(func=_check)

    say = add("say", "speak a value: number, money, date, time, digits, masked ...")
    say.add_argument("kind", choices=sorted(KINDS))
    say.add_argument("value")
    say.add_argument("--lang", default="cmn", help="cmn, yue or en (default cmn)")
    say.add_argument("--json", action="store_true")
    say.set_defaults(func=_say)

    render = add("render", "render one prompt with variables")
    render.add_argument("prompt_id")
    render.add_argument("--lang", default="cmn", help="preferred language; falls back")
    render.add_argument("--var", action="append", default=[], metavar="NAME=VALUE")
    render.add_argument("--json", action="store_true")
    render.set_defaults(func=_render)

    bench_cmd = add("bench", "time render() per call against a cached-render floor")
    bench_cmd.add_argument("--seconds", type=float, default=0.3, help="per measurement")
    bench_cmd.add_argument("--json", action="store_true")
    bench_cmd.set_defaults(func=_bench)
