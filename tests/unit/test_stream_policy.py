"""Slow and silent stream clients: told `lagging`, resumed without loss, closed only with a
code and a reason; the daemon's own stalls never count against a client (app/api/heartbeat.py)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from app.api.app import make_app
from app.api.heartbeat import Liveness
from app.core.service import Service
from tests.helpers import api_client, make_config

Client = TestClient[Any, Any]
PAD = "x" * 2000  # 6000 events of 2 kB: more than loopback and client buffers hold


async def served(**kw: object) -> AsyncIterator[tuple[Client, Service]]:
    svc = Service(make_config(**kw))
    await svc.start()
    try:
        async with api_client(make_app(svc, manage=False)) as c:
            yield c, svc
    finally:
        await svc.stop()


@pytest.fixture
async def small_queue() -> AsyncIterator[tuple[Client, Service]]:
    async for pair in served(subscriber_queue=16):
        yield pair


@pytest.fixture
async def fast_heartbeat() -> AsyncIterator[tuple[Client, Service]]:
    async for pair in served(heartbeat=0.1, slow_client_close=0.5):
        yield pair


def flood(svc: Service, n: int = 6000) -> list[int]:
    return [svc.journal.append("resync", None, {"n": i, "pad": PAD}).cursor for i in range(n)]


def test_liveness_excuses_the_loops_lateness_not_the_clients_silence() -> None:
    live = Liveness(interval=1.0, last_seen=0.0)
    assert not live.dead(2.9, writes_stalled=False, stall_limit=60)
    assert live.dead(3.1, writes_stalled=False, stall_limit=60)
    live.late(10.0)  # the check woke 10 s late: the loop was stalled, the client maybe not
    assert not live.dead(13.0, writes_stalled=False, stall_limit=60)
    assert live.dead(13.2, writes_stalled=False, stall_limit=60)
    live.seen(13.5)  # any frame from the client: silence restarts, the excuse too
    assert live.excused == 0 and not live.dead(16.4, writes_stalled=False, stall_limit=60)
    # Pings queued behind data it does not read cannot be answered: the slow-client limit.
    assert not live.dead(40.0, writes_stalled=True, stall_limit=60)
    assert not live.dead(110.0, writes_stalled=True, stall_limit=60)
    assert live.dead(140.0, writes_stalled=True, stall_limit=60)


async def test_a_client_that_stops_reading_is_told_lagging_and_resumes_without_loss(
    small_queue: tuple[Client, Service],
) -> None:
    client, svc = small_queue
    after = svc.journal.last_cursor
    got: list[int] = []
    async with client.ws_connect(f"/v1/stream?types=resync&after={after}") as ws:
        await asyncio.sleep(0.1)
        sent = flood(svc)  # the client reads nothing meanwhile: its queue (16) overflows
        while True:
            msg = json.loads((await ws.receive(timeout=10)).data)
            if msg["type"] == "lagging":
                break
            got.append(msg["cursor"])
    last = got[-1] if got else after
    assert msg["cursor"] == msg["resume_after"] == last
    assert msg["reason"] == "queue_full" and msg["queue_limit"] == 16
    assert msg["behind"] == sent[-1] - last
    # It reconnects from the cursor it was given: every event, in order, no gap, no reset.
    async with client.ws_connect(f"/v1/stream?types=resync&after={last}") as ws:
        while len(got) < len(sent):
            msg = json.loads((await ws.receive(timeout=10)).data)
            assert msg["type"] == "resync", msg["type"]
            got.append(msg["cursor"])
    assert got == sent


async def test_the_loop_stalling_never_closes_a_healthy_client(
    fast_heartbeat: tuple[Client, Service],
) -> None:
    client, svc = fast_heartbeat
    async with client.ws_connect("/v1/stream?types=resync") as ws:
        reading = asyncio.create_task(ws.receive())  # answers pings while it waits
        for _ in range(3):  # stalls of 10 heartbeats each: aiohttp's heartbeat closed on these
            await asyncio.sleep(0.25)
            time.sleep(1.0)  # the daemon's loop (shared with the client here) is stalled
            await asyncio.sleep(0.25)
            assert not reading.done() and not ws.closed
        svc.journal.append("resync", None, {"n": 1})
        msg = await asyncio.wait_for(reading, 2)
        assert msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["n"] == 1


async def test_a_silent_client_is_closed_with_a_code_and_a_reason(
    fast_heartbeat: tuple[Client, Service], caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = fast_heartbeat
    # autoping off and no receive(): it never answers a ping.
    async with client.ws_connect("/v1/stream", autoping=False) as ws:
        await asyncio.sleep(1.0)
        msg = await ws.receive(timeout=2)
        while msg.type == aiohttp.WSMsgType.PING:
            msg = await ws.receive(timeout=2)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
    assert "heartbeat" in str(msg.extra)
    assert any("heartbeat" in r.getMessage() for r in caplog.records)


async def test_a_client_that_never_reads_is_closed_1013_with_its_resume_cursor(
    fast_heartbeat: tuple[Client, Service], caplog: pytest.LogCaptureFixture
) -> None:
    client, svc = fast_heartbeat
    after = svc.journal.last_cursor
    got: list[int] = []
    async with client.ws_connect(f"/v1/stream?types=resync&after={after}") as ws:
        await asyncio.sleep(0.1)
        flood(svc)
        await asyncio.sleep(1.5)  # longer than slow_client_close: not read meanwhile
        while True:
            msg = await ws.receive(timeout=10)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            body = json.loads(msg.data)
            if body["type"] == "resync":
                got.append(body["cursor"])
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1013
    m = re.search(r"resume after cursor (\d+)", str(msg.extra))
    assert m is not None and int(m.group(1)) == got[-1]  # all it was sent came before it
    assert any("1013" in r.getMessage() for r in caplog.records)
