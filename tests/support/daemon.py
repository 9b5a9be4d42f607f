"""Run the real daemon (`ivr-engine serve`) as a subprocess for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulate.sip import SipStack

REPO = Path(__file__).resolve().parents[2]
#: The daemon gets SIGTERM when the test process dies (a pytest killed by a timeout would
#: otherwise leave it serving the hotline port, and the next test's daemon could not start).
#: setpriv (util-linux, essential on Debian) sets PR_SET_PDEATHSIG, then execs: same pid.
_DIE_WITH_PARENT: tuple[str, ...] = (
    ("setpriv", "--pdeathsig", "TERM", "--") if shutil.which("setpriv") else ()
)


def _pumpable() -> SipStack | None:
    """The test's open SIP stack, if this thread may pump it now (else None). simulate.sip is
    looked up, not imported: tests without phones do not load pjsua2 for this."""
    sip = sys.modules.get("simulate.sip")
    stack: SipStack | None = sip.SipStack.live if sip is not None else None
    return stack if stack is not None and stack.can_pump() else None


def idle(seconds: float) -> None:
    """Sleep; if the test has SIP phones open, keep them answering meanwhile.

    A pjsua2 phone acts only while its stack is pumped, and a command of ours takes 1-3.5 s to
    start on these machines: two in a row once left a test's agent phones unpumped past
    Asterisk's qualify timeout (3 s, asterisk-conf/pjsip.conf), the PBX marked them unreachable
    and the ACD logged both agents out under the test.
    """
    stack = _pumpable()
    if stack is None:
        time.sleep(seconds)
    else:
        stack.pump(seconds)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `ivr-engine ARGS` from the repo; raises with its output when it fails. Any SIP
    phones the test has open keep answering while it runs (`idle`)."""
    argv = [sys.executable, "-m", "ivr_engine.cli", *args]
    with subprocess.Popen(
        argv,
        cwd=REPO,
        env=env or dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        deadline = time.monotonic() + 600
        while True:
            stack = _pumpable()
            try:
                # No phones: one wait for the whole run, as subprocess.run would.
                wait = 0.05 if stack is not None else max(deadline - time.monotonic(), 0.0)
                stdout, stderr = child.communicate(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                if stack is None or time.monotonic() > deadline:
                    child.kill()
                    child.communicate()
                    raise
                stack.pump(0.05)
    proc = subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"ivr-engine {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


class Daemon:
    """`ivr-engine serve` with its own SQLite files and log, on the configured AGI port."""

    def __init__(self, workdir: Path, *, extra_env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.db = workdir / "ivr.sqlite3"
        self.audit = workdir / "audit.sqlite3"
        self.log = workdir / "daemon.log"
        self.env = {
            **os.environ,
            "IVR_ENGINE_STORE_PATH": str(self.db),
            "IVR_ENGINE_STORE_AUDIT_PATH": str(self.audit),
            "IVR_ENGINE_FLOWS_DEPLOY_DIR": str(workdir / "deployed"),
            "IVR_ENGINE_LOG_FILE": str(self.log),
            "IVR_ENGINE_LOG_LEVEL": "DEBUG",
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=self.env)

    def seed(self, customers: int = 0) -> None:
        self.cli("cif", "seed", "--customers", str(customers))

    def start(self, timeout: float = 90.0) -> None:
        with open(self.workdir / "daemon.out", "wb") as out:  # the child keeps its own fd
            self.proc = subprocess.Popen(
                [*_DIE_WITH_PARENT, sys.executable, "-m", "ivr_engine.cli", "serve"],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.output()}")
            if "serving FastAGI" in self.output():
                return
            idle(0.1)
        raise RuntimeError(f"daemon did not start in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        p = self.workdir / "daemon.out"
        return p.read_text(errors="replace") if p.exists() else ""

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
