"""The memory allocator of the long-running commands (the daemon, the ACD bench).

A centre of tens of thousands of agents keeps hundreds of megabytes of small Python objects,
and each ACD event touches a few of them that no recent event touched. On 4 KiB pages each such
touch is a TLB miss as well as a cache miss: at 100,000 agents that, not the matcher's work,
is most of what an event costs (docs/acd.md, "Memory, not operations"). Python's own allocator
maps its arenas in pieces too small for transparent huge pages; jemalloc with `thp:always`
backs its heap with 2 MiB pages instead.

So `ivr-engine serve`, `demo` and `acd bench` start again once, at once, on jemalloc with
huge pages when the host has both (Debian's libjemalloc2, transparent huge pages not `never`)
and `acd.allocator` is `jemalloc` (the default; `python` keeps CPython's own allocator). The
restart is an `exec` of the same command line: the same process id, nothing run twice. The
variables it sets (LD_PRELOAD, PYTHONMALLOC, MALLOC_CONF) are put back as they were right
after, so that programs the daemon starts (sox, espeak-ng, the PBX) do not inherit them.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)

#: Set across the exec: the three variables as they were before it (JSON, None = unset).
MARK = "_IVR_ENGINE_ALLOCATOR_SAVED"
VARIABLES = ("LD_PRELOAD", "PYTHONMALLOC", "MALLOC_CONF")
#: One arena: the interpreter runs one thread at a time (the GIL), and every arena of
#: jemalloc's default four per CPU would hold huge pages of its own.
JEMALLOC_CONF = "thp:always,metadata_thp:always,narenas:1"
JEMALLOC_GLOBS = (
    "/usr/lib/*-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
)
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"

#: What this process found at start (`restore`), for the start-up line and the bench.
_restarted = False


def find_jemalloc() -> str | None:
    for pattern in JEMALLOC_GLOBS:
        for path in sorted(glob.glob(pattern)):
            if os.access(path, os.R_OK):
                return path
    return None


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
    """The host's transparent huge page mode (`always`, `madvise`, `never`); None if unknown."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def plan(
    environ: Mapping[str, str], wanted: str, jemalloc: str | None, thp: str | None
) -> dict[str, str] | None:
    """The environment to exec again with, or None to go on as we are: not wanted, already
    restarted, no jemalloc, no huge pages (jemalloc alone gains nothing here), or jemalloc
    already preloaded by whoever started us."""
    if wanted != "jemalloc" or MARK in environ or jemalloc is None or thp in (None, "never"):
        return None
    if "jemalloc" in environ.get("LD_PRELOAD", ""):
        return None
    env = dict(environ)
    env[MARK] = json.dumps({name: environ.get(name) for name in VARIABLES})
    preload = environ.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{jemalloc} {preload}".strip()
    env["PYTHONMALLOC"] = "malloc"
    conf = environ.get("MALLOC_CONF", "")
    env["MALLOC_CONF"] = f"{JEMALLOC_CONF},{conf}" if conf else JEMALLOC_CONF
    return env


def restore(environ: os._Environ[str] | dict[str, str] | None = None) -> bool:
    """After the exec: put the variables back as they were. True if this process is the
    restarted one. Call before anything starts another program."""
    global _restarted
    env = os.environ if environ is None else environ
    saved = env.pop(MARK, None)
    if saved is None:
        return False
    try:
        before = json.loads(saved)
    except ValueError:
        before = {}
    for name in VARIABLES:
        value = before.get(name) if isinstance(before, dict) else None
        if isinstance(value, str):
            env[name] = value
        else:
            env.pop(name, None)
    _restarted = True
    return True


def restart_on_jemalloc(wanted: str, argv: Sequence[str] | None = None) -> None:
    """Exec this command again on jemalloc with huge pages if `plan` says so; returns only
    when it does not (or when the exec itself fails: logged, and we go on as we are)."""
    if _restarted:
        return  # `restore` took the mark away: never a second time
    env = plan(os.environ, wanted, find_jemalloc(), thp_mode())
    if env is None:
        return
    args = list(sys.orig_argv if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *args[1:]], env)
    except OSError as exc:
        log.warning("could not start again on jemalloc (%s); Python's allocator it is", exc)


def in_use() -> dict[str, object]:
    """The allocator this process runs on, and how much of its memory is on huge pages."""
    name = "python"
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            if any("libjemalloc" in line for line in maps):
                name = "jemalloc"
    except OSError:
        pass
    if name == "python" and _restarted:
        name = "malloc"  # PYTHONMALLOC=malloc took, the preload did not
    huge_kb = 0
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                if line.startswith("AnonHugePages:"):
                    huge_kb = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {"allocator": name, "huge_pages_kb": huge_kb, "thp": thp_mode()}


def describe() -> str:
    """One line for the daemon's start-up log."""
    info = in_use()
    if info["allocator"] == "jemalloc":
        return f"memory: jemalloc on transparent huge pages (host mode {info['thp']})"
    if info["allocator"] == "malloc":
        return "memory: the C library's malloc (jemalloc could not be preloaded)"
    return "memory: Python's allocator (acd.allocator = python, or no jemalloc / huge pages)"
