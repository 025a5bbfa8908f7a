"""Cluster latency and loss (issue 12): kill -9 on node a -> a `scope=cluster` client on node c,
idle, through a JetStream leader loss and across faults; remote lookups; a silent node.

Three real nats-servers (one JetStream cluster, replicas 3), three real `lifewatch serve`
daemons (proc source, test-only boot ids and process-subtree scopes), each on its own server.
Run as root, alone (the kernel lock), from the repository:

    flock /tmp/lifewatch-kernel.lock .venv/bin/python -m bench.cluster_latency [--deaths 1000]

Phases, each on fresh lives of a (children of a's nursery, `sleep 600`):
  idle      deaths spaced 20 ms;
  leader    the deaths stream's leader moved to b's server, which is then killed -9 and
            restarted while deaths go on;
  faults    daemon a SIGSTOPped 2 s, c's own server killed -9 (c reconnects elsewhere:
            its core subscription misses what came meanwhile, the stored path replays it),
            while deaths go on;
then `lost` and `doubled` over every death, remote lookups (GET on c of a's live lives:
request-reply to a), and lookups of a silent node (a stopped: within its unreachable window
each waits for the ask timeout; after it, answered at once; a node nobody serves: no
responders).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.kernel.cluster_nodes import Node, make_nodes
from tests.kernel.test_cluster import all_up, move_leader
from tests.natsd import NatsServer, nats_servers

SPACING = 0.02


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))] * 1000 if s else float("nan")


def summary(name: str, lat: list[float]) -> str:
    return (f"{name}: n={len(lat)} p50 {pct(lat, 0.5):.2f} ms, p99 {pct(lat, 0.99):.2f} ms, "
            f"max {pct(lat, 1.0):.2f} ms")  # fmt: skip


class Client:
    """c's scope=cluster client: when each of a's deaths arrived, and how many times."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.got: dict[int, list[float]] = {}
        self.ready = asyncio.Event()

    async def run(self, session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(self.url, max_msg_size=0) as ws:
            self.ready.set()
            async for msg in ws:
                ev = json.loads(msg.data)
                if ev["type"] == "died" and ev.get("host") == "a":
                    self.got.setdefault(ev["life"]["pid"], []).append(time.monotonic())


async def kill_all(lives: list[tuple[int, int]], kills: dict[int, float],
                   during: Callable[[int], Any] | None = None) -> None:  # fmt: skip
    for i, (pid, _) in enumerate(lives):
        if during is not None:
            await during(i)
        os.kill(pid, signal.SIGKILL)
        kills[pid] = time.monotonic()
        await asyncio.sleep(SPACING)


async def settle(client: Client, kills: dict[int, float], a: Node, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p in client.got for p in kills) and a.get("/v1/nodes")["outbox"] == 0:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.5)  # stored copies still coming would show as doubles


def latencies(client: Client, kills: dict[int, float], pids: list[int]) -> list[float]:
    return [client.got[p][0] - kills[p] for p in pids if p in client.got]


async def spawn(a: Node, n: int, c: Node) -> list[tuple[int, int]]:
    lives = [a.spawn("sleep", "600") for _ in range(n)]
    last = a.life(*lives[-1])
    while c.get(f"/v1/lives/{last}")["state"] != "alive":
        await asyncio.sleep(0.05)
    return lives


async def lookups(
    session: aiohttp.ClientSession, node: Node, ids: list[str], rounds: int
) -> list[float]:
    out = []
    for i in range(rounds):
        t0 = time.perf_counter()
        async with session.get(f"http://127.0.0.1:{node.port}/v1/lives/{ids[i % len(ids)]}") as r:
            body = await r.json()
        out.append(time.perf_counter() - t0)
        assert body["state"] in ("alive", "unknown"), body
    return out


