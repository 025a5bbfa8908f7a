"""Requests that once got a 500 (issue 10): huge start ticks, header bytes that are not UTF-8;
and a token with a trailing NBSP, once accepted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.api.app import make_app
from app.core.identity import LifeIdError, TickClock
from app.core.service import Service
from tests.helpers import api_client, make_config
from tests.spec import call

Client = TestClient[Any, Any]
HUGE = "9999999999999999999"  # 19 digits: parse_start's longest, years past 9999


@pytest.mark.parametrize("start", [HUGE, "9999-12-31T23:59:59-05:00", "92233720368547758"])
async def test_a_start_beyond_any_date_is_400(client: Client, start: str) -> None:
    resp, body = await call(client, "GET", f"/v1/lives/1/{start}")
    assert resp.status == 400
    assert body["error"] == "bad_life" and "beyond any date" in body["detail"]


async def test_the_last_date_is_still_a_date(client: Client, service: Service) -> None:
    clock = service.node.clock
    last = (253402300799 - clock.btime) * clock.hz + clock.hz - 1
    resp, body = await call(client, "GET", f"/v1/lives/1/{last}")
    assert resp.status == 200 and body["state"] == "unknown"
    assert body["id"].endswith("/9999-12-31T23:59:59.99Z")


async def test_one_huge_start_does_not_spoil_a_batch(client: Client, service: Service) -> None:
    host = service.node.hostname
    lives = [f"{host}/1/{HUGE}", f"{host}/1/5", f"{host}/2/9999-12-31T23:59:59-01:00"]
    resp, body = await call(
        client, "POST", "/v1/lives/check", json.dumps({"lives": lives}).encode()
    )
    assert resp.status == 200
    states = [r["state"] for r in body["results"]]
    assert states == ["invalid", "unknown", "invalid"]
    assert "beyond any date" in body["results"][0]["error"]


def test_clock_check_ticks() -> None:
    clock = TickClock(btime=1795654039, hz=100)
    with pytest.raises(LifeIdError):
        clock.check_ticks(int(HUGE))
    assert clock.check_ticks(0) == 0


@pytest.fixture
async def guarded() -> AsyncIterator[Client]:
    """A daemon with a token, for the mutating routes' bearer check."""
    svc = Service(make_config(token="s3cret"))
    app: web.Application = make_app(svc, manage=False)
    async with api_client(app) as c:
        yield c


async def raw_post(c: Client, path: str, header: bytes) -> tuple[int, bytes]:
    """POST with header bytes as given: aiohttp's client would re-encode them."""
    reader, writer = await asyncio.open_connection(c.host, c.port)
    writer.write(
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer \xff\xfe",
        b"Authorization: Bearer s3cret\xff",
        b"Authorization: Bearer s3cret\xc2\xa0",  # NBSP, as UTF-8
        b"Authorization: Bearer s3cret\xa0",  # NBSP, as Latin-1
        b"Authorization: Bearer \xc2\xa0s3cret",
    ],
)
async def test_bearer_bytes_that_are_not_the_token_are_refused(
    guarded: Client, header: bytes
) -> None:
    status, body = await raw_post(guarded, "/v1/resync", header)
    assert status in (401, 403)
    assert orjson.loads(body)["error"] in ("unauthorized", "forbidden")


async def test_the_token_itself_is_accepted(guarded: Client) -> None:
    status, body = await raw_post(guarded, "/v1/resync", b"Authorization: Bearer s3cret ")
    assert status == 200, body
