"""The API with the durable journal on (a real SQLite file in a temporary state directory):
history pages over two runs, the store on /v1/node and /metrics, a cursor kept across a
restart. Every answer is checked against openapi.yaml (tests/spec.py)."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from app.api.app import make_app
from app.cli.main import main
from app.core.life import Life, SourceSet, exit_of
from app.core.service import Service
from tests.helpers import api_client, make_config
from tests.spec import call

Client = TestClient[Any, Any]


async def run(state: Path, **kw: Any) -> Service:
    svc = Service(make_config(state_dir=state, **kw))
    await svc.start()
    return svc


def die_many(svc: Service, n: int, comm: str, at: float, ticks: int = 10_000) -> None:
    """`n` lives born and dead through the tracker's registry, as sources would make them."""
    reg = svc.registry
    for i in range(n):
        life = Life(3_000_000 + i, ticks + i, 1, comm, SourceSet.PROC, born_at=at)
        reg.born(life, SourceSet.PROC)
        reg.died(life, exit_of(i % 7, None), at + 0.001, "exit", SourceSet.PROC)


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[Path]:
    yield tmp_path


async def test_history_pages_across_two_runs(state: Path) -> None:
    t0 = time.time()
    svc = await run(state)
    die_many(svc, 30, "histA", t0)
    await svc.stop()
    svc = await run(state)
    die_many(svc, 20, "histA", t0 + 10, ticks=20_000)
    await asyncio.sleep(0.3)  # one commit interval
    app = make_app(svc, manage=False)
    try:
        async with api_client(app) as client:
            seen: list[dict[str, Any]] = []
            url = f"/v1/lives?since={t0 - 1}&comm=histA&limit=7"
            while url:
                _, page = await call(client, "GET", url)
                seen += page["lives"]
                assert len(page["lives"]) <= 7
                nxt = page["next"]
                url = f"/v1/lives?since={t0 - 1}&comm=histA&limit=7&after={nxt}" if nxt else ""
            # The restart itself kills nothing here: 50 lives, each once, exit codes kept.
            assert len(seen) == len({x["id"] for x in seen}) == 50
            assert {x["exit"]["code"] for x in seen} == set(range(7))
            _, later = await call(client, "GET", f"/v1/lives?since={t0 + 5}&comm=histA")
            assert len(later["lives"]) == 20
            _, none = await call(client, "GET", f"/v1/lives?until={t0 - 1}&comm=histA")
            assert none["lives"] == [] and none["next"] is None
            resp, err = await call(client, "GET", "/v1/lives?since=0&state=alive")
            assert resp.status == 400 and err["error"] == "bad_query"
            resp, err = await call(client, "GET", "/v1/lives?since=yesterday")
            assert resp.status == 400
            resp, err = await call(client, "GET", "/v1/lives?after=h1.2")
            assert resp.status == 200  # a history token is a history query
            resp, err = await call(client, "GET", "/v1/lives?after=h99999999999999999999.1")
            assert resp.status == 400 and err["error"] == "bad_query"
            _, node = await call(client, "GET", "/v1/node")
            store = node["store"]
            assert store["state"] == "on" and store["dropped"] == 0 and store["bytes"] > 0
            # The command line: every life of the history, one line each, all pages.
            url = str(client.make_url("")).rstrip("/")
            argv = ["history", "--url", url, "--since", str(t0 - 1), "--comm", "histA"]
            with redirect_stdout(io.StringIO()) as out:
                await asyncio.to_thread(main, argv)
            lines = out.getvalue().splitlines()
            assert len(lines) == 50 and all(" histA  exit " in x for x in lines), lines[:3]
            resp = await client.get("/metrics")
            text = await resp.text()
            for name in (
                "lifewatch_store_bytes",
                "lifewatch_store_queue_depth",
                "lifewatch_store_commit_seconds_bucket",
                "lifewatch_store_dropped",
            ):
                assert name in text, name  # fmt: skip
    finally:
        await svc.stop()


