"""Restart with a full history: how long from `lifewatch serve` starting to answering again.

Run as root (gcc installed):

    .venv/bin/python -m bench.restart [--lives 100000] [--restarts 3] [--history-bytes N]

One daemon (default sources, its own temporary state directory) watches the compiled
forker (bench/forker.c) until its database holds `--lives` dead lives; then, `--restarts`
times: SIGTERM (timed until the process exits), start again, and time until a lookup of a
life from the storm answers `dead` with its exit code (the daemon serving its history
again), polling every 5 ms. Also reported: the database's size and the daemon's own log
line of what it read back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.audit_forks import restore, status
from bench.storm import FORKER, build_forker, free_port


def get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


EXTRA: dict[str, str] = {}  # --history-bytes


def start(state: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, LIFEWATCH_PORT=str(port), LIFEWATCH_STATE_DIR=str(state),
               LIFEWATCH_AUDIT_MODE="unicast", **EXTRA)  # fmt: skip
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "app", "serve"], env=env, stderr=f)


def stop(proc: subprocess.Popen[bytes]) -> float:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    return time.monotonic() - t0


def wait_answer(url: str, proc: subprocess.Popen[bytes], want: tuple[int, int, int]) -> None:
    pid, ticks, code = want
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("lifewatch serve exited")
        try:
            got = get(f"{url}/v1/lives/{pid}/{ticks}")
            if got["state"] == "dead" and (got["exit"] or {}).get("code") == code:
                return
            if got["state"] in ("unknown", "alive"):
                raise RuntimeError(f"a life of the history answers {got['state']}: {got}")
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.005)
    raise RuntimeError("not serving within 60 s")


def fill(url: str, state: Path, lives: int) -> list[tuple[int, int, int]]:
    """Storm until the database holds `lives` dead lives; the storm's truth."""
    truth: list[tuple[int, int, int]] = []
    db = state / "lifewatch.db"
    n = 0
    while n < lives:
        outs = [state / f"lives.{i}" for i in range(2)]
        procs = [subprocess.Popen([str(FORKER), "exit", "5", str(o)]) for o in outs]
        for p in procs:
            p.wait()
        for o in outs:
            for line in o.read_text().splitlines():
                pid, ticks, code = map(int, line.split())
                truth.append((pid, ticks, code))
        time.sleep(2)  # digested and committed
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        n = c.execute("SELECT count(*) FROM lives WHERE died_at IS NOT NULL").fetchone()[0]
        c.close()
        print(f"history: {n} dead lives on disk", flush=True)
    return truth


async def main(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        sys.exit("run as root")
    if args.history_bytes:
        EXTRA["LIFEWATCH_HISTORY_BYTES"] = str(args.history_bytes)
    build_forker()
    found = await status()
    try:
        with tempfile.TemporaryDirectory() as t:
            state = Path(t)
            port, log = free_port(), state / "serve.log"
            url = f"http://127.0.0.1:{port}"
            proc = start(state, port, log)
            wait_answer_node(url, proc)
            truth = fill(url, state, args.lives)
            # The newest lives: those the registry keeps (history = 100,000 dead lives).
            sample = random.Random(1).choice(truth[-50_000:])
            print(f"node before: {json.dumps(get(url + '/v1/node')['store'])}")
            starts, stops = [], []
            for i in range(args.restarts):
                stops.append(stop(proc))
                t0 = time.monotonic()
                proc = start(state, port, log)
                wait_answer(url, proc, sample)
                starts.append(time.monotonic() - t0)
                node = get(url + "/v1/node")
                print(f"restart {i + 1}: stop {stops[-1]:.2f} s, serving again {starts[-1]:.2f} "
                      f"s; lives dead {node['lives_dead']}, db {node['store']['bytes'] / 1e6:.0f} "
                      "MB", flush=True)  # fmt: skip
                await asyncio.sleep(1)
            stop(proc)
            read_back = [ln for ln in log.read_text().splitlines() if "read back" in ln]
            print("\n".join(read_back[-2:]))
            med, lo, hi = statistics.median(starts), min(starts), max(starts)
            print(f"\nmedian of {args.restarts}: serving again {med:.2f} s ({lo:.2f}..{hi:.2f}); "
                  f"stop {statistics.median(stops):.2f} s")  # fmt: skip
    finally:
        await restore(found)


def wait_answer_node(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("lifewatch serve exited")
        try:
            node = get(url + "/v1/node")
            if all(s["state"] == "ok" for s in node["sources"].values()):
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError("lifewatch serve did not become ready")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # still restore the kernel
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lives", type=int, default=100_000)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--history-bytes", type=int, default=0,
                    help="the daemon's history_bytes (default: its own, 64 MiB)")  # fmt: skip
    asyncio.run(main(ap.parse_args()))
