"""The floor under bench/death_latency.py: what the kernel and one bare reader cost here.

Run (root): .venv/bin/python -m bench.death_floor [--n 500] [--gap 0.01]

A child process joins the proc connector (uvloop, `add_reader`), decodes each datagram with
app/netlink/cn_proc.py and, for each process exit, writes the pid and two CLOCK_MONOTONIC
readings (datagram readable, decoded) to a TCP socket. This process kills a sleeping child
after `gap` s of idle, reading the clock just before, and reads the clock again when the pid
arrives. No tracker, registry, journal, JSON or WebSocket: whatever lifewatch takes beyond
these figures is its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import struct
import subprocess
import time

import uvloop

from app.netlink.cn_proc import (
    CN_IDX_PROC,
    PROC_CN_MCAST_IGNORE,
    PROC_CN_MCAST_LISTEN,
    ExitEvent,
    control_message,
    decode,
)

NETLINK_CONNECTOR = 11
REPORT = struct.Struct("=IQQ")  # pid, readable at, decoded at


def reader(port: int) -> None:
    async def run() -> None:
        out = socket.create_connection(("127.0.0.1", port))
        out.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        nl.bind((0, CN_IDX_PROC))
        nl.send(control_message(PROC_CN_MCAST_LISTEN))
        nl.setblocking(False)

        def readable() -> None:
            at = time.monotonic_ns()
            while True:
                try:
                    data = nl.recv(256)
                except BlockingIOError:
                    return
                for ev in decode(data):
                    if isinstance(ev, ExitEvent) and ev.process_pid == ev.process_tgid:
                        out.send(REPORT.pack(ev.process_tgid, at, time.monotonic_ns()))

        loop = asyncio.get_running_loop()
        loop.add_reader(nl.fileno(), readable)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
        finally:
            # The kernel counts listeners globally: each LISTEN needs its IGNORE.
            nl.send(control_message(PROC_CN_MCAST_IGNORE))

    uvloop.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--gap", type=float, default=0.01, help="s of idle before each kill")
    args = ap.parse_args()
    srv = socket.create_server(("127.0.0.1", 0))
    child = os.fork()
    if child == 0:
        try:
            reader(srv.getsockname()[1])
        finally:
            os._exit(0)
    conn, _ = srv.accept()
    time.sleep(0.3)
    total: list[float] = []
    parts: list[tuple[float, float, float]] = []
    buf = b""
    try:
        for _ in range(args.n):
            victim = subprocess.Popen(["sleep", "1000"])
            time.sleep(args.gap)
            t0 = time.monotonic_ns()
            os.kill(victim.pid, signal.SIGKILL)
            while True:
                while len(buf) < REPORT.size:
                    buf += conn.recv(4096)
                pid, readable, decoded = REPORT.unpack(buf[: REPORT.size])
                buf = buf[REPORT.size :]
                if pid == victim.pid:
                    t1 = time.monotonic_ns()
                    total.append((t1 - t0) / 1e6)
                    parts.append(((readable - t0) / 1e3, (decoded - readable) / 1e3,
                                  (t1 - decoded) / 1e3))  # fmt: skip
                    break
            victim.wait()
    finally:
        os.kill(child, signal.SIGTERM)
        os.waitpid(child, 0)
    q = statistics.quantiles(total, n=100, method="inclusive")
    print(f"kill -> bare reader -> TCP -> client (ms): p50 {q[49]:.3f}  p90 {q[89]:.3f}  "
          f"p99 {q[98]:.3f}  max {max(total):.3f}")  # fmt: skip
    for i, name in enumerate(("kill -> datagram readable", "readable -> decoded",
                              "decoded -> client read")):  # fmt: skip
        print(f"  {name:26} p50 {statistics.median(p[i] for p in parts):7.1f} us")


if __name__ == "__main__":
    main()
