"""The daemon's and the ACD bench's restart on jemalloc with huge pages (ivr_engine/allocator.py):
when it happens, what it sets, and that the variables are put back for the programs the daemon
starts. tests/integration/test_allocator.py starts a real daemon on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ivr_engine import allocator, config
from ivr_engine.errors import ConfigError

JE = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


@pytest.fixture(autouse=True)
def _not_restarted(monkeypatch: pytest.MonkeyPatch) -> None:
    """`restore` marks this process as restarted: undone after each test."""
    monkeypatch.setattr(allocator, "_restarted", False)


def test_the_plan_preloads_jemalloc_with_huge_pages_and_keeps_what_was_set() -> None:
    before = {"PATH": "/bin", "LD_PRELOAD": "/opt/libtrace.so", "MALLOC_CONF": "abort:true"}
    env = allocator.plan(before, "jemalloc", JE, "madvise")
    assert env is not None
    assert env["LD_PRELOAD"] == f"{JE} /opt/libtrace.so"  # ours first, theirs kept
    assert env["PYTHONMALLOC"] == "malloc"  # every object through jemalloc, not pymalloc
    assert env["MALLOC_CONF"] == f"{allocator.JEMALLOC_CONF},abort:true"
    assert "thp:always" in env["MALLOC_CONF"]
    assert env["PATH"] == "/bin"
    saved = json.loads(env[allocator.MARK])
    assert saved == {"LD_PRELOAD": "/opt/libtrace.so", "PYTHONMALLOC": None,
                     "MALLOC_CONF": "abort:true"}  # fmt: skip
    assert before == {"PATH": "/bin", "LD_PRELOAD": "/opt/libtrace.so",
                      "MALLOC_CONF": "abort:true"}  # fmt: skip


@pytest.mark.parametrize(
    ("environ", "wanted", "jemalloc", "thp"),
    [
        ({}, "python", JE, "madvise"),  # acd.allocator = python
        ({allocator.MARK: "{}"}, "jemalloc", JE, "madvise"),  # already restarted: never twice
        ({}, "jemalloc", None, "madvise"),  # no libjemalloc2 on the host
        ({}, "jemalloc", JE, "never"),  # no huge pages: jemalloc alone gains nothing
        ({}, "jemalloc", JE, None),  # no THP at all (not Linux, or a kernel without it)
        ({"LD_PRELOAD": JE}, "jemalloc", JE, "always"),  # started on jemalloc already
    ],
)
def test_no_restart(environ: dict[str, str], wanted: str, jemalloc: str | None,
                    thp: str | None) -> None:  # fmt: skip
    assert allocator.plan(environ, wanted, jemalloc, thp) is None


@pytest.mark.parametrize(
    "before",
    [{"PATH": "/bin"}, {"PATH": "/bin", "LD_PRELOAD": "/opt/x.so", "PYTHONMALLOC": "debug"}],
)
def test_after_the_restart_the_variables_are_as_they_were(before: dict[str, str]) -> None:
    env = allocator.plan(before, "jemalloc", JE, "always")
    assert env is not None
    assert allocator.restore(env) is True
    assert env == before  # a program the daemon starts sees what the daemon was given


def test_restore_without_a_restart_changes_nothing() -> None:
    env = {"PATH": "/bin", "LD_PRELOAD": "/opt/x.so"}
    assert allocator.restore(env) is False
    assert env == {"PATH": "/bin", "LD_PRELOAD": "/opt/x.so"}


def test_the_host_mode_is_the_bracketed_word(tmp_path: Path) -> None:
    mode = tmp_path / "enabled"
    mode.write_text("always [madvise] never\n")
    assert allocator.thp_mode(str(mode)) == "madvise"
    mode.write_text("[never]\n")
    assert allocator.thp_mode(str(mode)) == "never"
    assert allocator.thp_mode(str(tmp_path / "missing")) is None


def test_the_setting_takes_jemalloc_or_python() -> None:
    assert config.load(environ={}).acd.allocator == "jemalloc"
    settings = config.load(environ={"IVR_ENGINE_ACD_ALLOCATOR": "python"})
    assert settings.acd.allocator == "python"
    with pytest.raises(ConfigError, match="allocator"):
        config.load(environ={"IVR_ENGINE_ACD_ALLOCATOR": "tcmalloc"})


def test_only_the_daemon_and_the_acd_bench_restart() -> None:
    from ivr_engine import cli

    parser = cli.build_parser()
    long_running = {
        " ".join(argv)
        for argv in (["serve"], ["demo"], ["acd", "bench"], ["acd", "simulate"], ["cif", "seed"],
                     ["acd", "latency"], ["flows", "bench"], ["calls", "list"])  # fmt: skip
        if getattr(parser.parse_args(argv), "long_running", False)
    }
    assert long_running == {"serve", "demo", "acd bench"}


def test_the_restarted_process_does_not_restart_again(monkeypatch: pytest.MonkeyPatch) -> None:
    execs: list[list[str]] = []
    monkeypatch.setattr(allocator.os, "execve", lambda path, argv, env: execs.append(argv))
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: JE)
    monkeypatch.setattr(allocator, "thp_mode", lambda: "madvise")
    monkeypatch.delenv(allocator.MARK, raising=False)
    allocator.restart_on_jemalloc("jemalloc", ["ivr-engine", "serve"])
    assert execs == [[allocator.sys.executable, "serve"]]
    env = allocator.plan(dict(allocator.os.environ), "jemalloc", JE, "madvise")
    assert env is not None
    monkeypatch.setenv(allocator.MARK, env[allocator.MARK])
    assert allocator.restore() is True  # what main() does first in the new process
    allocator.restart_on_jemalloc("jemalloc", ["ivr-engine", "serve"])
    assert len(execs) == 1  # the mark is gone from the environment, and still no second exec
