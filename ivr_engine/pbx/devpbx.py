"""The dev PBX: Asterisk 22 from Debian sid in a chroot under `.pbx/`, on loopback only.

`DevPbx` builds the root (rootfs.py), installs `asterisk-conf/` and `sip-trunk/` as the whole
of the root's /etc/asterisk, starts `asterisk -f` in the chroot, waits for AMI FullyBooted as
the engine user, and stops exactly the process it started (by pid, checked against the chroot).

State in `.pbx/` (next to the root): `build.json` (the build stamp), `run.json` (pid, config
digests, mounts made, the log offset at boot), `asterisk.out` (Asterisk's stdout), `lock` (one
pbx command at a time across processes) and `leases/` (live users of a running PBX: the test
fixture stops the PBX only when it started it and nobody else holds a lease).

Synchronous on purpose: this is tooling around a child process, used by the CLI and by the
session fixture of the tests; the engine itself never imports it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import wave
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivr_engine.errors import DevPbxError
from ivr_engine.pbx import ami_probe, conf, rootfs
from ivr_engine.pbx.asterisk_log import AsteriskLog, LogMark, problems
from ivr_engine.pbx.rootfs import CHROOT_ENV, BuildSpec, Progress
from ivr_engine.prompts.catalogue import SOUNDS_DIR

if TYPE_CHECKING:
    from ivr_engine.config import Settings

ASTERISK_DIRS = (
    "etc/asterisk",
    "var/lib/asterisk",
    "var/spool/asterisk",
    "var/log/asterisk",
    "var/cache/asterisk",
    "run/asterisk",
)
MOH_DIR = "var/lib/asterisk/moh/ivr-engine"
LOG_FILE = "var/log/asterisk/messages"
CDR_FILE = "var/log/asterisk/cdr-csv/Master.csv"
BOOT_TIMEOUT = 60.0
CLI_TIMEOUT = 15.0
LOCK_TIMEOUT = 900.0


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class UpResult:
    action: str  # "started" | "already-up" | "reloaded" | "restarted"
    pid: int
    seconds: float
    built: bool = False
    # WARNING/ERROR lines Asterisk logged while loading the config (boot or reload).
    problems: tuple[str, ...] = ()

    @property
    def started(self) -> bool:
        """True when this call started the Asterisk process (so it owns stopping it)."""
        return self.action in {"started", "restarted"}


@dataclass(frozen=True)
class PbxStatus:
    built: bool
    running: bool
    pid: int | None
    root: Path
    listeners: conf.Listeners
    versions: dict[str, str] = field(default_factory=dict)
    config_in_sync: bool | None = None
    mounts: tuple[str, ...] = ()
    leases: tuple[int, ...] = ()
    stale_pid: int | None = None


def moh_tone_wav(seconds: int = 8, rate: int = 8000) -> bytes:
    """A soft four-note chime as 8 kHz 16-bit mono WAV: hold music that is obviously a tone."""
    if seconds <= 0 or rate <= 0:
        raise DevPbxError("hold tone needs a positive length and rate")
    notes = (440.0, 554.37, 659.25, 554.37)
    frames = bytearray()
    for i in range(seconds * rate):
        t = i / rate
        f = notes[int(t) % len(notes)]
        phase = t % 1.0
        envelope = min(1.0, phase * 20) * max(0.0, 1.0 - phase)
        frames += struct.pack("<h", int(5000 * envelope * math.sin(2 * math.pi * f * t)))
    buf = BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return buf.getvalue()


def hosts_file(hostname: str) -> str:
    """/etc/hosts for the root: the machine's own name resolves without DNS (see modules.conf)."""
    if not hostname or any(c.isspace() for c in hostname):
        raise DevPbxError(f"unusable hostname {hostname!r}")
    return f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"


RESOLV_CONF = (
    "# ivr-engine dev PBX: no DNS. Every address in the shipped config is an IP;\n"
    "# glibc falls back to 127.0.0.1, where nothing answers, so lookups fail fast.\n"
)


