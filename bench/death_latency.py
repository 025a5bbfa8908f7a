"""Death latency: from the signal to a WebSocket client's receipt of `died`.

Run (root): .venv/bin/python -m bench.death_latency [--n 500] [--sources proc]
            [--death kill|exit] [--client aiohttp|raw] [--load-workers 2] [--port 7879]

Starts `lifewatch serve` as its own process, connects to `GET /v1/stream?types=died`, then,
one victim at a time, takes the death's moment on CLOCK_MONOTONIC and reads the clock again
when the client receives that victim's `died` message. Two ways to take the moment of death:

  --death kill  the killer reads the clock just before `kill -9` of a sleeping child: the
                figure includes the signal's delivery and the victim's wakeup.
  --death exit  the dying process reads the clock just before `_exit(0)`: a small child
                waits on a pipe, is told to die, reads the clock, hands the reading over
                and exits.

Reports p50/p99/max, and checks that every victim's death came exactly once. With
--load-workers, that many processes fork and exit in a tight loop meanwhile (design.md fact
10's fork benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench.auth import AUTH, ENV

MONO = time.CLOCK_MONOTONIC
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # asm-generic/socket.h


def now_ns(clock: int = MONO) -> int:
    return time.clock_gettime_ns(clock)


def fork_loop() -> None:
    """A load worker: fork + exit as fast as it can, until killed (or this bench dies:
    PR_SET_PDEATHSIG, so no worker outlives an interrupted run)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    while True:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)


class Killed:
    """A `sleep` child; its death is the moment just before `kill -9`."""

    def __init__(self, clock: int = MONO) -> None:
        self.proc = subprocess.Popen(["sleep", "1000"])
        self.pid = self.proc.pid
        self.clock = clock
        self.t0 = 0

    def die(self) -> None:
        self.t0 = now_ns(self.clock)
        os.kill(self.pid, signal.SIGKILL)

    def death(self) -> int:
        return self.t0

    def reap(self) -> None:
        self.proc.wait()


class Exits:
    """A small fresh process (python -S, no site) blocked on its stdin; told to die, it reads
    CLOCK_MONOTONIC, writes the reading to its stdout and calls _exit(0): its death is its own
    clock reading. Not a fork of this bench: a large address space takes milliseconds to tear
    down here before the kernel reports the exit."""

    CODE = (
        "import os, time; os.read(0, 1); "
        "os.write(1, time.clock_gettime_ns({clock}).to_bytes(8, 'little')); "
        "os._exit(0)"
    )

    def __init__(self, clock: int = MONO) -> None:
        code = self.CODE.format(clock=clock)
        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.pid = self.proc.pid

    def die(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"x")
        self.proc.stdin.flush()

    def death(self) -> int:
        assert self.proc.stdout is not None
        return int.from_bytes(self.proc.stdout.read(8), "little")

    def reap(self) -> None:
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


Victim = Killed | Exits