async def main(deaths: int, tmp: Path) -> None:
    with nats_servers(tmp / "nats", 3) as servers:
        urls = [s.url for s in servers]
        nodes = make_nodes(tmp, ["a", "b", "c"], urls, replicas=3)
        for i, n in enumerate(nodes):
            n.nats = [urls[i]]
        a, b, c = nodes
        try:
            for n in nodes:
                n.start()
            await all_up(nodes)
            await run(deaths, servers, a, b, c)
        finally:
            for n in nodes:
                n.close()


async def run(deaths: int, servers: list[NatsServer], a: Node, b: Node, c: Node) -> None:
    per = deaths // 3
    kills: dict[int, float] = {}
    async with aiohttp.ClientSession() as session:
        client = Client(c.ws_url("scope=cluster&types=died&host=a"))
        task = asyncio.create_task(client.run(session))
        await client.ready.wait()

        idle = await spawn(a, per, c)
        await kill_all(idle, kills)
        await settle(client, kills, a)
        print(summary("idle", latencies(client, kills, [p for p, _ in idle])))

        lead = await spawn(a, per, c)
        leader = await move_leader(urls_of(servers)[2], servers[1].name)
        victim = next(s for s in servers if s.name == leader)

        async def lose_leader(i: int) -> None:
            if i == per // 10:
                victim.send(signal.SIGKILL)
            if i == per * 8 // 10:
                await asyncio.to_thread(victim.start)

        await kill_all(lead, kills, lose_leader)
        await settle(client, kills, a)
        print(summary(f"leader {leader} killed -9", latencies(client, kills, [p for p, _ in lead])))

        rest = await spawn(a, deaths - 2 * per, c)

        later: list[asyncio.Task[Any]] = []

        async def after(delay: float, fn: Callable[[], Any]) -> None:
            await asyncio.sleep(delay)
            await asyncio.to_thread(fn)

        async def faults(i: int) -> None:
            n = len(rest)
            if i == n // 10:
                a.send(signal.SIGSTOP)
                later.append(asyncio.create_task(after(2.0, lambda: a.send(signal.SIGCONT))))
            if i == n // 2:
                servers[2].send(signal.SIGKILL)
                later.append(asyncio.create_task(after(1.5, servers[2].start)))

        try:
            await kill_all(rest, kills, faults)
            await asyncio.gather(*later)
        finally:
            a.send(signal.SIGCONT)
        await settle(client, kills, a, 90)
        print(summary("faults (incl. stopped/disconnected)",
                      latencies(client, kills, [p for p, _ in rest])))  # fmt: skip
        lost = [p for p in kills if p not in client.got]
        doubled = [p for p, ts in client.got.items() if len(ts) > 1]
        print(f"deaths {len(kills)}: lost {len(lost)}, doubled {len(doubled)}")
        print(f"a publish: {a.get('/v1/nodes')['publish']}")
        print(f"c received: {c.get('/v1/nodes')['received']}")

        alive = await spawn(a, 50, c)
        ids = [a.life(*x) for x in alive]
        await lookups(session, c, ids, 200)  # warm
        print(summary("remote lookup (c asks a)", await lookups(session, c, ids, 2000)))
        print(summary("own lookup (a)", await lookups(session, a, ids, 2000)))
        timeout = 0.25
        a.send(signal.SIGSTOP)
        try:
            silent = await lookups(session, c, ids, 3)  # within the unreachable window
            print(summary(f"silent node, still 'up' (ask timeout {timeout * 1000:.0f} ms)",
                          silent))  # fmt: skip
            print(f"  over the timeout: max {(max(silent) - timeout) * 1000:.2f} ms")
            await asyncio.sleep(1.5)
            print(summary("silent node, unreachable", await lookups(session, c, ids, 500)))
        finally:
            a.send(signal.SIGCONT)
        nobody = await lookups(session, c, ["zz/1/100"], 500)
        print(summary("node nobody serves (no responders)", nobody))
        for pid, _ in alive:
            os.kill(pid, signal.SIGKILL)
        task.cancel()


def urls_of(servers: list[NatsServer]) -> list[str]:
    return [s.url for s in servers]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--deaths", type=int, default=1000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="lw-cluster-") as d:
        asyncio.run(main(args.deaths, Path(d)))