async def test_memory_only_says_so_and_filters_by_death(state: Path) -> None:
    svc = Service(make_config())
    await svc.start()
    t0 = time.time()
    die_many(svc, 5, "histM", t0)
    try:
        async with api_client(make_app(svc, manage=False)) as client:
            _, node = await call(client, "GET", "/v1/node")
            assert node["store"]["state"] == "off"
            _, page = await call(client, "GET", f"/v1/lives?since={t0 - 1}&comm=histM")
            assert len(page["lives"]) == 5
            _, page = await call(client, "GET", f"/v1/lives?since={t0 + 1}&comm=histM")
            assert page["lives"] == []
            resp = await client.get("/metrics")
            assert "lifewatch_store_up 0.0" in await resp.text()
    finally:
        await svc.stop()


async def test_a_cursor_resumes_across_a_restart(state: Path) -> None:
    svc = await run(state)
    die_many(svc, 3, "histC", time.time())
    cursor = svc.journal.last_cursor
    die_many(svc, 2, "histD", time.time(), ticks=20_000)
    await svc.stop()
    svc = await run(state)
    try:
        got = svc.journal.since(cursor)
        assert got is not None
        comms = [e.life.comm for e in got if e.life is not None and e.type == "died"]
        assert comms[:2] == ["histD", "histD"]
        assert svc.journal.first_cursor > cursor
    finally:
        await svc.stop()


async def test_events_older_than_memory_are_served_from_disk(state: Path) -> None:
    """`journal_memory` events in memory, the rest of `journal_size` read back from the
    database: a page of /v1/events and a resumed stream give every event once, in order."""
    svc = await run(state, journal_memory=16)
    die_many(svc, 100, "histE", time.time())  # 200 events: born and died each
    cursors = list(range(svc.journal.first_cursor, svc.journal.last_cursor + 1))
    assert len(cursors) >= 200 and svc.journal.held > 16  # not on disk yet: kept
    await asyncio.sleep(0.3)  # a commit
    svc.journal.trim(step=1 << 30)  # as the next append would
    assert svc.journal.held == 16
    # Each in chunks of its own on disk (a commit each), the probe past one answer's `limit`.
    for i in range(3):
        await asyncio.sleep(0.25)
        die_many(svc, 400, "histG", time.time(), ticks=40_000 + 1000 * i)
    await asyncio.sleep(0.25)
    probe = svc.journal.append("gap", None, {"source": "test", "reason": "probe"})
    await asyncio.sleep(0.25)
    die_many(svc, 3000, "histF", time.time(), ticks=20_000)  # the probe far past memory
    app = make_app(svc, manage=False)
    try:
        async with api_client(app) as client:
            seen: list[tuple[int, str]] = []
            after = cursors[0]
            while after < cursors[-1]:
                _, page = await call(client, "GET", f"/v1/events?after={after}&limit=370")
                assert not page["reset"]
                seen += [(e["cursor"], e["type"]) for e in page["events"]]
                after = page["next"]
            assert [c for c, _ in seen[: len(cursors) - 1]] == cursors[1:]
            _, node = await call(client, "GET", "/v1/node")
            assert node["journal_memory"] == 16 and node["journal_disk_reads"] > 0
            resp = await client.get("/metrics")
            assert "lifewatch_journal_disk_events_total" in await resp.text()
            # A filter that keeps few: one answer looks through what disk holds to find it.
            _, gaps = await call(client, "GET", "/v1/events?types=gap")
            assert probe.cursor in [e["cursor"] for e in gaps["events"]], gaps["next"]
            deaths = [c for c, t in seen if t == "died" and c > cursors[3]]
            assert len(deaths) >= 98
            async with client.ws_connect(f"/v1/stream?after={cursors[3]}&types=died") as ws:
                got: list[int] = []
                while len(got) < len(deaths):
                    msg = await ws.receive_json(timeout=5)
                    assert msg["type"] == "died"
                    got.append(msg["cursor"])
                assert got == deaths
    finally:
        await svc.stop()