async def wait_ready(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(headers=AUTH) as s:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with s.get(f"{url}/v1/node") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit("lifewatch did not come up")


@contextlib.asynccontextmanager
async def died_stream(url: str, client: str) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """`/v1/stream?types=died` as a Python client sees it: aiohttp, or the `websockets`
    library (an independent implementation); yields a function giving the next message."""
    path = url.replace("http", "ws", 1) + "/v1/stream?types=died"
    if client == "websockets":
        from websockets.asyncio.client import connect

        async with connect(path, compression=None, max_size=None, additional_headers=AUTH) as ws:

            async def text() -> str:
                msg = await ws.recv()
                return msg if isinstance(msg, str) else msg.decode()

            yield text
        return
    async with aiohttp.ClientSession(headers=AUTH) as s, s.ws_connect(path) as aws:

        async def atext() -> str:
            msg = await aws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise SystemExit(f"stream ended: {msg.type}")
            return str(msg.data)

        yield atext


async def measure(
    url: str, n: int, gap: float, kind: type[Victim], client: str = "aiohttp"
) -> tuple[list[float], Counter[int], int]:
    latencies: list[float] = []
    deaths: Counter[int] = Counter()
    victims: list[Victim] = []
    async with died_stream(url, client) as text:
        await asyncio.sleep(0.2)
        for _ in range(n):
            p = kind()
            victims.append(p)
            await asyncio.sleep(gap)  # let it start (and its birth be handled): idle
            p.die()
            with contextlib.suppress(TimeoutError):  # a miss is counted, not fatal
                async with asyncio.timeout(10.0):
                    while True:
                        data = await text()
                        t1 = now_ns()
                        pid = json.loads(data)["life"]["pid"]
                        deaths[pid] += 1
                        if pid == p.pid:
                            latencies.append((t1 - p.death()) / 1e6)
                            break
            p.reap()
        # Late duplicates would come now.
        with contextlib.suppress(TimeoutError, SystemExit):
            async with asyncio.timeout(1.0):
                while True:
                    deaths[json.loads(await text())["life"]["pid"]] += 1
    ours = Counter({p.pid: deaths[p.pid] for p in victims})
    return latencies, ours, sum(deaths.values())


class RawStream:
    """A minimal blocking WebSocket client (RFC 6455) for `/v1/stream`: receipt is the moment
    the frame's bytes are read, with no client framework between the socket and the clock.
    With `stamps`, also the kernel's CLOCK_REALTIME stamp of the segment that completed the
    frame (SO_TIMESTAMPNS): when the bytes reached the client's socket, before the client
    itself woke up to read them."""

    def __init__(self, port: int, path: str, stamps: bool = False) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stamps = stamps
        self.stamp = 0
        if stamps:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Authorization: {AUTH['Authorization']}\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise SystemExit(f"no WebSocket: {head[:80]!r}")

    def _recv(self) -> bytes:
        if not self.stamps:
            return self.sock.recv(65536)
        chunk, anc, _, _ = self.sock.recvmsg(65536, 256)
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", value[:16])
                self.stamp = sec * 1_000_000_000 + nsec
        return chunk

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self._recv()
            if not chunk:
                raise SystemExit("stream closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def text(self, timeout: float) -> str:
        """The next text message; answers pings; TimeoutError after `timeout` s."""
        if timeout <= 0:
            raise TimeoutError
        self.sock.settimeout(timeout)
        while True:
            b0, b1 = self._read(2)
            size = b1 & 0x7F
            if size == 126:
                size = struct.unpack("!H", self._read(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(size)
            op = b0 & 0x0F
            if op == 1:
                return payload.decode()
            if op == 9:  # ping: a masked pong with the same payload
                mask = os.urandom(4)
                body = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
                self.sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + mask + body)
            elif op == 8:
                raise SystemExit("stream closed by the server")


def measure_raw(
    port: int, n: int, gap: float, kind: type[Victim], stamps: bool = False, by_life: bool = False
) -> tuple[list[float], Counter[int], int]:
    """With `by_life`, each victim gets a client of its own, subscribed with `life=` (as a
    middleware watching one partner does) once the victim runs; else one client takes
    every death."""
    latencies: list[float] = []
    deaths: Counter[int] = Counter()
    victims: list[Victim] = []
    host = json.loads(
        urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{port}/v1/node", headers=AUTH)
        ).read()
    )["host"]
    ws = None if by_life else RawStream(port, "/v1/stream?types=died", stamps)
    clock = time.CLOCK_REALTIME if stamps else MONO  # the kernel stamps on CLOCK_REALTIME
    time.sleep(0.2)
    for _ in range(n):
        p = kind(clock)
        victims.append(p)
        time.sleep(gap)
        if by_life:
            if ws is not None:
                ws.sock.close()
            ws = RawStream(port, f"/v1/stream?types=died&life={host}/{p.pid}/"
                                 f"{start_ticks(p.pid)}", stamps)  # fmt: skip
        assert ws is not None
        p.die()
        deadline = time.monotonic() + 10.0
        with contextlib.suppress(TimeoutError):  # a miss is counted, not fatal
            while True:
                data = ws.text(deadline - time.monotonic())
                t1 = ws.stamp if stamps else now_ns()
                pid = json.loads(data)["life"]["pid"]
                deaths[pid] += 1
                if pid == p.pid:
                    latencies.append((t1 - p.death()) / 1e6)
                    break
        p.reap()
    deadline = time.monotonic() + 1.0  # late duplicates would come now (not the load's end)
    assert ws is not None
    with contextlib.suppress(TimeoutError):
        while True:
            deaths[json.loads(ws.text(deadline - time.monotonic()))["life"]["pid"]] += 1
    ws.sock.close()
    ours = Counter({p.pid: deaths[p.pid] for p in victims})
    return latencies, ours, sum(deaths.values())


def stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    """SIGTERM (lifewatch removes its audit rules and releases the audit pid), then kill."""
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(10)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


def start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])


