"""Fork storm: what each way of watching costs a workload of short lives, and what it misses.

Run as root (gcc and Debian's auditd installed):

    .venv/bin/python -m bench.storm [--seconds 5] [--rounds 3] [--modes exit,exec]
        [--configs none,auditd,lifewatch,proc,audit,memory] [--clients 0] [--json FILE]

A compiled forker (bench/forker.c, built here with the system's gcc) runs on every core at
full rate for `--seconds`, recording each child's pid, start ticks and exit code. Configurations,
interleaved within each round (three rounds by default, medians and spread reported):

- `none`: nothing audits or listens;
- `auditd`: Debian's auditd registered and consuming the same rules lifewatch installs, with
  the same backlog limit and wait time;
- `lifewatch`: `lifewatch serve` with its default sources (audit + proc), a separate process;
- `proc`, `audit`: `lifewatch serve --sources proc` / `--sources audit`;
- `memory`: `lifewatch` with the durable journal off (`LIFEWATCH_STORE=false`): the cost of
  the journal on disk is `lifewatch` against `memory` (docs/performance.md).

For each: lives/s and its ratio to `none` of the same round; the daemon's CPU time per life
(utime + stime of auditd or lifewatch, until it has drained what the storm queued); the
kernel's `lost` counter delta; for lifewatch, `gap` events journaled, and lives missed: every
ground-truth life is checked with `POST /v1/lives/check` (must be `dead` with its exit code).
`--clients N` attaches N WebSocket clients streaming every death to each lifewatch run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.audit_forks import RULES, restore, start_auditd, status
from bench.auth import AUTH
from bench.auth import ENV as AUTH_ENV

HERE = Path(__file__).parent
FORKER = HERE / "out" / "forker"
WORKERS = os.cpu_count() or 2
LIFEWATCH = {"lifewatch": "audit,proc", "proc": "proc", "audit": "audit", "memory": "audit,proc",
             "boost": "audit,proc"}  # fmt: skip
# `boost`: `lifewatch` at nice -4, the priority Debian's auditd gives itself (auditd.conf
# priority_boost = 4) and packaging/lifewatch.service gives lifewatch (Nice=-4).
NICE = {"boost": -4}
# `lifewatch` runs as by default: the durable journal on (in the run's temporary state
# directory); `memory` is the same with it off (issue 11: within 5 % of each other).
ENV = {"memory": {"LIFEWATCH_STORE": "false"}}
# lifewatch's unicast settings (app/core/config.py defaults), given to auditd too.
BACKLOG_LIMIT, BACKLOG_WAIT = 8192, 15000
QUIET = 20  # events per second that count as the node's background, not the storm's tail


def build_forker() -> None:
    FORKER.parent.mkdir(exist_ok=True)
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(FORKER), str(HERE / "forker.c")],
                   check=True)  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (stat fields 14 and 15), in seconds."""
    rest = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of a process's main thread and of all its other threads (the store's
    writer, executors), from /proc/<pid>/task/*/stat."""
    main = other = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            rest = (task / "stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # a thread that ended
        cpu = (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
        if task.name == str(pid):
            main += cpu
        else:
            other += cpu
    return main, other


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def storm(mode: str, seconds: float, tmp: Path) -> list[tuple[int, int, int]]:
    outs = [tmp / f"lives.{i}" for i in range(WORKERS)]
    procs = [await asyncio.create_subprocess_exec(str(FORKER), mode, str(seconds), str(o))
             for o in outs]  # fmt: skip
    for p in procs:
        if await p.wait() != 0:
            raise RuntimeError("the forker failed")
    lives = []
    for o in outs:
        for line in o.read_text().splitlines():
            pid, ticks, code = line.split()
            lives.append((int(pid), int(ticks), int(code)))
    return lives


class Daemon:
    """`lifewatch serve` as users run it, on a free port, with its API as seen by clients."""

    def __init__(
        self, sources: str, tmp: Path, extra: dict[str, str] | None = None, nice: int = 0
    ) -> None:
        self.port = free_port()
        env = dict(os.environ, **AUTH_ENV, LIFEWATCH_PORT=str(self.port),
                   LIFEWATCH_STATE_DIR=str(tmp), LIFEWATCH_AUDIT_MODE="unicast",
                   **(extra or {}))  # fmt: skip
        cmd = [sys.executable, "-m", "app", "serve", "--sources", sources]
        if nice:
            cmd = ["nice", "-n", str(nice), *cmd]
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = aiohttp.ClientSession(headers=AUTH, timeout=aiohttp.ClientTimeout(total=120))
        self.odd: list[dict[str, Any]] = []  # missed or wrong lives: truth and answers

    async def node(self) -> dict[str, Any]:
        async with self.http.get(f"{self.url}/v1/node") as r:
            got: dict[str, Any] = await r.json()
            return got

    async def ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("lifewatch serve exited at start")
            with contextlib.suppress(aiohttp.ClientError):
                node = await self.node()
                if all(s["state"] == "ok" for s in node["sources"].values()):
                    return node
            if time.monotonic() > deadline:
                raise RuntimeError("lifewatch serve did not become ready")
            await asyncio.sleep(0.2)

    async def drained(self) -> dict[str, Any]:
        """The node once its journal has (almost) stopped moving for a second: the storm is
        digested. The node's own background (a canary, a cron job) still adds a few events."""
        last = (await self.node())["cursor"]
        while True:
            await asyncio.sleep(1.0)
            node = await self.node()
            if node["cursor"] - last <= QUIET:
                return node
            last = node["cursor"]

    async def check(self, host: str, lives: list[tuple[int, int, int]]) -> dict[str, int]:
        missed = wrong = 0
        for i in range(0, len(lives), 10_000):
            part = lives[i : i + 10_000]
            body = {"lives": [f"{host}/{pid}/{ticks}" for pid, ticks, _ in part]}
            async with self.http.post(f"{self.url}/v1/lives/check", json=body) as r:
                results = (await r.json())["results"]
            for (pid, ticks, code), got in zip(part, results, strict=True):
                if got["state"] != "dead":
                    missed += 1
                elif (got.get("exit") or {}).get("code") != code:
                    wrong += 1
                else:
                    continue
                if len(self.odd) < 5:  # what lifewatch says of the first few, for the record
                    async with self.http.get(f"{self.url}/v1/lives/{pid}") as r:
                        now = await r.json()
                    near = await self.near(host, pid, ticks)
                    self.odd.append({"truth": [pid, ticks, code], "answer": got, "pid_now": now,
                                     "near": near})  # fmt: skip
        return {"missed": missed, "wrong_exit": wrong}

    async def near(self, host: str, pid: int, ticks: int) -> list[dict[str, Any]]:
        """Lives lifewatch knows of `pid` started within 20 ticks of `ticks`: a life recorded
        with a start the kernel did not give shows here."""
        body = {"lives": [f"{host}/{pid}/{t}" for t in range(ticks - 20, ticks + 21) if t != ticks]}
        async with self.http.post(f"{self.url}/v1/lives/check", json=body) as r:
            results = (await r.json())["results"]
        seen: dict[str, dict[str, Any]] = {}
        for got in results:
            life = got.get("life")
            if got["state"] != "unknown" and life:
                seen[life["id"]] = {k: life.get(k) for k in ("start_ticks", "start_derived",
                                    "born_at", "state", "cause", "sources", "comm")}  # fmt: skip
        return list(seen.values())

    async def stop(self) -> None:
        await self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, 20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def stream_deaths(url: str, counts: list[int], i: int) -> None:
    """A client that reads every death as fast as it comes."""
    ws_url = url.replace("http", "ws") + "/v1/stream?types=died"
    async with aiohttp.ClientSession(headers=AUTH) as s, s.ws_connect(ws_url, max_msg_size=0) as ws:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            counts[i] += 1


async def run_lifewatch(name: str, mode: str, seconds: float, tmp: Path,
                        clients: int) -> dict[str, Any]:  # fmt: skip
    d = Daemon(LIFEWATCH[name], tmp, ENV.get(name), NICE.get(name, 0))
    readers: list[asyncio.Task[None]] = []
    try:
        node0 = await d.ready()
        counts = [0] * clients
        readers = [asyncio.create_task(stream_deaths(d.url, counts, i)) for i in range(clients)]
        await asyncio.sleep(0.5 if clients else 0)
        cpu0, lost0 = cpu_seconds(d.proc.pid), (await status()).lost
        lives = await storm(mode, seconds, tmp)
        node1 = await d.drained()
        cpu = cpu_seconds(d.proc.pid) - cpu0
        out = {"lives": len(lives), "cpu_us_per_life": round(cpu / len(lives) * 1e6, 1),
               "kernel_lost": (await status()).lost - lost0,
               "gaps": node1["events"].get("gap", 0) - node0["events"].get("gap", 0),
               **await d.check(node0["host"], lives)}  # fmt: skip
        if clients:
            out["client_deaths_min"] = min(counts)
        # The tracker's own account of reports it could not place (0 in a clean run).
        t0, t1 = node0.get("tracker", {}), node1.get("tracker", {})
        odd = {k: t1[k] - t0.get(k, 0) for k in ("undated_forks", "early_forks", "stale_exits",
               "unidentified_exits", "missed_deaths") if t1.get(k, 0) - t0.get(k, 0)}  # fmt: skip
        if odd:
            out["tracker"] = odd
        store = node1.get("store", {})
        if store.get("state") == "on":
            out |= {"db_dropped": store["dropped"], "db_commit_max_ms":
                    round(store["commit_max_seconds"] * 1000, 1), "db_mb":
                    round(store["bytes"] / 1e6, 1)}  # fmt: skip
        for odd in d.odd:
            print("odd life:", json.dumps(odd), file=sys.stderr, flush=True)
        return out
    finally:
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await d.stop()


async def run_auditd(mode: str, seconds: float, tmp: Path) -> dict[str, Any]:
    daemon = await asyncio.to_thread(start_auditd, tmp)
    try:
        for rule in RULES:
            subprocess.run(["auditctl", *rule], check=True, capture_output=True)
        subprocess.run(["auditctl", "-b", str(BACKLOG_LIMIT), "--backlog_wait_time",
                        str(BACKLOG_WAIT)], check=True, capture_output=True)  # fmt: skip
        cpu0, lost0 = cpu_seconds(daemon.pid), (await status()).lost
        lives = await storm(mode, seconds, tmp)
        while (await status()).backlog:  # auditd still writing what the storm queued
            await asyncio.sleep(0.1)
        cpu = cpu_seconds(daemon.pid) - cpu0
        return {"lives": len(lives), "cpu_us_per_life": round(cpu / len(lives) * 1e6, 1),
                "kernel_lost": (await status()).lost - lost0}  # fmt: skip
    finally:
        for rule in RULES:
            subprocess.run(["auditctl", "-d", *rule[1:]], capture_output=True)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)


async def scenario(name: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    found = await status()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        try:
            if name == "none":
                lives = await storm(mode, args.seconds, tmp)
                result: dict[str, Any] = {"lives": len(lives)}
            elif name == "auditd":
                result = await run_auditd(mode, args.seconds, tmp)
            else:
                result = await run_lifewatch(name, mode, args.seconds, tmp, args.clients)
        finally:
            await restore(found)
    result["lives_per_s"] = round(result["lives"] / args.seconds)
    return result


def summary(runs: list[dict[str, Any]], key: str) -> str:
    vals = [r[key] for r in runs if key in r]
    if not vals:
        return "-"
    med = statistics.median(vals)
    return f"{med:g} ({min(vals):g}..{max(vals):g})" if len(vals) > 1 else f"{med:g}"


async def main(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        sys.exit("run as root")
    build_forker()
    configs, modes = args.configs.split(","), args.modes.split(",")
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rnd in range(args.rounds):
        for mode in modes:
            base = None
            for name in configs:
                r = await scenario(name, mode, args)
                if name == "none":
                    base = r["lives_per_s"]
                if base:
                    r["ratio"] = round(r["lives_per_s"] / base, 3)
                runs.setdefault((mode, name), []).append(r)
                print(f"round {rnd + 1} fork+{mode} {name:<9} {json.dumps(r)}", flush=True)
    keys = ("lives_per_s", "ratio", "cpu_us_per_life", "kernel_lost", "gaps", "missed",
            "wrong_exit", "client_deaths_min", "db_dropped", "db_commit_max_ms")  # fmt: skip
    print(
        f"\nmedian (min..max) of {args.rounds} rounds, {args.seconds:g} s each, "
        f"{WORKERS} forkers, {args.clients} streaming clients"
    )
    print(" | ".join(["workload", "config", *keys]))
    for (mode, name), rs in runs.items():
        print(" | ".join([f"fork+{mode}", name, *(summary(rs, k) for k in keys)]))
    if args.json:
        Path(args.json).write_text(json.dumps({f"{m}/{n}": rs for (m, n), rs in runs.items()}))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # still restore the kernel
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default="exit,exec")
    ap.add_argument("--configs", default="none,auditd,lifewatch,proc,audit")
    ap.add_argument("--clients", type=int, default=0)
    ap.add_argument("--json")
    asyncio.run(main(ap.parse_args()))
