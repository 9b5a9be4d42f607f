"""Benchmark: calls per second through FastAgiServer against a bare asyncio baseline.

Not a test (pytest does not collect it). Run:

    .venv/bin/python tests/unit/protocol/bench_fastagi.py [--calls 4000] [--concurrency 50]

Both servers serve the same minimal call over real loopback sockets to the same fake Asterisk
clients (environment block, ANSWER, SET VARIABLE, close): the baseline is the least code that
can do it (readuntil/readline, no parsing, no checks); ours adds the sans-I/O parser,
quoting, per-command deadlines, allow-list, cap, task naming and logging. The ratio is what
all that costs. The issue's reference point: 350 calls/s through real Asterisk with SIPp.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from ivr_engine.protocol.agi import (  # noqa: E402
    NEED_DATA,
    AgiConnection,
    environment_lines,
)
from ivr_engine.transport.fastagi import AgiSession, FastAgiServer  # noqa: E402

ENV = environment_lines(
    {
        "agi_network": "yes",
        "agi_network_script": "hotline",
        "agi_request": "agi://127.0.0.1/hotline",
        "agi_channel": "PJSIP/carrier-00000001",
        "agi_language": "en",
        "agi_type": "PJSIP",
        "agi_uniqueid": "1764075600.1",
        "agi_version": "22.10.1",
        "agi_callerid": "13800138000",
        "agi_calleridname": "Zhang San",
        "agi_callingpres": "0",
        "agi_callingani2": "0",
        "agi_callington": "0",
        "agi_callingtns": "0",
        "agi_dnid": "4008",
        "agi_rdnis": "unknown",
        "agi_context": "from-carrier",
        "agi_extension": "4008",
        "agi_priority": "2",
        "agi_enhanced": "0.0",
        "agi_accountcode": "",
        "agi_threadid": "139689736754944",
    }
)


async def fake_asterisk_call(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(ENV)
    while line := await reader.readline():
        writer.write(b"200 result=1\n" if line.startswith(b"SET") else b"200 result=0\n")
    writer.close()
    await writer.wait_closed()


async def drive(port: int, calls: int, concurrency: int) -> float:
    queue = iter(range(calls))

    async def worker() -> None:
        for _ in queue:
            await fake_asterisk_call(port)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for i in range(concurrency):
            tg.create_task(worker(), name=f"bench-client-{i}")
    return calls / (time.perf_counter() - started)


async def baseline_server() -> asyncio.Server:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\n\n")
        writer.write(b"ANSWER\n")
        await reader.readline()
        writer.write(b"SET VARIABLE IVR_RESULT ok\n")
        await reader.readline()
        writer.close()
        await writer.wait_closed()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def ours(session: AgiSession) -> None:
    await session.answer()
    await session.set_variable("IVR_RESULT", "ok")


def parse_rate(seconds: float = 1.0) -> tuple[float, float]:
    """Calls/s the sans-I/O parser handles (env + 2 replies), and a split()-only baseline."""
    wire = ENV + b"200 result=0\n200 result=1\n"
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        conn = AgiConnection()
        conn.receive_data(ENV)
        conn.next_event()
        conn.send_command("ANSWER")
        conn.receive_data(b"200 result=0\n")
        conn.next_event()
        conn.send_command("SET VARIABLE", "IVR_RESULT", "ok")
        conn.receive_data(b"200 result=1\n")
        conn.next_event()
        if conn.next_event() is not NEED_DATA:
            raise RuntimeError("unexpected event")
        n += 1
    ours_rate = n / (time.perf_counter() - started)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        dict(line.split(b": ", 1) for line in wire.split(b"\n")[:22])
        n += 1
    return ours_rate, n / (time.perf_counter() - started)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; best kept")
    args = ap.parse_args()

    base = await baseline_server()
    base_port = base.sockets[0].getsockname()[1]
    base_rates: list[float] = []
    our_rates: list[float] = []
    async with FastAgiServer(ours, host="127.0.0.1", port=0, max_sessions=10000) as server:
        await drive(base_port, 200, args.concurrency)  # warm up both
        await drive(server.port, 200, args.concurrency)
        # Alternate, so that load from other processes on the machine hits both alike.
        for _ in range(args.rounds):
            base_rates.append(await drive(base_port, args.calls, args.concurrency))
            our_rates.append(await drive(server.port, args.calls, args.concurrency))
    base.close()
    await base.wait_closed()

    parse_ours, parse_base = parse_rate()
    base_rate, our_rate = max(base_rates), max(our_rates)
    print(f"calls={args.calls} concurrency={args.concurrency} rounds={args.rounds}")
    print("(fake Asterisk clients and the server share one process and one event loop)")
    print(f"baseline bare asyncio server : {base_rate:8.0f} calls/s  {_fmt(base_rates)}")
    print(f"FastAgiServer + AgiSession   : {our_rate:8.0f} calls/s  {_fmt(our_rates)}")
    print(f"ratio ours/baseline          : {our_rate / base_rate:8.2f}")
    print(f"sans-I/O parser, whole call  : {parse_ours:8.0f} calls/s")
    print(f"baseline split() of the env  : {parse_base:8.0f} calls/s")
    print(f"ratio ours/baseline          : {parse_ours / parse_base:8.2f}")


def _fmt(rates: list[float]) -> str:
    return "rounds: " + " ".join(f"{r:.0f}" for r in rates)


if __name__ == "__main__":
    asyncio.run(main())
