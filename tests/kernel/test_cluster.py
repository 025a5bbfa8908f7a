"""The cluster against the real engine: real nats-servers, three real `lifewatch serve`
daemons (one machine, three node names, test-only boot ids and process-subtree scopes), real
processes killed with SIGKILL, daemons stopped with SIGSTOP and restarted with a new boot.

The issue's three scenarios (issue 12, "Must show"): a death on A reaches a scope=cluster
client on C; a stopped A is `unknown` (never `dead`) on B and C within 1.5 s and its deaths
meanwhile arrive once each after SIGCONT; A back with a new boot id makes its old lives
`dead` (`node_rebooted`) on B and C within 1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.helpers import AUTH
from tests.helpers import wait_until_blocking as until
from tests.kernel.cluster_nodes import Node, make_nodes
from tests.natsd import NatsServer, nats_servers


@pytest.fixture
def one_server(tmp_path: Path) -> Iterator[list[NatsServer]]:
    with nats_servers(tmp_path / "nats", 1) as servers:
        yield servers


@pytest.fixture
async def nodes(tmp_path: Path, one_server: list[NatsServer]) -> AsyncIterator[list[Node]]:
    ns = make_nodes(tmp_path, ["a", "b", "c"], [s.url for s in one_server])
    try:
        for n in ns:
            n.start()
        await all_up(ns)
        yield ns
    finally:
        for n in ns:
            n.close()


async def all_up(ns: list[Node]) -> None:
    """Every node sees every other up, and its stored path ready."""

    def ready() -> bool:
        for n in ns:
            got = n.get("/v1/nodes")
            states = {p["name"]: p["state"] for p in got.get("peers", [])}
            others = {m.name for m in ns if m is not n}
            if got.get("stored_path") != "ready" or any(states.get(o) != "up" for o in others):
                return False
        return True

    await until(ready, 20)


def state_is(n: Node, life: str, state: str) -> Callable[[], bool]:
    return lambda: bool(n.get(f"/v1/lives/{life}")["state"] == state)


def unreachable_peers(n: Node) -> Callable[[], int]:
    return lambda: int(n.get("/v1/nodes")["peers_by_state"]["unreachable"])


class Collector:
    """A scope=cluster WebSocket client: every event it receives, with the time it came."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        async with websockets.connect(self.url, max_size=None, additional_headers=AUTH) as ws:
            self.ready.set()
            async for raw in ws:
                self.events.append((time.monotonic(), json.loads(raw)))

    def deaths(self, host: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == "died" and e.get("host") == host]

    def died(self, node: Node, pid: int) -> list[dict[str, Any]]:
        return [e for e in self.deaths(node.name) if e["life"]["pid"] == pid]


async def test_death_on_a_reaches_a_cluster_client_on_c(nodes: list[Node]) -> None:
    a, b, c = nodes
    pid, ticks = a.spawn("sleep", "60")
    await until(lambda: b.get(f"/v1/lives/{a.life(pid, ticks)}")["state"] == "alive")
    async with Collector(c.ws_url("scope=cluster&types=died,node")) as col:
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        await until(lambda: col.died(a, pid), 5, 0.002)
        (ev,) = col.died(a, pid)
        assert ev["host"] == "a" and ev["life"]["id"].startswith(f"a/{pid}/")
        assert ev["life"]["exit"]["signal"] == 9
        print(f"kill -9 on a -> died on c's stream in {(time.monotonic() - t0) * 1000:.1f} ms")
        await asyncio.sleep(0.5)  # the stored copy (JetStream) comes too: dropped as a repeat
        assert len(col.died(a, pid)) == 1
    # A client resumes on another node from the per-host cursor it holds (origin_cursor).
    pid2, ticks2 = a.spawn("sleep", "60")
    await until(state_is(b, a.life(pid2, ticks2), "alive"))
    mark = f"a:{ev['origin_cursor']}"
    os.kill(pid2, signal.SIGKILL)
    await until(state_is(b, a.life(pid2, ticks2), "dead"))
    async with Collector(b.ws_url(f"scope=cluster&types=died&cluster_cursor={mark}")) as col:
        await until(lambda: col.died(a, pid2), 5)
        assert not col.died(a, pid)  # had it already, on c
    # Every node answers for it: b from the death it holds, c too, a itself from its registry.
    for n in (a, b, c):
        got = n.get(f"/v1/lives/{a.life(pid, ticks)}")
        assert got["state"] == "dead", (n.name, got)
        assert got["exit"]["signal"] == 9


