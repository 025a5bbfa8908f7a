"""Latency of resolving a life's partners (GET /v1/connections?life=) on a node running 300
and 3,000 processes:

    .venv/bin/python -m bench.partners_resolve [--requests 200] [--rounds 3]

Starts `lifewatch serve --sources proc` as its own process, a TCP + Unix client/server pair,
and `sleep` processes until the node runs the wanted number of processes; then asks for the
client's connections `--requests` times in a row and prints p50/p99/max of the answer time,
and the daemon's own scan figures (descriptors read, processes, seconds). Configurations are
interleaved (300, 3000, 300, ...) for `--rounds` rounds; the medians are the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench.auth import AUTH, ENV
from bench.death_latency import node, stop_daemon, wait_ready
from bench.fanout import raise_nofile

SERVER = """
import socket, sys, time
tcp = socket.socket(); tcp.bind(("127.0.0.1", 0)); tcp.listen()
uds = socket.socket(socket.AF_UNIX); uds.bind(sys.argv[1]); uds.listen()
print(tcp.getsockname()[1], flush=True)
a, _ = tcp.accept(); b, _ = uds.accept()
time.sleep(3600)
"""
CLIENT = """
import socket, sys, time
t = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
u = socket.socket(socket.AF_UNIX); u.connect(sys.argv[2])
print("ok", flush=True)
time.sleep(3600)
"""


def processes() -> int:
    return sum(1 for e in os.scandir("/proc") if e.name.isdigit())


def start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])


def pct(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1]


async def measure(url: str, life: str, n: int) -> dict[str, Any]:
    times: list[float] = []
    scans: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(headers=AUTH) as s:
        for _ in range(n):
            t0 = time.perf_counter()
            async with s.get(f"{url}/v1/connections", params={"life": life}) as r:
                body = await r.read()
                assert r.status == 200, body
            times.append((time.perf_counter() - t0) * 1000)
            got = json.loads(body)
            assert any(c["peers"] for c in got["connections"]), got
            scans.append(got["scan"])
    return {
        "p50_ms": statistics.median(times), "p99_ms": pct(times, 99), "max_ms": max(times),
        "fds": statistics.median(s["fds"] for s in scans),
        "scan_ms": statistics.median(s["seconds"] for s in scans) * 1000,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--port", type=int, default=7893)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="lw-partners-")
    env = dict(os.environ, LIFEWATCH_STATE_DIR=tmp, **ENV)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(args.port), "--sources", "proc",
         "--log-level", "WARNING"], env=env, preexec_fn=raise_nofile,
    )  # fmt: skip
    url = f"http://127.0.0.1:{args.port}"
    path = f"{tmp}/partner.sock"
    server = subprocess.Popen([sys.executable, "-c", SERVER, path], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert server.stdout is not None
    port = server.stdout.readline().strip()
    client = subprocess.Popen([sys.executable, "-c", CLIENT, port, path], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert client.stdout is not None and client.stdout.readline().strip() == "ok"
    sleepers: list[subprocess.Popen[bytes]] = []
    results: dict[int, list[dict[str, Any]]] = {300: [], 3000: []}
    try:
        uvloop.run(wait_ready(url))
        hostname = node(args.port)["host"]
        life = f"{hostname}/{client.pid}/{start_ticks(client.pid)}"
        for rnd in range(args.rounds):
            for want in (300, 3000):
                while processes() > want and sleepers:
                    p = sleepers.pop()
                    p.kill()
                    p.wait()
                while processes() < want:
                    sleepers.append(subprocess.Popen(["sleep", "3600"]))
                time.sleep(1.0)
                got = uvloop.run(measure(url, life, args.requests))
                got["processes"] = processes()
                results[want].append(got)
                print(f"round {rnd + 1} {want:>5} processes: " + json.dumps(got), flush=True)
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
        for pair in (client, server):
            pair.kill()
            pair.wait()
        stop_daemon(daemon)
    for want, runs in results.items():
        if runs:
            med = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
            spread = {k: (round(min(r[k] for r in runs), 3), round(max(r[k] for r in runs), 3))
                      for k in ("p50_ms", "p99_ms")}  # fmt: skip
            print(f"median {want:>5} processes: {json.dumps(med)} spread {json.dumps(spread)}")


if __name__ == "__main__":
    main()
