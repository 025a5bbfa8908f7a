"""RSS per live process in the real daemon, with 10,000 real processes (target <= 500 B).

Run (root): .venv/bin/python -m bench.memory_lives [--n 10000] [--runs 3] [--port 7880] [--fill]

Each run starts `lifewatch serve --sources proc` as its own process, waits until it answers,
reads its RSS (smaps_rollup `Rss:`), has a helper start N real `sleep 600` processes, waits
until the daemon's `/v1/node` `lives_alive` has grown by N, lets it settle, reads its RSS again
and reports the growth per live process; then the sleepers are killed and the daemon stopped.
The figure is the median of the runs.

Each sleeper adds two journal events (`born`, `exec`). The journal keeps its newest
`journal_memory` events (1,024) in memory and reads older ones back from the database, so
a fresh daemon's figure includes at most that many; before 2026-12-02 memory held all
`journal_size` (50,000), and 10,000 sleepers cost 1,125 B each. With --fill, short-lived
children fill the journal first (and leave dead lives in the history, also bounded), so the
figure is what each live process itself costs.

The sleepers are forked by a small helper (`python -S`), not by this bench: each child sets
PR_SET_PDEATHSIG (kept across execve) before it execs, so none outlives the helper, and the
helper kills and reaps them all when its stdin closes, which also happens if this bench dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp

from bench.auth import AUTH, ENV
from bench.death_latency import stop_daemon, wait_ready

# The helper: forks N children that exec `sleep 600`, prints "ready", then waits for its
# stdin to close and kills and reaps them all.
HELPER = r"""
import ctypes, os, signal, sys
n = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
parent = os.getpid()
kids = []
try:
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the helper
            if os.getppid() != parent:
                os._exit(1)
            os.execv("/bin/sleep", ["sleep", "600"])
        kids.append(pid)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.read()
finally:
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for pid in kids:
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass
"""


# Forks N children that exit at once, one at a time (each reaped before the next).
FILLER = r"""
import os, sys
for _ in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
"""


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no Rss line")


async def lives_alive(s: aiohttp.ClientSession, url: str) -> int:
    async with s.get(f"{url}/v1/node") as r:
        return int((await r.json())["lives_alive"])


async def settled_rss(pid: int, quiet: float = 1.0, timeout: float = 30.0) -> int:
    """RSS once it has not moved by more than 64 KiB for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = rss_bytes(pid), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        now = rss_bytes(pid)
        if abs(now - last) > 64 << 10:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    return last


async def seen_all(s: aiohttp.ClientSession, url: str, base: int, n: int) -> None:
    """Until `lives_alive` has grown by n. The machine is shared: other processes come and
    go meanwhile, so a growth within 50 of n that has stopped moving for 3 s also counts
    (the sleepers are then counted one by one, after the RSS reading)."""
    t0 = time.monotonic()
    last, since = -1, t0
    while True:
        now = await lives_alive(s, url)
        if now >= base + n:
            return
        if now != last:
            last, since = now, time.monotonic()
        elif now >= base + n - 50 and time.monotonic() - since >= 3:
            return
        if time.monotonic() - t0 > 120:
            raise SystemExit(f"daemon saw {now - base} of {n}")
        await asyncio.sleep(0.2)


async def sleepers_alive(s: aiohttp.ClientSession, url: str, helper: int) -> int:
    """The helper's children the daemon has alive, page by page."""
    count, after = 0, ""
    while True:
        q = f"{url}/v1/lives?ppid={helper}&state=alive&limit=10000{after}"
        async with s.get(q) as r:
            page = await r.json()
        count += sum(1 for x in page["lives"] if x["comm"] == "sleep")
        if page["next"] is None:
            return count
        after = f"&after={page['next']}"


async def fill_journal(s: aiohttp.ClientSession, url: str) -> None:
    """Run short lives until the journal's memory is full (journal_memory events, or all
    journal_size with the durable journal off; two per life)."""
    async with s.get(f"{url}/v1/node") as r:
        size = int((await r.json())["journal_memory"])
    subprocess.run([sys.executable, "-S", "-c", FILLER, str(size // 2 + 1000)], check=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        async with s.get(f"{url}/v1/node") as r:
            node = await r.json()
        if node["cursor"] - node["oldest_cursor"] + 1 >= size:
            return
        await asyncio.sleep(0.2)
    raise SystemExit("the journal did not fill")


async def grow(url: str, daemon: int, n: int, fill: bool) -> tuple[int, int, float]:
    """RSS before and after N sleepers are alive, and seconds until the daemon had them."""
    async with aiohttp.ClientSession(headers=AUTH) as s:
        await asyncio.sleep(1.0)  # start-up garbage, first canary round
        if fill:
            await fill_journal(s, url)
        base = await lives_alive(s, url)
        before = await settled_rss(daemon)
        helper = subprocess.Popen(
            [sys.executable, "-S", "-c", HELPER, str(n)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        try:
            t0 = time.monotonic()
            assert helper.stdout is not None
            if helper.stdout.readline() != b"ready\n":
                raise SystemExit("the helper could not start its sleepers")
            await seen_all(s, url, base, n)
            took = time.monotonic() - t0
            after = await settled_rss(daemon)
            mine = await sleepers_alive(s, url, helper.pid)
            if mine != n:
                raise SystemExit(f"the daemon has {mine} of the {n} sleepers alive")
        finally:
            assert helper.stdin is not None
            helper.stdin.close()  # the helper kills and reaps its sleepers
            helper.wait(60)
    return before, after, took


def one_run(n: int, port: int, fill: bool) -> float:
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, **ENV, LIFEWATCH_STATE_DIR=tempfile.mkdtemp(prefix="lw-bench-"))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port), "--sources", "proc",
         "--log-level", "WARNING"],
        env=env,
    )  # fmt: skip
    try:
        asyncio.run(wait_ready(url))
        before, after, took = asyncio.run(grow(url, daemon.pid, n, fill))
    finally:
        stop_daemon(daemon)
    per = (after - before) / n
    print(f"rss {before / 1e6:.1f} -> {after / 1e6:.1f} MB with {n} more live processes "
          f"(seen in {took:.1f} s): {per:.0f} B per live process", flush=True)  # fmt: skip
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="sleepers (default 10,000)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--port", type=int, default=7880)
    ap.add_argument("--fill", action="store_true", help="fill the journal first (see above)")
    args = ap.parse_args()
    # Root is not bound by RLIMIT_NPROC, anyone else may be: raise it as far as allowed.
    _, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NPROC, (hard, hard))
    runs = [one_run(args.n, args.port, args.fill) for _ in range(args.runs)]
    journal = "full" if args.fill else "with room"
    each = ", ".join(f"{r:.0f}" for r in runs)
    print(f"journal {journal}: median {statistics.median(runs):.0f} B per live process over "
          f"{len(runs)} runs ({each}; target <= 500)")  # fmt: skip


if __name__ == "__main__":
    main()
