"""Limits with clear refusals (issue 10, Must show): 1,005 WebSockets against a daemon under
`ulimit -n 1024`. New connections get a clear 503 JSON refusal, `/healthz` still answers over
the Unix socket, every client that got in receives every death, and the daemon recovers
once the clients leave. Also: a follow with no descriptor left is a 503, never a 404.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import AUTH, TOKEN, free_port, make_config, start_ticks, stop

CLIENTS = 1005


def _ulimit_1024() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    sock = tmp_path / "lw.sock"
    env = dict(os.environ, LIFEWATCH_STATE_DIR=str(tmp_path), LIFEWATCH_SOCKET=str(sock),
               LIFEWATCH_PORT=str(port), LIFEWATCH_TOKEN=TOKEN,
               LIFEWATCH_CANARY_INTERVAL="0")  # fmt: skip
    # The log goes to a file: a pipe nobody reads would stall the daemon once full.
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--sources", "proc"],
                            env=env, stderr=log, preexec_fn=_ulimit_1024)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
            assert time.monotonic() < deadline, "lifewatch serve did not listen"
            time.sleep(0.05)
        yield proc, port, sock
    finally:
        stop(proc)
        log.close()


@pytest.fixture
def many_fds() -> Iterator[None]:
    """This test process holds 1,005 client sockets: raise its own limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 8192), max(hard, 8192)))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _open(s: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse | int:
    try:
        return await s.ws_connect(url, headers=AUTH, heartbeat=None, autoping=True)
    except aiohttp.WSServerHandshakeError as e:
        return e.status


@pytest.mark.root_test_side("the test process raises its own descriptor limit past 1024")
async def test_1005_websockets_under_ulimit_1024(
    daemon: tuple[subprocess.Popen[bytes], int, Path], many_fds: None, tmp_path: Path
) -> None:
    proc, port, sock = daemon
    base = f"http://127.0.0.1:{port}"
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=conn) as s:
        opened: list[aiohttp.ClientWebSocketResponse] = []
        refused: list[int] = []
        for i in range(0, CLIENTS, 50):
            got = await asyncio.gather(
                *(_open(s, f"{base}/v1/stream?types=died") for _ in range(min(50, CLIENTS - i)))
            )
            opened += [g for g in got if not isinstance(g, int)]
            refused += [g for g in got if isinstance(g, int)]
        # Some got in, the rest were refused with a status, not a reset or a hang.
        assert opened and refused and len(opened) + len(refused) == CLIENTS
        assert set(refused) == {503}, set(refused)
        # The refusal is JSON that says why.
        async with s.get(f"{base}/v1/node", headers=AUTH) as r:
            assert r.status == 503 and r.headers["Retry-After"] == "1"
            body = await r.json()
            assert body["error"] == "out_of_descriptors" and "ulimit" in body["detail"]
        # /healthz still answers over the Unix socket, and so does the API.
        unix = aiohttp.UnixConnector(str(sock))
        async with aiohttp.ClientSession(connector=unix) as us:
            async with us.get("http://localhost/healthz") as r:
                assert r.status == 200 and (await r.json())["status"] == "ok"
            async with us.get("http://localhost/metrics") as r:
                metrics = await r.text()
        assert 'lifewatch_refused_total{reason="out_of_descriptors"}' in metrics
        assert f'lifewatch_connections{{transport="tcp"}} {len(opened)}.0' in metrics

        # Nothing lost: every client that got in receives the death of a process killed now.
        victim = subprocess.Popen(["sleep", "300"])
        ticks = start_ticks(victim.pid)
        await asyncio.sleep(0.2)
        victim.kill()
        victim.wait()

        async def death(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
            while True:
                ev: dict[str, Any] = await ws.receive_json(timeout=20)
                if ev["type"] == "died" and ev["life"]["pid"] == victim.pid:
                    return ev

        deaths = await asyncio.gather(*(death(ws) for ws in opened))
        assert len(deaths) == len(opened)
        assert all(d["life"]["start_ticks"] == ticks for d in deaths)
        assert all(d["life"]["exit"]["signal"] == 9 for d in deaths)
        await asyncio.gather(*(ws.close() for ws in opened))
        # Once they left, TCP is served again.
        for _ in range(100):
            async with s.get(f"{base}/v1/node", headers=AUTH) as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.05)
        assert r.status == 200
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    err = (tmp_path / "daemon.log").read_text()
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err and " ERROR " not in err, err[-3000:]


async def test_a_follow_without_descriptors_is_a_503_not_a_404() -> None:
    from app.api.app import make_app
    from app.core.service import Service
    from tests.helpers import api_client

    svc = Service(make_config(sources=("proc",), canary_interval=0))
    victim = subprocess.Popen(["sleep", "300"])
    try:
        async with api_client(make_app(svc)) as c:
            lid = f"{svc.node.hostname}/{victim.pid}/{start_ticks(victim.pid)}"
            svc.follower.fd_ceiling = 0  # as if every descriptor but the reserve were in use
            r = await c.post("/v1/follow", json={"life": lid})
            body = await r.json()
            assert r.status == 503 and body["error"] == "no_descriptors", body
            assert "file descriptors" in body["detail"]
            svc.follower.fd_ceiling = 1 << 20
            r = await c.post("/v1/follow", json={"life": lid})
            assert r.status == 200 and (await r.json())["following"] is True
    finally:
        victim.kill()
        victim.wait()


async def test_one_caller_cannot_fill_the_follow_table() -> None:
    from app.api.app import make_app
    from app.core.service import Service
    from tests.helpers import api_client

    svc = Service(make_config(sources=("proc",), canary_interval=0, max_follow_per_caller=2))
    kids = [subprocess.Popen(["sleep", "300"]) for _ in range(3)]
    try:
        async with api_client(make_app(svc)) as c:
            host = svc.node.hostname
            ids = [f"{host}/{k.pid}/{start_ticks(k.pid)}" for k in kids]
            for lid in ids[:2]:
                assert (await c.post("/v1/follow", json={"life": lid})).status == 200
            assert (await c.post("/v1/follow", json={"life": ids[0]})).status == 200  # again
            r = await c.post("/v1/follow", json={"life": ids[2]})
            body = await r.json()
            assert r.status == 429 and body["error"] == "follow_limit_per_caller", body
            assert len(svc.follower) == 2  # the daemon's table has room for others
            metrics = await (await c.get("/metrics")).text()
            assert 'lifewatch_refused_total{reason="follow_per_caller"} 1.0' in metrics
            kids[0].kill()  # a death frees its caller's slot
            kids[0].wait()
            for _ in range(200):
                r = await c.post("/v1/follow", json={"life": ids[2]})
                if r.status == 200:
                    break
                await asyncio.sleep(0.02)
            assert r.status == 200
    finally:
        for k in kids:
            k.kill()
            k.wait()
