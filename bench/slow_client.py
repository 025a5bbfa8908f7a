"""A client that stops reading for a while: it is told `lagging`, never dropped, and loses
nothing (issue 9, the overload policy seen from a client).

Run (root): .venv/bin/python -m bench.slow_client [--pause 30] [--rate 500] [--sources proc]

Starts `lifewatch serve`, a background forker (`--rate` deaths/s), and a minimal WebSocket
client on `/v1/stream?types=died` with a small receive buffer. The client reads for 2 s,
stops reading for `--pause` s, then reads again until it has caught up. Every `died` cursor
it received is compared with the journal's own list (`GET /v1/events?types=died`): none may
be missing or repeated. Reports the `lagging` message(s) it got, and whether the server
closed it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

from bench.auth import AUTH, ENV
from bench.death_latency import RawStream, stop_daemon, wait_ready
from bench.fanout import FORKER


def journal_deaths(port: int, after: int, until: int) -> list[int]:
    """The cursors of every `died` the journal holds after `after`, up to `until`."""
    out: list[int] = []
    while after < until:
        url = f"http://127.0.0.1:{port}/v1/events?types=died&limit=10000&after={after}"
        with urllib.request.urlopen(urllib.request.Request(url, headers=AUTH), timeout=30) as r:
            page: dict[str, Any] = json.load(r)
        if page["reset"]:
            raise SystemExit(f"the journal no longer holds cursor {after}")
        out += [e["cursor"] for e in page["events"] if e["cursor"] <= until]
        if page["next"] == after:
            break
        after = page["next"]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    port = args.port
    env = dict(os.environ, **ENV, LIFEWATCH_STATE_DIR=tempfile.mkdtemp(prefix="lw-bench-"),
               LIFEWATCH_CANARY_INTERVAL="0")  # fmt: skip
    cmd = [sys.executable, "-m", "app", "serve", "--port", str(port), "--sources", args.sources,
           "--log-level", "WARNING"]  # fmt: skip
    daemon = subprocess.Popen(cmd, env=env)
    forker = None
    try:
        asyncio.run(wait_ready(f"http://127.0.0.1:{port}"))
        forker = subprocess.Popen([sys.executable, "-S", "-c", FORKER.format(rate=args.rate)])
        ws = RawStream(port, "/v1/stream?types=died")
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        got: list[dict[str, Any]] = []
        read_for(ws, got, time.monotonic() + 2.0)
        first = got[0]["cursor"] if got else 0
        time.sleep(args.pause)  # not reading: the daemon's buffer for us fills
        forker.kill()
        forker.wait()
        with urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{port}/v1/node", headers=AUTH), timeout=30
        ) as r:
            now = json.load(r)["cursor"]
        truth = journal_deaths(port, first - 1, now)
        closed = read_for(ws, got, time.monotonic() + 60.0, truth[-1])
        deaths = [e["cursor"] for e in got if e["type"] == "died" and e["cursor"] <= truth[-1]]
        lagging = [e for e in got if e["type"] == "lagging"]
        return {
            "pause_s": args.pause, "deaths_received": len(deaths),
            "deaths_in_journal": len(truth), "missing": len(set(truth) - set(deaths)),
            "repeated": len(deaths) - len(set(deaths)),
            "in_order": deaths == sorted(deaths), "lagging": lagging,
            "other": sorted({e["type"] for e in got} - {"died", "lagging"}),
            "closed_by_server": closed,
        }  # fmt: skip
    finally:
        if forker is not None:
            forker.kill()
            forker.wait()
        stop_daemon(daemon)


def read_for(
    ws: RawStream, got: list[dict[str, Any]], deadline: float, upto: int | None = None
) -> str | None:
    """Read until `deadline`, or until cursor `upto` came (caught up); returns why the
    server closed the stream, if it did."""
    while True:
        try:
            ev = json.loads(ws.text(deadline - time.monotonic()))
        except TimeoutError:
            return None
        except SystemExit as e:
            return str(e)
        got.append(ev)
        if upto is not None and ev.get("cursor", 0) >= upto:
            return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pause", type=float, default=30.0)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--sources", default="proc")
    ap.add_argument("--port", type=int, default=7881)
    print(json.dumps(run(ap.parse_args()), indent=1))


if __name__ == "__main__":
    main()
