"""API v1 against a service with the real /proc and no kernel event sources."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient

from app import procfs
from app.api.app import make_app
from app.core.service import Service
from tests.helpers import AUTH, make_config
from tests.spec import SPEC_PATH, call

Client = TestClient[Any, Any]
JSON = {"Content-Type": "application/json"}


def test_every_route_is_in_the_spec_and_back() -> None:
    spec = yaml.safe_load(SPEC_PATH.read_text())
    in_spec = {(m.upper(), path) for path, item in spec["paths"].items() for m in item}
    app = make_app(Service(make_config()), manage=False)
    in_app = {
        (r.method, re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", r.resource.canonical))
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    assert in_app == in_spec


async def test_node(client: Client, service: Service) -> None:
    _, node = await call(client, "GET", "/v1/node")
    assert node["host"] == service.node.hostname
    assert node["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert node["hz"] == os.sysconf("SC_CLK_TCK")
    assert node["clock_stepped"] is False
    assert node["lives_alive"] > 1
    assert node["cursor"] >= node["first_cursor"]


async def test_is_alive_with_the_start_we_computed(
    client: Client, service: Service, sleeper: subprocess.Popen[bytes]
) -> None:
    # Compute the start ourselves, as a client would: ticks from stat, btime, HZ.
    fields = Path(f"/proc/{sleeper.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    ticks = int(fields[19])
    btime = next(
        int(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime")
    )
    hz = os.sysconf("SC_CLK_TCK")
    import datetime as dt

    when = dt.datetime.fromtimestamp(btime + ticks // hz, dt.UTC)
    date = when.strftime("%Y-%m-%dT%H:%M:%S") + f".{ticks % hz * 100 // hz:02d}Z"
    for start in (date, str(ticks)):
        _, ans = await call(client, "GET", f"/v1/lives/{sleeper.pid}/{start}")
        assert ans["state"] == "alive"
        assert ans["life"]["start"] == date
        assert ans["life"]["start_ticks"] == ticks
        assert ans["id"] == f"{service.node.hostname}/{sleeper.pid}/{date}"
        assert ans["life"]["argv"] == ["sleep", "30"]
    # Another start for the same pid: no record of such a life.
    _, other = await call(client, "GET", f"/v1/lives/{sleeper.pid}/{ticks - 3}")
    assert other["state"] == "unknown"
    # Once it dies (no event source here), the lookup finds the vanished pid: dead.
    sleeper.kill()
    sleeper.wait()
    _, dead = await call(client, "GET", f"/v1/lives/{sleeper.pid}/{ticks}")
    assert dead["state"] == "dead"
    assert dead["life"]["cause"] == "vanished"
    # No gap yet: an exit report may still come (tests/unit/test_vanish.py: the grace).
    assert [e.type for e in service.journal.since(0) or []].count("gap") == 0
    assert service.tracker.awaiting_exit == 1


async def test_holder_of_a_pid(
    client: Client, service: Service, sleeper: subprocess.Popen[bytes]
) -> None:
    service.tracker.resync("test")  # learns the sleeper
    _, life = await call(client, "GET", f"/v1/lives/{sleeper.pid}")
    assert life["pid"] == sleeper.pid and life["comm"] == "sleep"
    resp, err = await call(client, "GET", "/v1/lives/4194304")
    assert resp.status == 404 and err["error"] == "not_found"


@pytest.mark.parametrize(
    "url,error",
    [
        ("/v1/lives/1/garbage", "bad_life"),
        ("/v1/lives/0/5", "bad_life"),
        ("/v1/lives/abc/5", "bad_life"),
        ("/v1/lives/1/2026-11-26T00:47:19.135Z", "bad_life"),
        ("/v1/lives?state=zombie", "bad_request"),
        ("/v1/lives?bogus=1", "bad_request"),
        ("/v1/lives?limit=0", "bad_request"),
        ("/v1/events?types=born,nonsense", "bad_request"),
        ("/v1/events?after=-1", "bad_request"),
    ],
)
async def test_bad_requests_get_clear_400(client: Client, url: str, error: str) -> None:
    resp, body = await call(client, "GET", url)
    assert resp.status == 400
    assert body["error"] == error and body["detail"]


async def test_batch_check(
    client: Client, service: Service, sleeper: subprocess.Popen[bytes]
) -> None:
    st = procfs.read_stat(sleeper.pid)
    me = service.node.life_id(sleeper.pid, st.start_ticks)
    lives = [me, "elsewhere/1/5", "vm/nope/5", f"{service.node.hostname}/{sleeper.pid}/1"]
    _, body = await call(client, "POST", "/v1/lives/check", json.dumps({"lives": lives}).encode())
    states = [r["state"] for r in body["results"]]
    assert states == ["alive", "unknown", "invalid", "unknown"]
    assert "another host" in body["results"][1]["reason"]


@pytest.mark.parametrize(
    "body,error",
    [
        (b"not json", "bad_request"),
        (b'{"lives": []}', "bad_request"),
        (b'{"lives": ["a/1/2"], "extra": 1}', "bad_request"),
        (b'{"lives": "a/1/2"}', "bad_request"),
    ],
)
async def test_bad_batches(client: Client, body: bytes, error: str) -> None:
    resp, out = await call(client, "POST", "/v1/lives/check", body)
    assert resp.status == 400 and out["error"] == error


async def test_oversize_request_is_413(client: Client) -> None:
    big = json.dumps({"lives": ["h/1/1"] * 200_000}).encode()
    resp = await client.post("/v1/lives/check", data=big, headers=JSON)
    assert resp.status == 413
    assert (await resp.json())["error"] == "request_entity_too_large"


async def test_list_filters_and_paging(
    client: Client, service: Service, sleeper: subprocess.Popen[bytes]
) -> None:
    service.tracker.resync("test")
    _, got = await call(client, "GET", "/v1/lives?comm=sleep&state=alive")
    assert sleeper.pid in [x["pid"] for x in got["lives"]]
    seen, after = [], ""
    for _ in range(1000):
        _, page = await call(client, "GET", f"/v1/lives?limit=7{after}")
        seen += [(x["pid"], x["start_ticks"]) for x in page["lives"]]
        if page["next"] is None:
            break
        after = f"&after={page['next']}"
    assert seen == sorted(set(seen)) and len(seen) > 7


async def test_events_replay_and_reset(client: Client, service: Service) -> None:
    _, first = await call(client, "GET", "/v1/events?after=0")
    assert first["reset"] is False
    assert first["events"][0]["type"] == "snapshot"
    service.registry.note("resync", {"reason": "test", "dead": 0, "added": 0, "alive": 0})
    _, more = await call(client, "GET", f"/v1/events?after={first['next']}&types=resync")
    assert [e["type"] for e in more["events"]] == ["resync"]
    _, old = await call(client, "GET", "/v1/events?after=12345")
    assert old["reset"] is True and old["reason"] == "other_run"


async def test_stream_pushes_and_resumes(client: Client, service: Service) -> None:
    cursor = service.journal.last_cursor
    async with client.ws_connect(f"/v1/stream?types=resync&after={cursor}") as ws:
        service.tracker.resync("test one")
        msg = json.loads((await ws.receive(timeout=5)).data)
        assert msg["type"] == "resync" and msg["reason"] == "test one"
    service.tracker.resync("while away")
    async with client.ws_connect(f"/v1/stream?types=resync&after={msg['cursor']}") as ws:
        again = json.loads((await ws.receive(timeout=5)).data)
        assert again["reason"] == "while away"  # nothing lost across the reconnect
    async with client.ws_connect("/v1/stream?after=5") as ws:
        reset = json.loads((await ws.receive(timeout=5)).data)
        assert reset["type"] == "reset" and reset["reason"] == "other_run"


async def test_stream_refuses_bad_filters(client: Client) -> None:
    resp = await client.get("/v1/stream?types=nope")
    assert resp.status == 400
    resp = await client.get("/v1/stream?life=garbage")
    assert resp.status == 400


def test_cli_check_and_port_in_use() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "app", "serve", "--port", str(port), "--sources", ""],
            capture_output=True, text=True, timeout=30,
            env=dict(os.environ, LIFEWATCH_STATE_DIR=""),  # nothing written under /var/lib
        )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        f"lifewatch: port {port} on 127.0.0.1 is already in use"
    )


async def test_clock_step_is_reported(client: Client, service: Service, tmp_path: Path) -> None:
    """Simulate the kernel's btime moving (a clock step) with a fake /proc/stat."""
    (tmp_path / "stat").write_text(f"cpu 0\nbtime {service.node.clock.btime + 3}\n")
    service.proc = tmp_path
    _, node = await call(client, "GET", "/v1/node")
    assert node["clock_stepped"] is True
    assert node["btime"] == service.node.clock.btime  # dates keep the pinned btime
    clock = [e for e in service.journal.since(0) or [] if e.type == "clock"]
    assert len(clock) == 1 and clock[0].fields is not None
    assert clock[0].fields["btime_kernel"] == service.node.clock.btime + 3
    await call(client, "GET", "/v1/node")
    assert len([e for e in service.journal.since(0) or [] if e.type == "clock"]) == 1


