"""`ivr-engine pbx build | up | down | status | reload | cli`: the dev PBX (ivr_engine.pbx)."""

from __future__ import annotations

import argparse
import subprocess
import sys

from ivr_engine.pbx import DevPbx, bench
from ivr_engine.pbx.rootfs import CHROOT_ENV


def _progress(line: str) -> None:
    print(line, flush=True)


def _pbx(args: argparse.Namespace) -> DevPbx:
    return DevPbx.from_settings(args.settings, progress=_progress)


def _build(args: argparse.Namespace) -> int:
    _pbx(args).build()
    return 0


def _up(args: argparse.Namespace) -> int:
    pbx = _pbx(args)
    result = pbx.up()
    lst = pbx.listeners
    what = {
        "started": "started",
        "restarted": "restarted (modules or paths changed)",
        "reloaded": "was up; configuration reloaded",
        "already-up": "already up",
    }[result.action]
    print(f"dev PBX {what}: Asterisk pid {result.pid} ({result.seconds:.1f} s)")
    print(f"  AMI   127.0.0.1:{lst.ami_port}/tcp  user {pbx.ami_user}")
    print(
        f"  SIP   127.0.0.1:{lst.sip_port}/udp  trunk 'devtrunk' (from 127.0.0.1) -> "
        "context from-trunk, hotline 4008"
    )
    print(f"  RTP   127.0.0.1:{lst.rtp_start}-{lst.rtp_end}/udp")
    print("  AGI   the dialplan calls agi://127.0.0.1:4573/hotline")
    print(f"  log   {pbx.log_path()}")
    print(f"  CDR   {pbx.cdr_path()}")
    for line in result.problems:
        print(f"  ! {line}", file=sys.stderr)
    if result.problems:
        print(
            f"ivr-engine: Asterisk logged {len(result.problems)} warning(s)/error(s) while "
            "loading the configuration",
            file=sys.stderr,
        )
        return 1
    return 0


def _down(args: argparse.Namespace) -> int:
    pbx = _pbx(args)
    if pbx.down(force=args.force):
        print("dev PBX stopped")
    else:
        print("dev PBX was not running (nothing started from here to stop)")
    return 0


def _status(args: argparse.Namespace) -> int:
    st = _pbx(args).status()
    lst = st.listeners
    print(f"root      {st.root} ({'built' if st.built else 'not built'})")
    for name, version in sorted(st.versions.items()):
        print(f"{name:<9} {version}")
    if st.running:
        sync = (
            "in sync" if st.config_in_sync else "CHANGED since start (run `pbx up` or `pbx reload`)"
        )
        print(f"asterisk  running, pid {st.pid}; config {sync}")
        print(
            f"listens   AMI 127.0.0.1:{lst.ami_port}/tcp, SIP 127.0.0.1:{lst.sip_port}/udp, "
            f"RTP {lst.rtp_start}-{lst.rtp_end}/udp"
        )
    else:
        print("asterisk  not running")
        if st.stale_pid:
            print(f"          (pid {st.stale_pid} from the last start is gone)")
    if st.mounts:
        print(f"mounts    {', '.join(st.mounts)}")
    if st.leases:
        print(f"users     pids {', '.join(map(str, st.leases))} hold leases")
    return 0 if st.running else 3


def _clean(args: argparse.Namespace) -> int:
    pbx = _pbx(args)
    pbx.clean()
    print(f"removed {pbx.state_dir} (the dev PBX root and its state)")
    return 0


def _bench(args: argparse.Namespace) -> int:
    pbx = _pbx(args)
    results = bench.run(pbx, runs=args.runs, cold=args.cold)
    for line in bench.report(results):
        print(line)
    return 0 if bench.within_budget(results) else 1


def _reload(args: argparse.Namespace) -> int:
    found = _pbx(args).reload()
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} warning(s)/error(s) while loading the configuration", file=sys.stderr)
        return 1
    print("configuration loaded with no warnings")
    return 0


def _cli(args: argparse.Namespace) -> int:
    pbx = _pbx(args)
    if not args.words:
        return subprocess.call(pbx.cli_argv(None), env=CHROOT_ENV)
    sys.stdout.write(pbx.cli(" ".join(args.words)))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "pbx", help="the dev PBX: Asterisk 22 + SIPp in a Debian root under .pbx/, loopback only"
    )
    cmds = parser.add_subparsers(dest="pbx_command", metavar="ACTION", required=True)
    cmds.add_parser(
        "build", help="build the root once (debootstrap + apt); fast when built"
    ).set_defaults(func=_build)
    cmds.add_parser(
        "up",
        help="build if needed, install the config, start Asterisk and wait "
        "for FullyBooted; reloads when the config changed",
    ).set_defaults(func=_up)
    down = cmds.add_parser("down", help="stop the Asterisk that `up` started, undo its mounts")
    down.add_argument(
        "--force", action="store_true", help="stop it even while test sessions hold leases"
    )
    down.set_defaults(func=_down)
    cmds.add_parser(
        "clean", help="stop the PBX and remove .pbx/ (refuses while anything is mounted there)"
    ).set_defaults(func=_clean)
    bench_p = cmds.add_parser(
        "bench",
        help="time warm `up` (and cold with --cold) against Asterisk's own boot; waits for "
        "the PBX to be down and leaves it down",
    )
    bench_p.add_argument("--runs", type=int, default=3, help="warm cycles (default 3)")
    bench_p.add_argument(
        "--cold", action="store_true", help="also build a scratch root from nothing (~70 s)"
    )
    bench_p.set_defaults(func=_bench)
    cmds.add_parser(
        "status", help="running or not, pid, ports, versions (exit 3 when down)"
    ).set_defaults(func=_status)
    cmds.add_parser(
        "reload",
        help="install the config again and reload it; prints every "
        "warning Asterisk logs while loading",
    ).set_defaults(func=_reload)
    cli = cmds.add_parser("cli", help="run an Asterisk CLI command (no command: interactive)")
    cli.add_argument("words", nargs=argparse.REMAINDER, metavar="COMMAND")
    cli.set_defaults(func=_cli)
