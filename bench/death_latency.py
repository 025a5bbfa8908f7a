"""Death latency: from the signal to a WebSocket client's receipt of `died`.

Run (root): .venv/bin/python -m bench.death_latency [--n 500] [--sources proc]
            [--load-workers 2] [--port 7879]

Starts `lifewatch serve` as its own process, connects to `GET /v1/stream?types=died`, then,
one victim at a time: reads CLOCK_MONOTONIC just before `kill -9` of a sleeping child and
again when the client receives that child's `died` message (same clock, same process). Reports
p50/p99/max, and checks that every victim's death came exactly once. With --load-workers, that
many processes fork and exit in a tight loop meanwhile (design.md fact 10's fork benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter

import aiohttp
import uvloop

MONO = time.CLOCK_MONOTONIC


def now_ns() -> int:
    return time.clock_gettime_ns(MONO)


def fork_loop() -> None:
    """A load worker: fork + exit as fast as it can, until killed (or this bench dies:
    PR_SET_PDEATHSIG, so no worker outlives an interrupted run)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    while True:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)


async def wait_ready(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with s.get(f"{url}/v1/node") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit("lifewatch did not come up")


async def measure(url: str, n: int, gap: float) -> tuple[list[float], Counter[int], int]:
    latencies: list[float] = []
    deaths: Counter[int] = Counter()
    victims: list[subprocess.Popen[bytes]] = []
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{url}/v1/stream?types=died") as ws:
        await asyncio.sleep(0.2)
        for _ in range(n):
            p = subprocess.Popen(["sleep", "1000"])
            victims.append(p)
            await asyncio.sleep(gap)  # let it start (and its birth be handled): idle
            t0 = now_ns()
            os.kill(p.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):  # a miss is counted, not fatal
                async with asyncio.timeout(10.0):
                    while True:
                        msg = await ws.receive()
                        t1 = now_ns()
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            raise SystemExit(f"stream ended: {msg.type}")
                        pid = json.loads(msg.data)["life"]["pid"]
                        deaths[pid] += 1
                        if pid == p.pid:
                            latencies.append((t1 - t0) / 1e6)
                            break
            p.wait()
        # Late duplicates would come now.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while True:
                    msg = await ws.receive()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    deaths[json.loads(msg.data)["life"]["pid"]] += 1
    ours = Counter({p.pid: deaths[p.pid] for p in victims})
    return latencies, ours, sum(deaths.values())


def pct(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="victims (default 500)")
    ap.add_argument("--sources", default="proc", help="lifewatch --sources (default proc)")
    ap.add_argument("--port", type=int, default=7879)
    ap.add_argument("--gap", type=float, default=0.01, help="s between victims (default 0.01)")
    ap.add_argument("--load-workers", type=int, default=0, help="fork+exit load processes")
    args = ap.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    env = dict(os.environ, LIFEWATCH_STATE_DIR=tempfile.mkdtemp(prefix="lw-bench-"))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(args.port),
         "--sources", args.sources, "--log-level", "WARNING"],
        env=env,
    )  # fmt: skip
    load: list[int] = []
    try:
        asyncio.run(wait_ready(url))
        for _ in range(args.load_workers):
            pid = os.fork()
            if pid == 0:
                fork_loop()
            load.append(pid)
        lat, deaths, total = uvloop.run(measure(url, args.n, args.gap))
    finally:
        for pid in load:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    missing = sum(1 for c in deaths.values() if c == 0)
    twice = sum(1 for c in deaths.values() if c > 1)
    print(f"sources={args.sources} load_workers={args.load_workers} victims={args.n} "
          f"died_messages={total}")  # fmt: skip
    print(f"death -> WebSocket receipt (ms): p50 {pct(lat, 50):.3f}  p90 {pct(lat, 90):.3f}  "
          f"p99 {pct(lat, 99):.3f}  max {max(lat):.3f}")  # fmt: skip
    print(f"victims missing: {missing}  reported twice: {twice}")


if __name__ == "__main__":
    main()