class DevPbx:
    def __init__(
        self,
        *,
        root: Path,
        conf_dirs: Sequence[Path],
        ami_user: str,
        ami_secret: str,
        expected_ami_port: int | None = None,
        spec: BuildSpec | None = None,
        progress: Progress = _quiet,
        shared_dirs: Sequence[Path] = (),
    ):
        self.root = root.absolute()
        # Host folders Asterisk must read at the same absolute path (the daemon's prompt
        # sounds): bind-mounted read-only into the root, so STREAM FILE paths work unchanged.
        self.shared_dirs = tuple(d.absolute() for d in shared_dirs)
        self.state_dir = self.root.parent
        self.conf_dirs = tuple(d.absolute() for d in conf_dirs)
        self.ami_user = ami_user
        self._ami_secret = ami_secret
        self.spec = spec or BuildSpec()
        self.progress = progress
        self.listeners = self._read_listeners()
        if expected_ami_port is not None and expected_ami_port != self.listeners.ami_port:
            raise DevPbxError(
                f"settings ami.port is {expected_ami_port} but manager.conf makes Asterisk "
                f"listen on {self.listeners.ami_port}: make them agree"
            )
        self.log = AsteriskLog(self.root / LOG_FILE)
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, base: Path | None = None, progress: Progress = _quiet
    ) -> DevPbx:
        base = base or Path.cwd()

        def resolve(p: str) -> Path:
            path = Path(p)
            return path if path.is_absolute() else base / path

        return cls(
            root=resolve(settings.pbx.root),
            conf_dirs=(resolve(settings.pbx.conf_dir), resolve(settings.pbx.trunk_dir)),
            ami_user=settings.ami.username,
            ami_secret=settings.ami.secret,
            expected_ami_port=settings.ami.port,
            progress=progress,
            shared_dirs=(resolve(settings.prompts.dir) / SOUNDS_DIR,),
        )

    @property
    def ami_secret(self) -> str:
        """The engine's AMI secret (for probes; never print it)."""
        return self._ami_secret

    # ----------------------------------------------------------------- paths and small helpers
    @property
    def ami_port(self) -> int:
        return self.listeners.ami_port

    @property
    def sip_port(self) -> int:
        return self.listeners.sip_port

    def log_path(self) -> Path:
        return self.root / LOG_FILE

    def cdr_path(self) -> Path:
        return self.root / CDR_FILE

    def in_root(self, path: str) -> Path:
        """The host path of `path` as seen inside the root (`/tmp/x` -> `.pbx/root/tmp/x`)."""
        if not path.startswith("/") or ".." in Path(path).parts:
            raise DevPbxError(f"expected an absolute path inside the root, got {path!r}")
        return self.root / path.lstrip("/")

    def mark(self) -> LogMark:
        return self.log.mark()

    def lines_since(self, mark: LogMark) -> list[str]:
        return self.log.lines_since(mark)

    def boot_log_lines(self) -> list[str]:
        """The messages log from this Asterisk's start until FullyBooted."""
        state = self._read_run()
        if not state or "boot_mark" not in state:
            raise DevPbxError("the dev PBX is not running (no boot record)")
        inode, end = state["boot_mark"]
        try:
            with self.log_path().open("rb") as fh:
                if os.fstat(fh.fileno()).st_ino != inode:
                    raise DevPbxError("the messages log was replaced since boot")
                return fh.read(end).decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            raise DevPbxError(f"{self.log_path()} is gone (removed since boot?)") from None

    def cli_argv(self, command: str | None = None) -> list[str]:
        """`asterisk -rx COMMAND` (or interactive `-r`) in the root."""
        if command is None:
            return rootfs.chroot_argv(self.root, ["/usr/sbin/asterisk", "-r"])
        if "\n" in command or "\r" in command:
            raise DevPbxError("a CLI command cannot contain a line break")
        return rootfs.chroot_argv(self.root, ["/usr/sbin/asterisk", "-rx", command])

    def cli(self, command: str, *, timeout: float = CLI_TIMEOUT) -> str:
        """Run one Asterisk CLI command in the running PBX and return its output."""
        try:
            proc = subprocess.run(
                self.cli_argv(command),
                capture_output=True,
                timeout=timeout,
                env=CHROOT_ENV,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DevPbxError(f"asterisk -rx {command!r} took longer than {timeout} s") from None
        out = proc.stdout.decode("utf-8", "replace")
        if proc.returncode != 0 or "Unable to connect to remote asterisk" in out:
            raise DevPbxError(
                f"asterisk -rx {command!r} failed (exit {proc.returncode}): "
                f"{(out + proc.stderr.decode('utf-8', 'replace')).strip()}"
            )
        return out

    def sipp_cmd(self, *args: str) -> list[str]:
        """The command line that runs SIPp (from Debian's sip-tester) inside the root.

        Scenario files must be inside the root: write them with `in_root('/tmp/x.xml')` and
        pass `-sf /tmp/x.xml`.
        """
        return rootfs.chroot_argv(self.root, ["/usr/bin/sipp", *args])

    # ----------------------------------------------------------------------------- build
    def is_built(self) -> bool:
        stamp = rootfs.read_stamp(self.state_dir / "build.json")
        check = rootfs.check_stamp(stamp, self.spec, root_exists=self.root.exists())
        return check.action == "none"

    def build(self) -> bool:
        """Build the root if needed. Returns True when something was built or installed."""
        with self._locked():
            built = self._build()
        if not built:
            self.progress(f"pbx build: root at {self._rel(self.root)} is up to date")
        return built

    def _build(self) -> bool:
        rootfs.require_build_tools()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return rootfs.build_root(self.root, self.state_dir / "build.json", self.spec, self.progress)

    # ----------------------------------------------------------------------------- up
    def up(self) -> UpResult:
        """Start the PBX (building first if needed), or reload it if its config changed."""
        t0 = time.monotonic()
        with self._locked():
            built = self._build()
            pid = self._running_pid()
            if pid is not None:
                state = self._read_run() or {}
                new = conf.digests(conf.conf_sources(self.conf_dirs))
                kind = conf.change_kind(state.get("digests", {}), new)
                if kind == "none":
                    self._probe(timeout=10.0)
                    return UpResult("already-up", pid, time.monotonic() - t0, built)
                if kind == "reload":
                    found = self._reload_locked()
                    return UpResult("reloaded", pid, time.monotonic() - t0, built, tuple(found))
                self.progress("pbx up: modules.conf or asterisk.conf changed: restarting")
                self._stop_locked()
                pid = self._start_locked()
                return UpResult(
                    "restarted", pid, time.monotonic() - t0, built, tuple(self._boot_problems())
                )
            pid = self._start_locked()
            return UpResult(
                "started", pid, time.monotonic() - t0, built, tuple(self._boot_problems())
            )

    def _boot_problems(self) -> list[str]:
        return problems(self.boot_log_lines())

    def _start_locked(self) -> int:
        if not self.is_built():
            raise DevPbxError("the dev PBX root is not built")
        self.check_ports_free()
        mounts = self._prepare_root()
        sources = conf.conf_sources(self.conf_dirs)
        self._install_conf(sources)
        self._rotate_log()
        out = (self.state_dir / "asterisk.out").open("wb")
        argv = rootfs.chroot_argv(self.root, ["/usr/sbin/asterisk", "-f", "-n"])
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=CHROOT_ENV,
                start_new_session=True,
            )
        except OSError as exc:
            for point in mounts:
                self._umount(point)
            raise DevPbxError(f"could not start Asterisk: {exc}") from None
        finally:
            out.close()
        pid = self._proc.pid
        self._write_run(
            {
                "pid": pid,
                "started_at": time.time(),
                "mounts": mounts,
                "digests": conf.digests(sources),
            }
        )
        self.progress(f"pbx up: Asterisk started (pid {pid}); waiting for FullyBooted")
        try:
            self._probe(timeout=BOOT_TIMEOUT, starting=self._proc)
        except DevPbxError as exc:
            detail = rootfs.tail(self.state_dir / "asterisk.out", 10)
            self._stop_locked()
            raise DevPbxError(f"{exc}\nAsterisk's output:\n{detail}") from None
        mark = self.log.mark()
        state = self._read_run() or {}
        state["boot_mark"] = [mark.inode, mark.offset]
        self._write_run(state)
        return pid

    def wait_booted(self, *, timeout: float) -> ami_probe.BootInfo:
        """Log in to AMI as the engine user and wait for FullyBooted."""
        return self._probe(timeout=timeout)

    def _probe(
        self, *, timeout: float, starting: subprocess.Popen[bytes] | None = None
    ) -> ami_probe.BootInfo:
        """Wait for FullyBooted; fail at once if `starting` (the process we just launched)
        exits first."""
        deadline = time.monotonic() + timeout
        while True:
            if starting is not None and starting.poll() is not None:
                raise DevPbxError(f"Asterisk exited during start (exit {starting.returncode})")
            try:
                return ami_probe.wait_fully_booted(
                    "127.0.0.1",
                    self.ami_port,
                    self.ami_user,
                    self._ami_secret,
                    timeout=min(2.0, max(0.1, deadline - time.monotonic())),
                )
            except ami_probe.AmiProbeError as exc:
                # A refusal while Asterisk stops or restarts ("Asterisk is shutting down") is
                # transient; any other refusal is the credentials, which waiting cannot fix.
                refused = "refused user" in str(exc) and "shutting down" not in str(exc).lower()
                if refused or time.monotonic() >= deadline:
                    raise

    # ----------------------------------------------------------------------------- reload
    def reload(self) -> list[str]:
        """Install the config again and apply it: `core reload`, or a restart when
        modules.conf or asterisk.conf changed. Returns the WARNING/ERROR lines logged."""
        with self._locked():
            if self._running_pid() is None:
                raise DevPbxError("the dev PBX is not running: `ivr-engine pbx up` first")
            return self._reload_locked()

    def _reload_locked(self) -> list[str]:
        state = self._read_run() or {}
        sources = conf.conf_sources(self.conf_dirs)
        new = conf.digests(sources)
        if conf.change_kind(state.get("digests", {}), new) == "restart":
            self.progress("pbx reload: modules.conf or asterisk.conf changed: restarting")
            self._stop_locked()
            self._start_locked()
            return problems(self.boot_log_lines())
        mark = self.log.mark()
        self._install_conf(sources)
        self.cli("core reload")
        lines = self.wait_log_quiet(mark)
        state["digests"] = new
        self._write_run(state)
        self.progress("pbx reload: configuration reloaded")
        return problems(lines)

    def wait_log_quiet(
        self, mark: LogMark, *, quiet: float = 1.0, timeout: float = 15.0
    ) -> list[str]:
        """Lines logged since `mark`, once the log has been still for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        lines = self.log.lines_since(mark)
        still_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.log.lines_since(mark)
            if len(now) != len(lines):
                lines, still_since = now, time.monotonic()
            elif time.monotonic() - still_since >= quiet:
                break
        return lines

    # ----------------------------------------------------------------------------- down
    def down(self, *, force: bool = False) -> bool:
        """Stop the Asterisk that `up` started and undo its mounts. False if none ran.

        Refuses while another live process holds a lease (a test session using the PBX),
        unless `force`.
        """
        with self._locked():
            others = [pid for pid in self.live_leases() if pid != os.getpid()]
            if others and not force and self._running_pid() is not None:
                raise DevPbxError(
                    f"processes {', '.join(map(str, others))} are using the dev PBX "
                    "(test sessions?); wait for them, or force it (`pbx down --force`)"
                )
            return self._stop_locked()

    def _stop_locked(self) -> bool:
        state = self._read_run()
        pid = self._running_pid()
        stopped = False
        if pid is not None:
            with contextlib.suppress(DevPbxError):
                self.cli("core stop now", timeout=10.0)
            if not self._wait_gone(pid, 10.0):
                self.progress(f"pbx down: pid {pid} ignored `core stop now`; SIGTERM")
                self._signal(pid, signal.SIGTERM)
                if not self._wait_gone(pid, 5.0):
                    self.progress(f"pbx down: pid {pid} ignored SIGTERM; SIGKILL")
                    self._signal(pid, signal.SIGKILL)
                    if not self._wait_gone(pid, 5.0):
                        raise DevPbxError(f"Asterisk pid {pid} survived SIGKILL")
            stopped = True
        for mnt in (state or {}).get("mounts", []):
            self._umount(mnt)
        for name in ("run.json", "asterisk.pid"):
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / name).unlink()
        self._proc = None
        return stopped

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=0.1)
                if self._proc.returncode is not None:
                    return True
            elif not _alive(pid):
                return True
            else:
                time.sleep(0.1)
        return False

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def _umount(self, point: str) -> None:
        if point not in rootfs.mounts_under(self.root):
            return
        proc = subprocess.run(["umount", point], capture_output=True, timeout=30, check=False)
        if proc.returncode != 0:
            # Something (a SIPp left running?) still uses it: detach now, freed when idle.
            lazy = subprocess.run(
                ["umount", "-l", point], capture_output=True, timeout=30, check=False
            )
            if lazy.returncode != 0:
                raise DevPbxError(
                    f"could not unmount {point}: {lazy.stderr.decode(errors='replace').strip()}"
                )
            self.progress(f"pbx down: {point} was busy; detached (lazy unmount)")

    def clean(self) -> None:
        """Stop the PBX (even with leases held) and remove the whole state folder, root
        included. Refuses while anything is still mounted under it: `rm -rf` through a mounted
        /proc or a bind mount would reach the host."""
        with self._locked():
            self._stop_locked()
            left = rootfs.mounts_under(self.state_dir)
            if left:
                raise DevPbxError(
                    f"not removing {self.state_dir}: still mounted there: {', '.join(left)}"
                )
        shutil.rmtree(self.state_dir)

    # ----------------------------------------------------------------------------- status
    def status(self) -> PbxStatus:
        built = self.is_built()
        pid = self._running_pid()
        state = self._read_run() or {}
        versions: dict[str, str] = {}
        if built:
            versions = self._versions()
        in_sync: bool | None = None
        if pid is not None:
            new = conf.digests(conf.conf_sources(self.conf_dirs))
            in_sync = state.get("digests") == new
        stale = state.get("pid") if pid is None and state.get("pid") else None
        return PbxStatus(
            built=built,
            running=pid is not None,
            pid=pid,
            root=self.root,
            listeners=self.listeners,
            versions=versions,
            config_in_sync=in_sync,
            mounts=tuple(rootfs.mounts_under(self.root)) if self.root.exists() else (),
            leases=tuple(self.live_leases()),
            stale_pid=stale,
        )

    def _versions(self) -> dict[str, str]:
        argv = rootfs.chroot_argv(
            self.root,
            ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "asterisk", "sip-tester"],
        )
        try:
            proc = subprocess.run(
                argv, capture_output=True, timeout=10, env=CHROOT_ENV, check=False
            )
        except subprocess.TimeoutExpired:
            return {}
        out: dict[str, str] = {}
        for line in proc.stdout.decode(errors="replace").splitlines():
            name, _, version = line.partition(" ")
            if version:
                out[name] = version
        return out

    # ----------------------------------------------------------------------------- leases
    def live_leases(self) -> list[int]:
        d = self.state_dir / "leases"
        pids: list[int] = []
        if not d.is_dir():
            return pids
        for f in d.iterdir():
            try:
                pid = int(f.name)
            except ValueError:
                continue
            if _alive(pid):
                pids.append(pid)
            else:
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
        return sorted(pids)

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Mark this process as a user of the running PBX for the duration of the block."""
        d = self.state_dir / "leases"
        d.mkdir(parents=True, exist_ok=True)
        f = d / str(os.getpid())
        f.write_text(f"{time.time()}\n")
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()

    # ----------------------------------------------------------------------------- internals
    def _read_listeners(self) -> conf.Listeners:
        files = {p.name: p for p in conf.conf_sources(self.conf_dirs)}
        parsed = {}
        for name in ("manager.conf", "pjsip.conf", "rtp.conf"):
            if name not in files:
                raise DevPbxError(f"{name} is missing from {', '.join(map(str, self.conf_dirs))}")
            parsed[name] = conf.parse_conf(
                files[name].read_text(encoding="utf-8"), path=str(files[name])
            )
        lst = conf.listeners(parsed["manager.conf"], parsed["pjsip.conf"], parsed["rtp.conf"])
        for what, host in (("AMI", lst.ami_host), ("SIP", lst.sip_host)):
            if host != "127.0.0.1":
                raise DevPbxError(
                    f"the dev PBX binds only to 127.0.0.1, but the config puts {what} on {host}"
                )
        return lst

    def _running_pid(self) -> int | None:
        """The pid of the Asterisk that `up` started from this state folder, if it still runs."""
        state = self._read_run()
        if not state:
            return None
        pid = state.get("pid")
        if not isinstance(pid, int) or not _alive(pid):
            return None
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            proc_root = os.readlink(f"/proc/{pid}/root")
        except OSError:
            return None
        if comm != "asterisk" or Path(proc_root) != self.root.resolve():
            return None  # the pid was reused by something else
        return pid

    def check_ports_free(self) -> None:
        """Raise DevPbxError naming the owner if the AMI or SIP port is taken."""
        lst = self.listeners
        checks = (
            (socket.SOCK_STREAM, lst.ami_port, "tcp", "AMI"),
            (socket.SOCK_DGRAM, lst.sip_port, "udp", "SIP"),
        )
        for kind, port, proto, what in checks:
            s = socket.socket(socket.AF_INET, kind)
            try:
                if kind == socket.SOCK_STREAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise DevPbxError(f"cannot check 127.0.0.1:{port}/{proto}: {exc}") from None
                raise DevPbxError(
                    f"127.0.0.1:{port}/{proto} ({what}) is taken by another program, not by a "
                    f"dev PBX started from {self._rel(self.state_dir)}: {_owner(port, proto)}. "
                    "Stop it (or its `ivr-engine pbx down` in its own checkout) and retry"
                ) from None
            finally:
                s.close()

    def _prepare_root(self) -> list[str]:
        """Mounts and files Asterisk needs in the root. Returns the mounts made here."""
        # A mount left by an earlier start of ours (the host killed Asterisk, say) stays ours.
        previous = (self._read_run() or {}).get("mounts", [])
        present = rootfs.mounts_under(self.root)
        made: list[str] = [m for m in previous if m in present]
        proc_dir = self.root / "proc"
        if str(proc_dir.resolve()) not in present:
            r = subprocess.run(
                ["mount", "-t", "proc", "proc", str(proc_dir)],
                capture_output=True,
                timeout=30,
                check=False,
            )
            if r.returncode != 0:
                raise DevPbxError(
                    f"could not mount /proc in the root: "
                    f"{r.stderr.decode(errors='replace').strip()}"
                )
            made.append(str(proc_dir.resolve()))
        for host_dir in self.shared_dirs:
            host_dir.mkdir(parents=True, exist_ok=True)
            target = self.root / str(host_dir).lstrip("/")
            if str(target.resolve()) in present:
                continue
            target.mkdir(parents=True, exist_ok=True)
            for argv in (
                ["mount", "--bind", str(host_dir), str(target)],
                ["mount", "-o", "remount,bind,ro", str(target)],
            ):
                r = subprocess.run(argv, capture_output=True, timeout=30, check=False)
                if r.returncode != 0:
                    raise DevPbxError(
                        f"could not share {host_dir} with the root: "
                        f"{r.stderr.decode(errors='replace').strip()}"
                    )
            made.append(str(target.resolve()))
        (self.root / "etc/hosts").write_text(hosts_file(socket.gethostname()))
        (self.root / "etc/resolv.conf").write_text(RESOLV_CONF)
        for d in ASTERISK_DIRS:
            path = self.root / d
            path.mkdir(parents=True, exist_ok=True)
            # Asterisk drops CAP_DAC_OVERRIDE even as root: its dirs must belong to root.
            _chown_tree(path)
        moh = self.root / MOH_DIR
        moh.mkdir(parents=True, exist_ok=True)
        if not any(moh.iterdir()):
            (moh / "ivr-engine-tone.wav").write_bytes(moh_tone_wav())
        return made

    def _install_conf(self, sources: Sequence[Path]) -> None:
        """Make the root's /etc/asterisk exactly our files (Debian's samples removed)."""
        etc = self.root / "etc/asterisk"
        etc.mkdir(parents=True, exist_ok=True)
        wanted = {p.name for p in sources}
        for entry in etc.iterdir():
            if entry.name in wanted:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        for src in sources:
            tmp = etc / f".{src.name}.tmp"
            shutil.copyfile(src, tmp)
            tmp.chmod(0o640)
            tmp.replace(etc / src.name)

    def _rotate_log(self) -> None:
        log = self.log_path()
        if log.exists():
            log.replace(log.with_name(log.name + ".1"))

    def _read_run(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.state_dir / "run.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise DevPbxError(f"{self.state_dir / 'run.json'} is unreadable: {exc}") from None
        return data if isinstance(data, dict) else None

    def _write_run(self, data: dict[str, Any]) -> None:
        path = self.state_dir / "run.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)
        if "pid" in data:
            (self.state_dir / "asterisk.pid").write_text(f"{data['pid']}\n")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / "lock").open("a+") as fh:
            deadline = time.monotonic() + LOCK_TIMEOUT
            told = False
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise DevPbxError(
                            "another `ivr-engine pbx` command holds "
                            f"{self.state_dir / 'lock'}; gave up waiting"
                        ) from None
                    if not told:
                        self.progress("pbx: waiting for another pbx command to finish")
                        told = True
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _rel(path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)


def _alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "pid (comm) S ...": the state follows the last ')'.
    return stat[stat.rfind(")") + 2 :][:1] not in {"Z", "X", ""}


def _chown_tree(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        os.lchown(dirpath, 0, 0)
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), 0, 0)


def _owner(port: int, proto: str) -> str:
    """Who holds the port, as `ss` tells it (best effort, for the error message)."""
    flag = "-ltnp" if proto == "tcp" else "-lunp"
    try:
        r = subprocess.run(
            ["ss", "-H", flag, f"sport = :{port}"], capture_output=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "owner unknown"
    text = r.stdout.decode(errors="replace").strip()
    return text.split("users:", 1)[-1] if "users:" in text else "owner unknown"
