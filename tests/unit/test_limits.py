"""The connection gate (app/api/limits.py): per-peer and total limits and the header timeout
refuse with JSON, and are counted in /metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from app.api.app import make_app
from app.api.listen import open_listeners
from app.core.service import Service
from tests.helpers import AUTH, make_config


@pytest.fixture
async def gated() -> AsyncIterator[int]:
    config = make_config(max_connections_per_peer=3, header_timeout=0.3, max_connections=5)
    app = make_app(Service(config))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        yield await open_listeners(runner, app, config)
    finally:
        await runner.cleanup()


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, object]]:
    raw = await asyncio.wait_for(reader.read(), 5)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_a_peer_past_its_limit_is_refused_with_json(gated: int) -> None:
    held = [await asyncio.open_connection("127.0.0.1", gated) for _ in range(3)]
    reader, _ = await asyncio.open_connection("127.0.0.1", gated)
    status, body = await _answer(reader)
    assert status == 503 and body["error"] == "too_many_connections_from_peer"
    for _, w in held:
        w.close()
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", gated)
    auth = AUTH["Authorization"]
    writer.write(f"GET /v1/node HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n"
                 "Connection: close\r\n\r\n".encode())  # fmt: skip
    status, _ = await _answer(reader)
    assert status == 200  # the slots came back


async def test_headers_must_come_within_the_timeout(gated: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gated)
    writer.write(b"GET /v1/node HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
    status, body = await _answer(reader)
    assert status == 408 and body["error"] == "header_timeout"
    reader, writer = await asyncio.open_connection("127.0.0.1", gated)
    auth = AUTH["Authorization"]
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n"
                 "Connection: close\r\n\r\n".encode())  # fmt: skip
    text = (await asyncio.wait_for(reader.read(), 5)).decode()
    assert 'lifewatch_refused_total{reason="header_timeout"} 1.0' in text