# Clients that stream every death, as fast as they read, in a process of their own (they
# compete for the cores as real clients do). They print how many deaths each received.
STREAMERS = """
import asyncio, sys, signal, aiohttp, uvloop
async def one(url, counts, i):
    auth = {"Authorization": "Bearer bench-token"}  # bench/auth.py
    async with aiohttp.ClientSession(headers=auth) as s, s.ws_connect(url, max_msg_size=0) as ws:
        async for msg in ws:
            counts[i] += 1
async def main(url, n):
    counts = [0] * n
    tasks = [asyncio.create_task(one(url, counts, i)) for i in range(n)]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    print(min(counts), max(counts), sum(t.done() for t in tasks), flush=True)
uvloop.run(main(sys.argv[1], int(sys.argv[2])))
"""


# Clients that post 10,000-entry batch checks in a loop, from another process (issue 9: three
# of them raised death latency from 1.3 ms to 0.2-1.1 s). They print how many checks they made.
CHECKERS = """
import asyncio, sys, signal, aiohttp, uvloop
async def one(url, lives, done, i):
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer bench-token"}) as s:
        while True:
            async with s.post(url + "/v1/lives/check", json={"lives": lives}) as r:
                await r.read()
                done[i] += r.status == 200
async def main(url, n):
    auth = {"Authorization": "Bearer bench-token"}  # bench/auth.py
    async with aiohttp.ClientSession(headers=auth) as s, s.get(url + "/v1/node") as r:
        host = (await r.json())["host"]
    lives = [f"{host}/{1 + k % 30000}/{k}" for k in range(10000)]
    done = [0] * n
    tasks = [asyncio.create_task(one(url, lives, done, i)) for i in range(n)]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    print(sum(done), flush=True)
uvloop.run(main(sys.argv[1], int(sys.argv[2])))
"""


def start_load(kind: str, workers: int) -> list[subprocess.Popen[bytes]]:
    """Fork storms: the compiled forker of bench/storm.py at full rate, or a Python loop."""
    if kind == "c":
        from bench.storm import FORKER, build_forker

        build_forker()
        return [subprocess.Popen([str(FORKER), "exit", "3600", "/dev/null"])
                for _ in range(workers)]  # fmt: skip
    code = "from bench.death_latency import fork_loop; fork_loop()"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(workers)]