async def test_shutdown_closes_streams_cleanly() -> None:
    """The same runner sequence as `lifewatch serve`: clients get a 1001 close, not a drop."""
    import aiohttp
    from aiohttp import web

    svc = Service(make_config())
    runner = web.AppRunner(make_app(svc))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"http://127.0.0.1:{port}/v1/stream", headers=AUTH)
        cleanup = asyncio.create_task(runner.cleanup())
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (1001, "server shutdown")
        await ws.close()
        await cleanup


async def test_the_tests_run_on_uvloop_like_the_daemon() -> None:
    import uvloop

    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


async def test_stream_to_a_client_that_stops_reading_loses_nothing(
    client: Client, service: Service
) -> None:
    # Events are pushed onto an idle client's socket; once its buffers are full they queue,
    # then catch up from the journal. Whichever way each went, the client gets all, in order.
    after = service.journal.last_cursor
    async with client.ws_connect(f"/v1/stream?types=resync&after={after}") as ws:
        await asyncio.sleep(0.1)
        pad = "x" * 2000  # 6000 of them: 12 MB, more than loopback buffers hold
        sent = [service.journal.append("resync", None, {"n": i, "pad": pad}).cursor
                for i in range(6000)]  # fmt: skip
        [sub] = [s for s in service.journal._subs if s.push is not None]
        assert 0 < sub.pushed < len(sent)  # some went straight out, the rest queued
        got: list[int] = []
        while len(got) < len(sent):
            msg = json.loads((await ws.receive(timeout=10)).data)
            if msg["type"] == "lagging":  # the queue overflowed: told, then caught up
                assert msg["cursor"] == msg["resume_after"] == (got[-1] if got else after)
                continue
            got.append(msg["cursor"])
    assert got == sent
