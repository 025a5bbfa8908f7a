"""Issue 10's low-severity findings, each with the request that showed it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from app.api.app import make_app
from app.api.listen import open_listeners
from app.api.stream import make_push
from app.core.service import Service
from tests.helpers import AUTH, make_config

Client = Any


async def test_405_names_the_allowed_methods(client: Client) -> None:
    for method, path in (("TRACE", "/v1/node"), ("DELETE", "/v1/lives"), ("PUT", "/healthz")):
        r = await client.request(method, path)
        assert r.status == 405 and r.content_type == "application/json", (method, path)
        assert "GET" in r.headers["Allow"], (method, path)
        assert (await r.json())["error"] == "method_not_allowed"


async def test_host_names_compare_without_case(client: Client, service: Service) -> None:
    host = service.node.hostname.upper()
    r = await client.post("/v1/lives/check", json={"lives": [f"{host}/1/1"]})
    assert "another host" not in (await r.json())["results"][0]["reason"]


async def test_a_stream_about_another_hosts_life_is_refused(client: Client) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        await client.ws_connect("/v1/stream?life=otherhost/1/1")
    assert e.value.status == 404


class Leaving:
    """A transport whose peer has just gone."""

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        raise ConnectionResetError("peer gone")


def test_a_client_leaving_mid_push_is_not_an_error() -> None:
    class Ws:
        closed = False

    push = make_push(Ws(), Leaving(), lambda ev: b"{}")  # type: ignore[arg-type]
    assert push(None) is False  # type: ignore[arg-type]  # declined: the queue takes it


@pytest.fixture
async def gated() -> AsyncIterator[int]:
    config = make_config()
    app = make_app(Service(config))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        yield await open_listeners(runner, app, config)
    finally:
        await runner.cleanup()


async def _raw(port: int, request: bytes) -> tuple[int, str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    ctype = next((h.split(b":", 1)[1].strip().decode() for h in head.split(b"\r\n")
                  if h.lower().startswith(b"content-type:")), "")  # fmt: skip
    return int(head.split()[1]), ctype, json.loads(body)


async def test_parser_refusals_are_json_without_a_traceback(
    gated: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    huge = b"GET /v1/node HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n"
    bad_header = b"GET /v1/node HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n"
    for bad in (bad_header, b"\x00\x01 junk\r\n\r\n", huge):
        status, ctype, body = await _raw(gated, bad)
        assert 400 <= status < 500 and ctype.startswith("application/json"), (status, ctype)
        assert body["error"] == "bad_http" and body["detail"]
    assert not any(r.exc_info for r in caplog.records)
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


async def test_watch_names_of_dots_are_refused(gated: int) -> None:
    for name in ("%2e", "%2E%2E", "..."):
        req = (f"PUT /v1/watches/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: {AUTH['Authorization']}\r\nContent-Type: application/json\r\n"
               "Content-Length: 13\r\nConnection: close\r\n\r\n"
               '{"comm": "x"}').encode()  # fmt: skip
        status, _, body = await _raw(gated, req)
        assert status == 400 and body["error"] == "bad_name", (name, body)


def test_serving_beyond_loopback_is_refused_without_insecure(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    env = dict(os.environ, LIFEWATCH_STATE_DIR=str(tmp_path), LIFEWATCH_SOCKET="")
    env.pop("LIFEWATCH_TOKEN", None)
    out = subprocess.run([sys.executable, "-m", "app", "serve", "--sources", "", "--host",
                          "0.0.0.0", "--port", "0"], env=env, capture_output=True,
                         timeout=30)  # fmt: skip
    assert out.returncode == 2
    assert b"--host 0.0.0.0 listens beyond this machine" in out.stderr
    assert b"--insecure" in out.stderr
