"""The rules that keep other web pages out: Host, WebSocket Origin, JSON bodies (issue 10, 4).

The same refusals in a real browser: tests/browser/test_cross_origin.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from app.api.app import make_app
from app.api.browsers import split_authority, split_origin
from app.core.config import Config
from app.core.service import Service
from tests.helpers import api_client, make_config

Client = TestClient[Any, Any]
UPGRADE = {
    "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}  # fmt: skip
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def named() -> AsyncIterator[Client]:
    """A daemon with `allowed_hosts` set: a proxy's name on any port, another on one port."""
    service = Service(make_config(allowed_hosts="lifewatch.example, other.example:8443"))
    async with api_client(make_app(service)) as c:
        yield c


def port(client: Client) -> int:
    assert client.port is not None
    return client.port


def own(client: Client) -> str:
    return f"127.0.0.1:{port(client)}"


@pytest.mark.parametrize(
    "value,want",
    [
        ("localhost", ("localhost", None)),
        ("LocalHost:7878", ("localhost", 7878)),
        ("[::1]:7878", ("::1", 7878)),
        ("[::1]", ("::1", None)),
        ("example.org.", ("example.org", None)),
        ("::1", None),
        ("a:b", None),
        ("a:99999", None),
        ("[::1]x", None),
        (":80", None),
    ],
)
def test_split_authority(value: str, want: tuple[str, int | None] | None) -> None:
    assert split_authority(value) == want


@pytest.mark.parametrize(
    "value,want",
    [
        ("http://127.0.0.1:7878", ("127.0.0.1", 7878)),
        ("https://lifewatch.example", ("lifewatch.example", 443)),
        ("http://localhost", ("localhost", 80)),
        ("null", None),
        ("file://", None),
        ("http://a@b:1", None),
    ],
)
def test_split_origin(value: str, want: tuple[str, int] | None) -> None:
    assert split_origin(value) == want


def test_allowed_hosts_setting_takes_a_comma_list_or_json() -> None:
    assert make_config(allowed_hosts="A.example, b.example:81").allowed_hosts == (
        "a.example", "b.example:81",
    )  # fmt: skip
    assert make_config(allowed_hosts='["[::1]:81"]').allowed_hosts == ("[::1]:81",)
    with pytest.raises(ValueError, match="not a name"):
        make_config(allowed_hosts="http://x/")
    assert "allowed_hosts" in Config.model_fields
    assert Config.model_fields["allowed_hosts"].description


async def test_a_foreign_host_is_refused_on_rest_and_websocket(client: Client) -> None:
    for path in ("/v1/node", "/", "/v1/lives", "/metrics"):
        r = await client.get(path, headers={"Host": "attacker.example"})
        body = await r.json()
        assert r.status == 421 and body["error"] == "forbidden_host", path
        assert "attacker.example" in body["detail"]
    r = await client.get("/v1/stream", headers=UPGRADE | {"Host": "attacker.example:7878"})
    assert r.status == 421 and (await r.json())["error"] == "forbidden_host"
    # The daemon's loopback names on another port are someone else's too.
    r = await client.get("/v1/node", headers={"Host": f"localhost:{port(client) + 1}"})
    assert r.status == 421


async def test_healthz_answers_whatever_the_host(client: Client) -> None:
    r = await client.get("/healthz", headers={"Host": "attacker.example"})
    assert r.status == 200


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "LOCALHOST", None])
async def test_loopback_names_are_accepted(client: Client, host: str | None) -> None:
    for h in (host, f"{host}:{port(client)}") if host else (own(client),):
        r = await client.get("/v1/node", headers={"Host": h})
        assert r.status == 200, h


async def test_a_configured_host_is_accepted(named: Client) -> None:
    for host in ("lifewatch.example", "lifewatch.example:443", "other.example:8443"):
        assert (await named.get("/v1/node", headers={"Host": host})).status == 200, host
    for host in ("other.example", "other.example:80", "attacker.example"):
        assert (await named.get("/v1/node", headers={"Host": host})).status == 421, host
    r = await named.get("/v1/stream", headers=UPGRADE | {
        "Host": "lifewatch.example", "Origin": "https://lifewatch.example"})  # fmt: skip
    assert r.status == 101


@pytest.mark.parametrize(
    "origin",
    ["http://attacker.example", "http://127.0.0.1:1", "null", "http://localhost", "garbage"],
)
async def test_a_websocket_from_a_foreign_origin_is_refused(client: Client, origin: str) -> None:
    r = await client.get("/v1/stream?types=exec,born", headers=UPGRADE | {"Origin": origin})
    body = await r.json()
    assert r.status == 403 and body["error"] == "forbidden_origin"
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        await client.ws_connect("/v1/stream", origin=origin)
    assert e.value.status == 403


async def test_a_websocket_from_its_own_origin_or_none_is_accepted(client: Client) -> None:
    for origin in (f"http://{own(client)}", f"http://localhost:{port(client)}", None):
        async with client.ws_connect("/v1/stream", origin=origin) as ws:
            assert not ws.closed, origin


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                     "multipart/form-data; boundary=x", "application/json; charset=latin-1"],
)  # fmt: skip
async def test_a_body_that_is_not_json_is_refused(client: Client, content_type: str) -> None:
    body = json.dumps({"lives": ["h/1/1"]}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    r = await client.post("/v1/lives/check", data=body, headers=headers)
    got = await r.json()
    assert r.status == 415 and got["error"] == "unsupported_media_type", content_type
    r = await client.post("/v1/follow", data=b'{"life": "h/1/1"}', headers=headers)
    assert r.status == 415
    r = await client.put("/v1/watches/x", data=b'{"comm": "x"}', headers=headers)
    assert r.status == 415


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8",
                     "Application/JSON;charset=UTF-8"],
)  # fmt: skip
async def test_a_json_body_is_accepted(client: Client, content_type: str) -> None:
    body = json.dumps({"lives": ["h/1/1"]}).encode()
    r = await client.post("/v1/lives/check", data=body, headers={"Content-Type": content_type})
    assert r.status == 200


async def test_a_post_without_a_body_needs_no_content_type(client: Client) -> None:
    # POST /v1/resync carries no body: it reaches the resync, not the media-type rule.
    r = await client.post("/v1/resync")
    assert (r.status in (200, 429) and "error" not in await r.json()) or r.status == 429
