"""Fan-out: 1,000 clients each following one life of its own, 10 streaming every death, and
~500 background deaths/s (issue 9, Must have 3 and 4).

Run (root): .venv/bin/python -m bench.fanout [--lives 1000] [--all 10] [--rate 500]
            [--spread 3] [--sources proc] [--port 7880]

Starts `lifewatch serve` as its own process (with a raised descriptor limit), starts one
`sleep` per life, connects one WebSocket client per life (`types=died&life=host/pid/ticks`)
and `--all` clients on `types=died`, starts a background forker (fork + _exit at `--rate`/s),
then kills the lives, spread evenly over `--spread` s. Reports kill → that life's client
receipt p50/p99/max, clients the server closed (with their close codes), lives whose death
never arrived, `/v1/node` response time p50/p99 sampled every 50 ms during the kills, and the
kernel audit `lost` delta when audit is a source.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import uvloop

from bench.audit_forks import status
from bench.auth import AUTH, ENV
from bench.death_latency import now_ns, pct, stop_daemon, wait_ready

NOFILE = 16_384
# A forker that stays small: python -S, fork + _exit at a steady rate (no busy loop).
FORKER = (
    "import os, time, ctypes, signal\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"  # PR_SET_PDEATHSIG
    "rate = {rate}; t = time.monotonic()\n"
    "while True:\n"
    "    for _ in range(10):\n"
    "        pid = os.fork()\n"
    "        if pid == 0: os._exit(0)\n"
    "        os.waitpid(pid, 0)\n"
    "    t += 10 / rate; d = t - time.monotonic()\n"
    "    if d > 0: time.sleep(d)\n"
)


def raise_nofile() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def start_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22


@dataclass
class Run:
    received: dict[int, int] = field(default_factory=dict)  # pid -> receipt ns
    closed: Counter[str] = field(default_factory=Counter)  # close code -> clients
    node_ms: list[float] = field(default_factory=list)
    all_deaths: int = 0
    closing: bool = False  # the bench closes its clients now: not counted as dropped


async def follow(ws: aiohttp.ClientWebSocketResponse, run: Run, pid: int | None) -> None:
    """Read one client's stream until it ends; a close by the server is counted."""
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            if pid is None:
                run.all_deaths += 1
            elif pid not in run.received and json.loads(msg.data)["type"] == "died":
                run.received[pid] = now_ns()
    if not run.closing:  # the server ended it (or the connection broke)
        run.closed[str(ws.close_code)] += 1


async def sample_node(s: aiohttp.ClientSession, url: str, run: Run, stop: asyncio.Event) -> None:
    while not stop.is_set():
        t0 = time.monotonic()
        async with s.get(f"{url}/v1/node") as r:
            await r.read()
        run.node_ms.append((time.monotonic() - t0) * 1e3)
        await asyncio.sleep(0.05)


async def connect(
    s: aiohttp.ClientSession, url: str, query: str
) -> aiohttp.ClientWebSocketResponse:
    return await s.ws_connect(f"{url}/v1/stream?{query}", autoping=True, max_msg_size=0)


async def measure(
    url: str, lives: list[subprocess.Popen[bytes]], args: argparse.Namespace
) -> tuple[Run, dict[int, int]]:
    run, killed = Run(), {}
    host = socket.gethostname()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, headers=AUTH) as s:
        socks = []
        for i in range(0, len(lives), 100):  # connect in slices: the daemon's accept backlog
            chunk = lives[i : i + 100]
            queries = [f"types=died&life={host}/{p.pid}/{start_ticks(p.pid)}" for p in chunk]
            socks += await asyncio.gather(*(connect(s, url, q) for q in queries))
        alls = [await connect(s, url, "types=died") for _ in range(args.all)]
        pairs = zip(socks, lives, strict=True)
        readers = [asyncio.create_task(follow(ws, run, p.pid)) for ws, p in pairs]
        readers += [asyncio.create_task(follow(ws, run, None)) for ws in alls]
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_node(s, url, run, stop))
        await asyncio.sleep(1.0)  # background deaths flowing, every client settled
        step = args.spread / len(lives)
        t_start = time.monotonic()
        for n, p in enumerate(lives):
            await asyncio.sleep(max(0.0, t_start + n * step - time.monotonic()))
            killed[p.pid] = now_ns()
            os.kill(p.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10.0):
                while len(run.received) < len(lives):
                    await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        stop.set()
        await sampler
        run.closing = True
        for ws in [*socks, *alls]:
            await ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
    return run, killed


def start_daemon(args: argparse.Namespace) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **ENV, LIFEWATCH_STATE_DIR=tempfile.mkdtemp(prefix="lw-bench-"))
    # Every client here is one caller (the bench's token), where a real node's 1,000
    # watchers would be many: the per-caller cap on followed lives (256 by default, issue 10)
    # is raised to let this one caller hold them all.
    env["LIFEWATCH_MAX_FOLLOW_PER_CALLER"] = str(args.lives + args.all + 16)
    return subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(args.port),
         "--sources", args.sources, "--log-level", "WARNING"],
        env=env, preexec_fn=raise_nofile,
    )  # fmt: skip


def report(args: argparse.Namespace, run: Run, killed: dict[int, int], lost: int | None) -> None:
    lat = [(run.received[pid] - t0) / 1e6 for pid, t0 in killed.items() if pid in run.received]
    print(f"sources={args.sources} lives={args.lives} all_clients={args.all} "
          f"rate={args.rate}/s spread={args.spread}s")  # fmt: skip
    if lat:
        print(f"kill -> its client (ms): p50 {pct(lat, 50):.2f}  p99 {pct(lat, 99):.2f}  "
              f"max {max(lat):.2f}  (n={len(lat)})")  # fmt: skip
    print(f"deaths not received: {len(killed) - len(lat)}")
    print(f"clients closed by the server: {sum(run.closed.values())} {dict(run.closed)}")
    print(f"died messages to the {args.all} all-death clients: {run.all_deaths}")
    if len(run.node_ms) >= 2:
        print(f"/v1/node (ms): p50 {pct(run.node_ms, 50):.1f}  p99 {pct(run.node_ms, 99):.1f}  "
              f"max {max(run.node_ms):.1f}  (n={len(run.node_ms)})")  # fmt: skip
    if lost is not None:
        print(f"kernel audit lost delta: {lost}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lives", type=int, default=1000)
    ap.add_argument("--all", type=int, default=10, help="clients streaming every death")
    ap.add_argument("--rate", type=int, default=500, help="background deaths/s")
    ap.add_argument("--spread", type=float, default=3.0, help="s over which lives are killed")
    ap.add_argument("--sources", default="proc")
    ap.add_argument("--port", type=int, default=7880)
    args = ap.parse_args()
    raise_nofile()
    url = f"http://127.0.0.1:{args.port}"
    audit = "audit" in args.sources.split(",")
    daemon = start_daemon(args)
    lives: list[subprocess.Popen[bytes]] = []
    forker = None
    try:
        asyncio.run(wait_ready(url))
        lost0 = asyncio.run(status()).lost if audit else 0
        lives = [subprocess.Popen(["sleep", "1000"]) for _ in range(args.lives)]
        forker = subprocess.Popen([sys.executable, "-S", "-c", FORKER.format(rate=args.rate)])
        run, killed = uvloop.run(measure(url, lives, args))
        lost = asyncio.run(status()).lost - lost0 if audit else None
    finally:
        for p in [*lives, *([forker] if forker else [])]:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()
        stop_daemon(daemon)
    report(args, run, killed, lost)


if __name__ == "__main__":
    main()