async def test_stopped_daemon_is_unknown_never_dead_then_its_deaths_arrive_once(
    nodes: list[Node],
) -> None:
    a, b, c = nodes
    lives = [a.spawn("sleep", "60") for _ in range(5)]
    ids = [a.life(pid, ticks) for pid, ticks in lives]
    for n in (b, c):
        for i in ids:
            await until(state_is(n, i, "alive"))
    answers: list[tuple[str, float, str]] = []  # (node, seconds after SIGSTOP, state)

    def unknown_on(n: Node, t0: float) -> bool:
        got = n.get(f"/v1/lives/{ids[0]}")
        answers.append((n.name, time.monotonic() - t0, got["state"]))
        return bool(got["state"] == "unknown" and got["reason"])

    async with Collector(c.ws_url("scope=cluster&types=died,node")) as col:
        a.send(signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            await until(lambda: unknown_on(b, t0), 3, 0.02)
            await until(lambda: unknown_on(c, t0), 3, 0.02)
            took = max(t for _, t, s in answers if s == "unknown")
            print(f"SIGSTOP a -> its life unknown on b and c after {took * 1000:.0f} ms")
            assert took <= 1.5
            # Deaths while its node is stopped: nobody may call them dead yet.
            for pid, _ in lives[:3]:
                os.kill(pid, signal.SIGKILL)
            for n in (b, c):
                await until(unreachable_peers(n), 3)
                for i in ids:
                    got = n.get(f"/v1/lives/{i}")
                    assert got["state"] == "unknown", (n.name, got)
                    assert "unreachable" in got["reason"] and got["since"], got
            assert all(s != "dead" for _, _, s in answers)
        finally:
            a.send(signal.SIGCONT)
        for pid, _ in lives[:3]:
            await until(functools.partial(col.died, a, pid), 10)
        await asyncio.sleep(1.0)  # the stored copies come as well: each is dropped as a repeat
        for pid, _ in lives[:3]:
            assert len(col.died(a, pid)) == 1, col.died(a, pid)
        assert not [e for e in col.deaths(a.name) if e["life"]["pid"] in {p for p, _ in lives[3:]}]
        nodes_ev = [e for _, e in col.events if e["type"] == "node" and e["host"] == "a"]
        assert [e["state"] for e in nodes_ev] == ["unreachable", "up"]
    for n in (b, c):
        for i in ids[:3]:
            assert n.get(f"/v1/lives/{i}")["state"] == "dead"
        for i in ids[3:]:
            assert n.get(f"/v1/lives/{i}")["state"] == "alive"


async def test_node_back_with_a_new_boot_makes_its_old_lives_dead(nodes: list[Node]) -> None:
    a, b, c = nodes
    lives = [a.spawn("sleep", "60") for _ in range(3)]
    ids = [a.life(pid, ticks) for pid, ticks in lives]
    for n in (b, c):
        for i in ids:
            await until(state_is(n, i, "alive"))
    async with Collector(c.ws_url("scope=cluster&host=a")) as col:
        a.stop(signal.SIGKILL)  # the daemon dies; its processes live on (same kernel here)
        await until(unreachable_peers(b), 3)
        assert b.get(f"/v1/lives/{ids[0]}")["state"] == "unknown"
        old = a.boot_file.read_text().strip()
        new = a.new_boot()
        a.start()
        back = time.monotonic()

        def all_dead(n: Node) -> bool:
            got = n.post("/v1/lives/check", {"lives": ids})["results"]
            return all(r["state"] == "dead" and r["life"]["cause"] == "node_rebooted" for r in got)

        await until(lambda: all_dead(b) and all_dead(c), 5, 0.02)
        took = time.monotonic() - back
        print(f"a back with a new boot -> its old lives dead on b and c after {took * 1000:.0f} ms")
        assert took <= 1.0
        await until(lambda: len(col.deaths("a")) >= 3, 3)
        deaths = col.deaths("a")
        assert sorted(e["life"]["pid"] for e in deaths) == sorted(p for p, _ in lives)
        assert {e["life"]["cause"] for e in deaths} == {"node_rebooted"}
        rebooted = [e for _, e in col.events if e["type"] == "node" and e["state"] == "rebooted"]
        assert rebooted and rebooted[0]["old_boot_id"] == old and rebooted[0]["boot_id"] == new


async def test_batch_check_across_hosts_and_a_remote_follow(nodes: list[Node]) -> None:
    a, b, c = nodes
    (a1, a1t), (a2, a2t) = a.spawn("sleep", "60"), a.spawn("sleep", "60")
    b1, b1t = b.spawn("sleep", "60")
    asked = [a.life(a1, a1t), a.life(a2, a2t), b.life(b1, b1t), "zz/1/100", "a/x/1",
             a.life(a1, a1t + 5)]  # fmt: skip
    t0 = time.monotonic()
    got = (await asyncio.to_thread(c.post, "/v1/lives/check", {"lives": asked}))["results"]
    print(f"batch of {len(asked)} across 3 hosts: {(time.monotonic() - t0) * 1000:.1f} ms")
    assert [r["state"] for r in got] == ["alive", "alive", "alive", "unknown", "invalid",
                                         "unknown"]  # fmt: skip
    assert got[0]["life"]["host"] == "a" and got[0]["life"]["argv"] == ["sleep", "60"]
    assert got[3]["reason"] == "no node zz answers"
    # The owner follows the life with a pidfd when another node asks it to.
    followed = await asyncio.to_thread(c.post, "/v1/follow", {"life": asked[0]})
    assert followed["following"] is True and followed["id"] == got[0]["life"]["id"]
    assert a.get("/v1/node")["follow"]["started"] == 1
    async with Collector(c.ws_url(f"scope=cluster&life={asked[1]}")) as col:
        os.kill(a1, signal.SIGKILL)
        os.kill(a2, signal.SIGKILL)
        await until(lambda: col.died(a, a2), 5)
        assert not col.died(a, a1)  # the stream follows one life: a1's death is not its
    await until(state_is(c, asked[0], "dead"), 5)
    for n in (b, c):
        assert n.get(f"/v1/lives/{asked[1]}")["state"] == "dead"
    remote = b.get(f"/v1/lives/{a.life(a1, a1t)}")
    assert remote["exit"]["signal"] == 9
    # Without [cluster], a node's stream refuses scope=cluster with a clear error (API tests);
    # here the nodes list says who is who.
    listing = c.get("/v1/nodes")
    assert {p["name"]: p["state"] for p in listing["peers"]} == {"a": "up", "b": "up"}
    assert listing["outbox"] == 0 and listing["stored_path"] == "ready"
    cli = subprocess.run([sys.executable, "-m", "app", "nodes", "--url", f"http://127.0.0.1:{c.port}"],
                         capture_output=True, text=True, timeout=20)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert "a: up since" in cli.stdout and "b: up since" in cli.stdout
    req = urllib.request.Request(f"http://127.0.0.1:{a.port}/metrics", headers=AUTH)
    with urllib.request.urlopen(req, timeout=5) as r:
        metrics = r.read().decode()
    assert 'lifewatch_cluster_peers{state="up"} 2.0' in metrics
    assert "lifewatch_cluster_outbox 0.0" in metrics
    assert "lifewatch_cluster_store_latency_seconds_count 2.0" in metrics  # a1 and a2 stored


@pytest.fixture
def three_servers(tmp_path: Path) -> Iterator[list[NatsServer]]:
    with nats_servers(tmp_path / "nats", 3) as servers:
        yield servers


async def move_leader(url: str, to: str, stream: str = "LIFEWATCH_DEATHS") -> str:
    """Ask the stream's leader to step down in favour of server `to` (nats-server >= 2.11
    takes a preferred placement) until it leads; returns the leader's name."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for _ in range(50):
            info = await js.stream_info(stream)
            if info.cluster is not None and info.cluster.leader == to:
                return to
            body = json.dumps({"placement": {"preferred": to}}).encode()
            with contextlib.suppress(Exception):
                await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", body, timeout=2)
            await asyncio.sleep(0.3)
        raise AssertionError(f"the leader of {stream} did not move to {to}")
    finally:
        await nc.close()


async def test_deaths_through_a_stream_leader_loss_arrive_once_each(
    tmp_path: Path, three_servers: list[NatsServer]
) -> None:
    """Three servers, replicas 3, each daemon on its own server. The deaths stream's leader is
    killed (-9) while deaths happen on a: every death reaches c's client once, at once
    (the core path does not wait for the election), and the outbox drains once a new
    leader stores them."""
    urls = [s.url for s in three_servers]
    ns = make_nodes(tmp_path, ["a", "b", "c"], urls, replicas=3)
    for i, n in enumerate(ns):
        n.nats = [urls[i]]  # a node talks to its own server (docs/cluster.md, deployment)
    a, b, c = ns
    try:
        for n in ns:
            n.start()
        await all_up(ns)
        lives = [a.spawn("sleep", "60") for _ in range(40)]
        for pid, ticks in lives[-1:]:
            await until(state_is(c, a.life(pid, ticks), "alive"))
        # The leader on b's server: killing it loses the stream's leader while a and c stay
        # connected (a's or c's own server lost would add their reconnects to the figure).
        leader = await move_leader(urls[2], three_servers[1].name)
        victim = next(s for s in three_servers if s.name == leader)
        async with Collector(c.ws_url("scope=cluster&types=died&host=a")) as col:
            victim.send(signal.SIGKILL)
            kills: dict[int, float] = {}
            for pid, _ in lives:
                os.kill(pid, signal.SIGKILL)
                kills[pid] = time.monotonic()
                await asyncio.sleep(0.02)
            await until(lambda: len(col.deaths("a")) >= len(lives), 20)
            victim.start()
            await until(lambda: a.get("/v1/nodes")["outbox"] == 0, 30, 0.1)
            await asyncio.sleep(1.0)
            deaths = col.deaths("a")
            pids = sorted(e["life"]["pid"] for e in deaths)
            assert pids == sorted(kills), "each death exactly once"
            lat = sorted(t - kills[e["life"]["pid"]] for t, e in col.events)
            print(f"leader {leader} killed: {len(lat)} deaths, kill -> c p50 "
                  f"{lat[len(lat) // 2] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms; "
                  f"a's publish stats {a.get('/v1/nodes')['publish']}")  # fmt: skip
        for pid, ticks in lives:
            assert b.get(f"/v1/lives/{a.life(pid, ticks)}")["state"] == "dead"
    finally:
        for n in ns:
            n.close()


async def test_hostile_messages_on_the_broker_are_dropped_and_counted(
    tmp_path: Path, one_server: list[NatsServer]
) -> None:
    import nats
    import orjson

    (a,) = make_nodes(tmp_path, ["a"], [one_server[0].url])
    nc = await nats.connect(one_server[0].url)
    try:
        a.start()
        await until(lambda: a.get("/v1/nodes")["stored_path"] == "ready", 20)
        life = {"id": "c/1/1", "host": "c", "boot_id": "x", "pid": 1, "start_ticks": 1,
                "state": "dead"}  # fmt: skip
        junk = [b"", b"{", b"[]", b'{"type":"died"}', orjson.dumps({"type": "died", "life": life,
                "at": "2026-12-01T00:00:00Z"}), b"\xff" * 1000]  # fmt: skip
        for i, body in enumerate(junk):
            await nc.publish("lifewatch.b.died", body, headers={"Nats-Msg-Id": f"j{i}"})
            await nc.publish("lifewatch.b.hb", body)
            await nc.publish("lifewatch.a.ask", body)  # no reply subject: ignored
        await nc.publish("lifewatch.=zz.died", b"{}", headers={"Nats-Msg-Id": "bad-token"})
        got = orjson.loads((await nc.request("lifewatch.a.ask", b"{", timeout=2)).data)
        assert "error" in got
        asked = ["b/1/1", 5, "a/x/1"]
        got = orjson.loads(
            (await nc.request("lifewatch.a.ask", orjson.dumps({"lives": asked}), timeout=2)).data
        )
        assert [r["state"] for r in got] == ["invalid", "invalid", "invalid"]
        got = orjson.loads((await nc.request("lifewatch.a.follow", b"[1]", timeout=2)).data)
        assert got["status"] == 400
        await until(lambda: a.get("/v1/nodes")["received"]["malformed"] >= 2 * len(junk), 5)
        nodes = a.get("/v1/nodes")
        assert nodes["received"]["received"] == 0 and nodes["peers"] == []
        assert a.proc is not None and a.proc.poll() is None
        assert a.get("/v1/lives/c/1/1")["state"] == "unknown"  # nothing believed
    finally:
        await nc.close()
        a.close()


async def test_a_node_whose_presence_expires_is_gone(
    tmp_path: Path, one_server: list[NatsServer]
) -> None:
    """Per-key TTL on the presence bucket (nats-server >= 2.11): a killed daemon's key expires
    after presence_ttl s and the others see it `gone` (a `node` event), its lives `unknown`."""
    ns = make_nodes(tmp_path, ["a", "b"], [one_server[0].url], presence_ttl=2)
    a, b = ns
    try:
        for n in ns:
            n.start()
        await all_up(ns)
        pid, ticks = a.spawn("sleep", "60")
        await until(state_is(b, a.life(pid, ticks), "alive"))
        async with Collector(b.ws_url("scope=cluster&types=node")) as col:
            a.stop(signal.SIGKILL)
            t0 = time.monotonic()

            def gone() -> bool:
                return any(e["state"] == "gone" for _, e in col.events)

            await until(gone, 10, 0.05)
            print(f"a killed -> gone on b after {time.monotonic() - t0:.1f} s (ttl 2 s)")
            # `unreachable` first when the heartbeat timeout (1 s) fires before the key expires;
            # the key was last refreshed up to 1 s before the kill, so `gone` may come first.
            states = [e["state"] for _, e in col.events]
            assert states in (["unreachable", "gone"], ["gone"]), states
        got = b.get(f"/v1/lives/{a.life(pid, ticks)}")
        assert got["state"] == "unknown" and "gone" in got["reason"] and got["since"]
        assert {p["name"]: p["state"] for p in b.get("/v1/nodes")["peers"]} == {"a": "gone"}
    finally:
        for n in ns:
            n.close()


async def test_a_node_that_starts_later_reads_stored_deaths(
    tmp_path: Path, one_server: list[NatsServer]
) -> None:
    """b starts after a's life died: it learns the death from the stream (replay), and answers
    it without asking a."""
    a, b = make_nodes(tmp_path, ["a", "b"], [one_server[0].url])
    try:
        a.start()
        await until(lambda: a.get("/v1/nodes")["stored_path"] == "ready", 20)
        pid, ticks = a.spawn("sleep", "60")
        await until(state_is(a, a.life(pid, ticks), "alive"))
        os.kill(pid, signal.SIGKILL)
        await until(lambda: a.get("/v1/nodes")["publish"]["stored"] == 1, 5)
        b.start()
        await until(lambda: b.get("/v1/nodes")["stored_path"] == "ready", 20)
        got = await until(
            lambda: (r := b.get(f"/v1/lives/{a.life(pid, ticks)}"))["state"] == "dead" and r, 5
        )
        assert got["reason"] == "death published by its node", got
        assert b.get("/v1/nodes")["ask"]["asked"] == 0
    finally:
        a.close()
        b.close()


async def test_deaths_while_the_broker_is_down_arrive_after_with_their_time(
    tmp_path: Path, one_server: list[NatsServer]
) -> None:
    """The only server killed -9: a's deaths wait (outbox), every peer is `unreachable` and
    their lives `unknown`; the server back, each death arrives once with its true died_at."""
    (server,) = one_server
    a, b = make_nodes(tmp_path, ["a", "b"], [server.url], token="lw-secret")
    conf_token = 'authorization { token: "lw-secret" }\n'
    server.stop()
    server.extra_conf = conf_token
    server.start()
    try:
        for n in (a, b):
            n.start()
        await all_up([a, b])
        lives = [a.spawn("sleep", "60") for _ in range(3)]
        for pid, ticks in lives:
            await until(state_is(b, a.life(pid, ticks), "alive"))
        server.send(signal.SIGKILL)
        server.proc = None
        await until(lambda: b.get("/v1/nodes")["connection"] != "connected", 5)
        killed = time.time()
        for pid, _ in lives:
            os.kill(pid, signal.SIGKILL)
        await until(lambda: a.get("/v1/nodes")["outbox"] == 3, 5)
        got = b.get(f"/v1/lives/{a.life(*lives[0])}")
        assert got["state"] == "unknown" and "not connected" in got["reason"], got
        await asyncio.sleep(1.0)
        server.start()
        await until(lambda: a.get("/v1/nodes")["outbox"] == 0, 20, 0.1)
        for pid, ticks in lives:
            dead = await until(
                lambda pid=pid, ticks=ticks: (
                    (  # type: ignore[misc]
                        r := b.get(f"/v1/lives/{a.life(pid, ticks)}")
                    )["state"]
                    == "dead"
                    and r
                ),
                10,
            )
            when = datetime.fromisoformat(dead["died_at"]).timestamp()
            assert killed - 0.1 < when < killed + 0.5, (dead["died_at"], killed)
        assert b.get("/v1/nodes")["received"]["received"] >= 3
    finally:
        a.close()
        b.close()


def make_tls(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1, made with the system's openssl."""
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem"))
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=lifewatch test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    for f in d.iterdir():
        f.chmod(0o644)  # the unprivileged pass's daemons read them too
    return ca, cert, key


async def test_tls_settings_are_passed_to_nats(
    tmp_path: Path, one_server: list[NatsServer]
) -> None:
    """A server that speaks only TLS: a node given the CA connects and works; one without it
    cannot connect and says why, and still serves its own node."""
    (server,) = one_server
    tls = tmp_path / "tls"
    tls.mkdir()
    ca, cert, key = await asyncio.to_thread(make_tls, tls)
    server.stop()
    server.extra_conf = f'tls {{ cert_file: "{cert}", key_file: "{key}" }}\n'
    server.start()
    a, b = make_nodes(tmp_path, ["a", "b"], [server.url], tls_ca=str(ca))
    (c,) = make_nodes(tmp_path, ["c"], [server.url])
    try:
        for n in (a, b, c):
            n.start()
        await all_up([a, b])
        pid, ticks = a.spawn("sleep", "60")
        await until(state_is(b, a.life(pid, ticks), "alive"))
        await until(lambda: c.get("/v1/nodes")["connection"].startswith("cannot connect"), 10)
        assert c.get(f"/v1/lives/{a.life(pid, ticks)}")["state"] == "unknown"
        os.kill(pid, signal.SIGKILL)
        await until(state_is(b, a.life(pid, ticks), "dead"))
    finally:
        for n in (a, b, c):
            n.close()