def node(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(
        urllib.request.Request(f"http://127.0.0.1:{port}/v1/node", headers=AUTH), timeout=30
    ) as r:
        got: dict[str, Any] = json.load(r)
        return got


def pct(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="victims (default 500)")
    ap.add_argument("--sources", default="proc", help="lifewatch --sources (default proc)")
    ap.add_argument("--port", type=int, default=7879)
    ap.add_argument("--gap", type=float, default=0.01, help="s between victims (default 0.01)")
    ap.add_argument("--load-workers", type=int, default=0, help="fork+exit load processes")
    ap.add_argument(
        "--load",
        choices=("c", "python"),
        default="python",
        help="the load: bench/forker.c at full rate, or a Python fork loop",
    )
    ap.add_argument(
        "--streamers",
        type=int,
        default=0,
        help="extra clients streaming every death meanwhile (another process)",
    )
    ap.add_argument(
        "--checkers",
        type=int,
        default=0,
        help="clients posting 10,000-entry batch checks meanwhile (another process)",
    )
    ap.add_argument(
        "--by-life",
        action="store_true",
        help="each victim watched by its own client with life= (raw/stamp clients)",
    )
    ap.add_argument("--client", choices=("aiohttp", "websockets", "raw", "stamp"),
                    default="aiohttp",
                    help="aiohttp or the websockets library, on uvloop; a minimal blocking "
                         "WebSocket reader; or that reader's kernel receive stamp "
                         "(SO_TIMESTAMPNS)")  # fmt: skip
    ap.add_argument("--death", choices=("kill", "exit"), default="kill",
                    help="kill -9 by the bench, or _exit by the victim (see above)")  # fmt: skip
    args = ap.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    env = dict(os.environ, **ENV, LIFEWATCH_STATE_DIR=tempfile.mkdtemp(prefix="lw-bench-"))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(args.port),
         "--sources", args.sources, "--log-level", "WARNING"],
        env=env,
    )  # fmt: skip
    load: list[subprocess.Popen[bytes]] = []
    streamers = checkers = None
    try:
        asyncio.run(wait_ready(url))
        before = node(args.port)
        if args.streamers:
            ws_url = url.replace("http", "ws") + "/v1/stream?types=died"
            streamers = subprocess.Popen([sys.executable, "-c", STREAMERS, ws_url,
                                          str(args.streamers)], stdout=subprocess.PIPE)  # fmt: skip
            time.sleep(1.0)
        if args.checkers:
            checkers = subprocess.Popen(
                [sys.executable, "-c", CHECKERS, url, str(args.checkers)], stdout=subprocess.PIPE
            )
            time.sleep(1.0)
        load = start_load(args.load, args.load_workers)
        kind: type[Victim] = Killed if args.death == "kill" else Exits
        if args.client in ("raw", "stamp"):
            stamps = args.client == "stamp"
            lat, deaths, total = measure_raw(args.port, args.n, args.gap, kind, stamps,
                                             args.by_life)  # fmt: skip
        else:
            lat, deaths, total = uvloop.run(measure(url, args.n, args.gap, kind, args.client))
        for p in load:
            p.kill()
            p.wait()
        after = node(args.port)
    finally:
        for p in load:
            p.kill()
            p.wait()
        if checkers is not None:
            checkers.terminate()
            made = checkers.communicate(timeout=30)[0].decode().strip()
            print(f"checkers: {args.checkers}, 10,000-entry checks answered: {made}")
        if streamers is not None:
            streamers.terminate()
            got = streamers.communicate(timeout=30)[0].decode().split()
            print(f"streamers: {args.streamers}, deaths received min {got[0]} max {got[1]}, "
                  f"closed by the server {got[2]}")  # fmt: skip
        stop_daemon(daemon)
    missing = sum(1 for c in deaths.values() if c == 0)
    twice = sum(1 for c in deaths.values() if c > 1)
    print(f"death={args.death} client={args.client} sources={args.sources} "
          f"load_workers={args.load_workers} "
          f"victims={args.n} "
          f"died_messages={total}")  # fmt: skip
    print(f"death -> WebSocket receipt (ms): p50 {pct(lat, 50):.3f}  p90 {pct(lat, 90):.3f}  "
          f"p99 {pct(lat, 99):.3f}  max {max(lat):.3f}")  # fmt: skip
    print(f"victims missing: {missing}  reported twice: {twice}")
    gaps = after["events"].get("gap", 0) - before["events"].get("gap", 0)
    lost = {n: s["counters"].get("kernel_lost_since_start") for n, s in after["sources"].items()
            if "kernel_lost_since_start" in s["counters"]}  # fmt: skip
    print(
        f"gap events: {gaps}  kernel lost since start: {lost}  "
        f"loop lag max (last 10 s): {after['loop_lag']['max_10s']} s  "
        f"subscriber overflows: {after['subscriber_overflows'] - before['subscriber_overflows']}"
    )


if __name__ == "__main__":
    main()
