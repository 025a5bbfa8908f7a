"""The operator routes: watches over HTTP (token rules), /metrics, the dashboard's files."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from openapi_core.testing import MockRequest, MockResponse
from prometheus_client.parser import text_string_to_metric_families

from app.api.app import make_app
from app.api.prometheus import LatencyHistogram
from app.core.config import Config
from app.core.service import Service
from app.sources.observations import Exec, Exit, Fork, Loss
from tests.helpers import exec_done, start_ticks
from tests.scripted import ScriptedSource
from tests.spec import SPEC

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}
FAKE = 4_000_000

Client = TestClient[Any, Any]


class Canary(ScriptedSource):
    """A scripted source that also offers canary latencies (the metrics interface)."""

    def __init__(self) -> None:
        super().__init__("proc")
        self.latencies = {"proc": LatencyHistogram()}


async def _client(config: Config, sources: list[Any]) -> AsyncIterator[tuple[Client, Service]]:
    service = Service(config, sources=sources)
    await service.start()
    # No token by default: each test says what it sends (AUTH).
    async with TestClient(TestServer(make_app(service, manage=False))) as c:
        yield c, service
    await service.stop()


@pytest.fixture
async def api() -> AsyncIterator[tuple[Client, Service, Canary]]:
    src = Canary()
    cfg = Config(sources=(), state_dir=None, token=TOKEN)
    async for c, service in _client(cfg, [src]):
        yield c, service, src


@pytest.fixture
async def open_api() -> AsyncIterator[Client]:
    async for c, _ in _client(Config(sources=(), state_dir=None), []):
        yield c


async def test_mutations_need_the_token(api: Any, open_api: Client) -> None:
    c, _, _ = api
    spec = {"comm": "ntpd"}
    r = await c.put("/v1/watches/ntpd", json=spec)
    assert r.status == 401 and (await r.json())["error"] == "unauthorized"
    r = await c.put("/v1/watches/ntpd", json=spec, headers={"Authorization": "Bearer nope"})
    assert r.status == 403 and (await r.json())["error"] == "forbidden"
    r = await c.delete("/v1/watches/ntpd", headers={"Authorization": "Basic x"})
    assert r.status == 401
    r = await open_api.put("/v1/watches/ntpd", json=spec, headers=AUTH)
    body = await r.json()
    assert r.status == 403 and body["error"] == "no_token_configured"
    assert "LIFEWATCH_TOKEN" in body["detail"]
    # On TCP, reads need a token too (the read token suffices; docs/security.md)
    assert (await c.get("/v1/watches")).status == 401
    assert (await c.get("/v1/watches", headers=AUTH)).status == 200
    assert (await c.get("/v1/watches/ntpd", headers=AUTH)).status == 404


async def checked(
    c: Client, method: str, path: str, body: Any = None, auth: bool = True
) -> tuple[int, Any]:
    """A request whose request and response are validated against openapi.yaml."""
    data = None if body is None else json.dumps(body).encode()
    headers = dict(AUTH) if auth else {}
    if data is not None:
        headers["Content-Type"] = "application/json"
    r = await c.request(method, path, data=data, headers=headers)
    raw = await r.read()
    req = MockRequest("http://127.0.0.1:7878", method.lower(), path, headers=headers, data=data)
    if r.status < 400:
        SPEC.validate_request(req)
    SPEC.validate_response(req, MockResponse(raw, r.status, content_type=r.content_type))
    if r.content_type != "application/json":
        return r.status, raw.decode()
    return r.status, json.loads(raw)


async def test_resync_needs_the_token_and_is_spaced(api: Any, open_api: Client) -> None:
    c, service, _ = api
    assert (await checked(c, "POST", "/v1/resync", auth=False))[0] == 401
    assert (await open_api.post("/v1/resync", headers=AUTH)).status == 403
    service.tracker._last_resync = 0.0  # no repair yet in this test
    status, counts = await checked(c, "POST", "/v1/resync")
    assert status == 200 and counts["alive"] == len(service.registry.alive)
    status, err = await checked(c, "POST", "/v1/resync")  # at once again: held off
    assert status == 429 and err["error"] == "too_soon"
    assert (await c.post("/v1/resync", headers=AUTH)).headers["Retry-After"] == "1"
    assert [e.type for e in service.journal.since(0) or []].count("resync") == 1


async def test_watch_crud_and_validation(api: Any) -> None:
    c, _, _ = api
    status, w = await checked(c, "PUT", "/v1/watches/web", {"exe": "/usr/sbin/nginx", "max": 4})
    assert status == 201
    assert w["name"] == "web" and w["state"] == "not running" and w["ok"] is False
    assert w["spec"] == {"exe": "/usr/sbin/nginx", "min": 1, "max": 4, "canary": False}
    r = await c.put("/v1/watches/web", json={"exe": "/usr/sbin/nginx", "max": 4}, headers=AUTH)
    assert r.status == 200
    r = await c.put("/v1/watches/web", json={"bogus": 1}, headers=AUTH)
    assert r.status == 400 and "bogus" in (await r.json())["detail"]
    r = await c.put("/v1/watches/web", json={"min": 2}, headers=AUTH)
    assert r.status == 400 and "at least one" in (await r.json())["detail"]
    r = await c.put("/v1/watches/web", data=b"{", headers=AUTH | JSON)
    assert r.status == 400
    r = await c.put("/v1/watches/bad%20name", json={"comm": "x"}, headers=AUTH)
    assert r.status == 400 and (await r.json())["error"] == "bad_name"
    status, listed = await checked(c, "GET", "/v1/watches")
    assert [x["name"] for x in listed["watches"]] == ["web"]
    status, one = await checked(c, "GET", "/v1/watches/web")
    assert one["spec"]["exe"] == "/usr/sbin/nginx"
    status, text = await checked(c, "GET", "/metrics")
    assert status == 200 and "lifewatch_watch_ok" in text
    status, page = await checked(c, "GET", "/", auth=False)
    assert status == 200 and "/static/app.js" in page
    status, gone = await checked(c, "DELETE", "/v1/watches/web")
    assert status == 200 and gone["name"] == "web"
    assert (await checked(c, "DELETE", "/v1/watches/web"))[0] == 404
    assert (await checked(c, "PUT", "/v1/watches/x", {"comm": "x"}, auth=False))[0] == 401


async def test_watch_events_reach_the_stream(api: Any) -> None:
    c, _, src = api
    await c.put("/v1/watches/fake", json={"comm": "fakeprog"}, headers=AUTH)
    async with c.ws_connect("/v1/stream?types=watch", headers=AUTH) as ws:
        src.push(Fork("proc", FAKE, 1, 1.0, start_ticks=900))
        src.push(Exec("proc", FAKE, 1.0, exe="/f", argv=("f",), comm="fakeprog"))
        src.push(Exit("proc", FAKE, 2.0, code=3, start_ticks=900))
        got = [await ws.receive_json(timeout=5) for _ in range(2)]
    assert [(e["change"], e["state"]) for e in got] == [
        ("joined", "running"),
        ("left", "not running"),
    ]
    assert got[1]["life"]["exit"]["code"] == 3


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, Any], name: str, **labels: str) -> float:
    for fam in fams.values():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise KeyError(f"{name} {labels}")


async def scrape(c: Client) -> dict[str, Any]:
    r = await c.get("/metrics", headers=AUTH)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    return families(await r.text())


async def test_metrics_parse_and_move_when_processes_fork(api: Any) -> None:
    c, _, src = api
    await c.put("/v1/watches/kids", json={"argv": "^sleep 3017$", "max": 3}, headers=AUTH)
    before = await scrape(c)
    alive0 = sample(before, "lifewatch_lives", state="alive")
    # Real children, reported through the scripted source (the kernel sources' own tests
    # show the same counters moving from real forks).
    kids = [subprocess.Popen(["sleep", "3017"]) for _ in range(3)]
    try:
        for k in kids:
            exec_done(k.pid)
            src.push(Fork("proc", k.pid, os.getpid(), 1.0, start_ticks=start_ticks(k.pid)))
            src.push(Exec("proc", k.pid, 1.0))  # exe and argv from /proc
        await asyncio.sleep(0.05)
        # Only this script feeds the registry: exactly our three children were added.
        assert sample(await scrape(c), "lifewatch_lives", state="alive") == alive0 + 3
        src.push(Loss("proc", "serial_gap", 1.5, "2 records"))
        src.latencies["proc"].observe(0.0004)
        src.latencies["proc"].observe(0.003)
        await asyncio.sleep(0.05)
        after = await scrape(c)
    finally:
        for k in kids:
            k.kill()
            k.wait()
    assert sample(after, "lifewatch_events_total", type="born") >= 3
    assert sample(after, "lifewatch_source_events_total", type="born", source="proc") == 3
    assert sample(after, "lifewatch_source_events_total", type="exec", source="proc") == 3
    assert sample(after, "lifewatch_gaps_total", source="proc", reason="serial_gap") == 1
    assert sample(after, "lifewatch_events_total", type="resync") >= 1
    assert sample(after, "lifewatch_watch_lives", watch="kids") == 3
    assert sample(after, "lifewatch_watch_ok", watch="kids") == 1
    assert sample(after, "lifewatch_source_up", source="proc") == 1
    assert sample(after, "lifewatch_source_count_total", source="proc", counter="delivered") == 7
    assert sample(after, "lifewatch_canary_latency_seconds_count", path="proc") == 2
    assert sample(after, "lifewatch_canary_latency_seconds_bucket", path="proc", le="0.0005") == 1
    assert sample(after, "lifewatch_stream_subscribers") == 0
    # The API timed the requests above, by route template.
    assert sample(
        after, "lifewatch_http_request_duration_seconds_count",
        method="PUT", route="/v1/watches/{name}", status="201",
    ) == 1  # fmt: skip
    assert "process_resident_memory_bytes" in after


async def test_metrics_count_stream_subscribers_and_overflows(api: Any) -> None:
    c, _, _ = api
    async with c.ws_connect("/v1/stream", headers=AUTH):
        await asyncio.sleep(0.02)
        fams = await scrape(c)
        assert sample(fams, "lifewatch_stream_subscribers") == 1
        assert sample(fams, "lifewatch_subscriber_overflows_total") == 0


async def test_dashboard_files_are_served(open_api: Client) -> None:
    r = await open_api.get("/")
    assert r.status == 200 and "text/html" in r.headers["Content-Type"]
    html = await r.text()
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in html
        r = await open_api.get(asset)
        assert r.status == 200, asset
    assert (await open_api.get("/static/../../config.py")).status in (403, 404)


async def test_canary_verdicts_become_a_cumulative_histogram(api: Any) -> None:
    """The canary keeps a count and a window of recent latencies per source; each scrape
    adds only the samples that are new since the previous one."""
    from collections import deque
    from types import SimpleNamespace

    class FakeCanary:  # the shape of app.core.canary.Canary that the metrics read
        def __init__(self, verdicts: dict[str, Any]) -> None:
            self.stats = SimpleNamespace(verdicts=verdicts)

        def overlay(self, name: str, health: Any) -> Any:
            return health

        async def stop(self) -> None:
            return None

    c, service, _ = api
    verdict = SimpleNamespace(passes=2, latencies=deque([0.0003, 0.002], maxlen=3))
    service.canary = FakeCanary({"audit": verdict})
    fams = await scrape(c)
    assert sample(fams, "lifewatch_canary_latency_seconds_count", path="audit") == 2
    verdict.passes, verdict.latencies = 6, deque([0.004, 0.005, 0.006], maxlen=3)
    fams = await scrape(c)  # 4 new rounds, the window holds 3: one sample missed
    assert sample(fams, "lifewatch_canary_latency_seconds_count", path="audit") == 5
    assert sample(fams, "lifewatch_canary_latency_seconds_bucket", path="audit", le="0.0005") == 1
    assert sample(fams, "lifewatch_canary_samples_missed_total") == 1
    fams = await scrape(c)  # nothing new: nothing added
    assert sample(fams, "lifewatch_canary_latency_seconds_count", path="audit") == 5
