"""Lookup throughput: `GET /v1/lives/{pid}/{start}` vs a minimal aiohttp JSON handler.

Run (root, wrk from Debian): .venv/bin/python -m bench.lookup_wrk [seconds] [connections]
Both servers run the same way (aiohttp on uvloop, one process, access log off), are measured
in the same run with the same wrk settings, alternately, five rounds each; the median is
reported. Target: lifewatch >= 70 % of the minimal handler. wrk shares the machine's cores.
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time

from bench.auth import AUTH, ENV

MINIMAL = """
import uvloop
from aiohttp import web
async def h(request):
    return web.json_response({"id": "vm/1/2026-11-26T00:47:19.13Z", "state": "alive"})
app = web.Application()
app.router.add_get("/v1/lives/{pid}/{start}", h)
uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(__import__("sys").argv[1]),
            access_log=None, print=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def wrk(url: str, seconds: int, conns: int) -> tuple[float, str]:
    out = subprocess.run(
        # The bench daemon's throwaway token (bench/auth.py), not a secret.
        ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-H",
         f"Authorization: {AUTH['Authorization']}", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    return rps, p99


def main(seconds: int = 5, conns: int = 32) -> None:
    lw_port, min_port = free_port(), free_port()
    # As deployed: both kernel sources when root (alive answers then take the cheap check).
    sources = "audit,proc" if os.geteuid() == 0 else ""
    env = dict(os.environ, **ENV, LIFEWATCH_PORT=str(lw_port), LIFEWATCH_SOURCES=sources,
               LIFEWATCH_STATE_DIR="")  # fmt: skip
    print(f"lifewatch sources: {sources or 'none'}")
    lw = subprocess.Popen([sys.executable, "-m", "app", "serve", "--log-level", "WARNING"], env=env)
    mini = subprocess.Popen([sys.executable, "-c", MINIMAL, str(min_port)])
    target = subprocess.Popen(["sleep", "600"])
    try:
        wait_port(lw_port)
        wait_port(min_port)
        with open(f"/proc/{target.pid}/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        path = f"/v1/lives/{target.pid}/{ticks}"
        import urllib.request

        with urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{lw_port}{path}", headers=AUTH)
        ) as r:
            answer = json.load(r)
        assert answer["state"] == "alive", answer
        results: dict[str, list[tuple[float, str]]] = {"lifewatch": [], "minimal": []}
        for _ in range(5):
            results["minimal"].append(wrk(f"http://127.0.0.1:{min_port}{path}", seconds, conns))
            results["lifewatch"].append(wrk(f"http://127.0.0.1:{lw_port}{path}", seconds, conns))
        for name, runs in results.items():
            rps = statistics.median(r for r, _ in runs)
            print(f"{name:<10} {rps:9.0f} req/s (runs: {', '.join(f'{r:.0f}' for r, _ in runs)});"
                  f" p99 {', '.join(p for _, p in runs)}")  # fmt: skip
        ratio = statistics.median(r for r, _ in results["lifewatch"]) / statistics.median(
            r for r, _ in results["minimal"]
        )
        print(f"lifewatch / minimal = {ratio:.0%} (target >= 70%), wrk -t1 -c{conns} -d{seconds}s")
    finally:
        for p in (lw, mini, target):
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
