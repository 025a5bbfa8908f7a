"""POST /v1/follow and the WebSocket `life=` follow, with no kernel event source at all: the
pidfd alone tells the death."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from typing import Any

import pytest
from aiohttp import WSServerHandshakeError
from aiohttp.test_utils import TestClient

from app.core.service import Service
from app.procfs import read_stat
from tests.spec import call

Client = TestClient[Any, Any]


def life_id(service: Service, pid: int) -> str:
    return service.node.life_id(pid, read_stat(pid).start_ticks)


async def test_follow_then_death_reaches_a_stream(
    client: Client, service: Service, sleeper: subprocess.Popen[bytes]
) -> None:
    lid = life_id(service, sleeper.pid)
    resp, body = await call(client, "POST", "/v1/follow", json.dumps({"life": lid}).encode())
    assert resp.status == 200 and body["following"] and body["state"] == "alive"
    assert body["id"] == lid and body["followed"] == 1
    async with client.ws_connect(f"/v1/stream?types=died&pid={sleeper.pid}") as ws:
        _, node = await call(client, "GET", "/v1/node")
        assert node["follow"]["followed"] == 1 and node["follow"]["max"] >= 1
        assert node["stream_clients"] == 1
        sleeper.send_signal(signal.SIGKILL)
        msg = json.loads((await ws.receive(timeout=5)).data)
    assert msg["type"] == "died" and msg["sources"] == ["pidfd"]
    assert msg["life"]["exit"] == {"code": None, "signal": 9, "core_dumped": False}
    assert len(service.follower) == 0
    # Following it again answers with its death.
    resp, body = await call(client, "POST", "/v1/follow", json.dumps({"life": lid}).encode())
    assert resp.status == 200 and body["state"] == "dead" and not body["following"]


async def test_follow_errors(client: Client, service: Service) -> None:
    procs = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    try:
        await asyncio.sleep(0.02)
        service.follower.limit = 1
        ids = [life_id(service, p.pid) for p in procs]
        resp, _ = await call(client, "POST", "/v1/follow", json.dumps({"life": ids[0]}).encode())
        assert resp.status == 200
        resp, err = await call(client, "POST", "/v1/follow", json.dumps({"life": ids[1]}).encode())
        assert resp.status == 409 and err["error"] == "follow_limit"
        with pytest.raises(WSServerHandshakeError) as refused:
            await client.ws_connect(f"/v1/stream?life={ids[1]}")
        assert refused.value.status == 409
    finally:
        for p in procs:
            p.kill()
            p.wait()
    resp, err = await call(client, "POST", "/v1/follow", b'{"life": "nohost/1/5"}')
    assert resp.status == 404 and err["error"] == "not_found"
    resp, err = await call(client, "POST", "/v1/follow", b'{"life": "garbage"}')
    assert resp.status == 400
    resp, err = await call(client, "POST", "/v1/follow", b'{"lives": []}')
    assert resp.status == 400


async def test_a_stream_for_one_life_follows_it_while_open(
    client: Client, service: Service, sleeper: subprocess.Popen[bytes]
) -> None:
    lid = life_id(service, sleeper.pid)
    async with client.ws_connect(f"/v1/stream?life={lid}") as ws:
        assert service.follower.following(sleeper.pid) is not None
        sleeper.send_signal(signal.SIGTERM)
        msg = json.loads((await ws.receive(timeout=5)).data)
        assert msg["type"] == "died" and msg["life"]["exit"]["signal"] == 15
    assert len(service.follower) == 0


async def test_closing_the_stream_releases_the_pidfd(
    client: Client, service: Service, sleeper: subprocess.Popen[bytes]
) -> None:
    lid = life_id(service, sleeper.pid)
    async with client.ws_connect(f"/v1/stream?life={lid}"):
        assert len(service.follower) == 1
    for _ in range(100):
        if len(service.follower) == 0:
            break
        await asyncio.sleep(0.01)
    assert len(service.follower) == 0
