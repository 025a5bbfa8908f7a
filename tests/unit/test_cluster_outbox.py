"""The publisher's outbox against a fake broker: each death is sent at once, kept until the
stream acknowledges it, sent again (same message id, oldest first) after a failure or a
timeout, bounded with a counter; births go on core NATS only; the test-only scope."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from app.api.lifejson import LifeEncoder
from app.cluster import publisher as pubmod
from app.cluster.outbox import DiskOutbox
from app.cluster.publisher import Publisher, Scope
from app.cluster.subjects import Subjects
from app.core.identity import TickClock
from app.core.journal import Journal
from app.core.life import Life, exit_of
from tests.helpers import make_config


class FakeNats:
    """Records publishes; `js.publish_async` returns futures the test resolves."""

    def __init__(self) -> None:
        self.is_connected = True
        self.core: list[tuple[str, bytes, dict[str, str]]] = []
        self.stored: list[tuple[str, str, asyncio.Future[Any]]] = []

    async def publish(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        self.core.append((subject, body, headers))

    async def publish_async(
        self, subject: str, body: bytes, headers: dict[str, str], wait_stall: float
    ) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.stored.append((subject, headers["Nats-Msg-Id"], fut))
        return fut


class Ack:
    duplicate = False


def died(journal: Journal, pid: int, ppid: int = 1) -> None:
    life = Life(pid, 1000 + pid, ppid, "sleep", 4, born_at=1.0)
    journal.append("born", life.snapshot(), None, 4, 1.0)
    life.died_at, life.exit, life.cause = 2.0, exit_of(None, 9), "exit"
    journal.append("died", life.snapshot(), None, 4, 2.0)


def publisher(journal: Journal, outbox: int = 100, scope: Scope | None = None) -> Publisher:
    enc = LifeEncoder("a", "boot", TickClock(1_700_000_000, 100))
    local: list[str] = []
    p = Publisher("a", "boot", Subjects("lifewatch"), journal, enc, 1000, outbox, True, scope,
                  lambda mid, body: local.append(mid))  # fmt: skip
    nc = FakeNats()
    p.nc, p.js = nc, nc
    return p


async def drain(p: Publisher) -> None:
    for ev in p.sub.take():
        await p._one(ev)
    await asyncio.sleep(0)


async def test_a_death_waits_until_stored_and_is_sent_again_with_its_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    journal = Journal(make_config().journal_size)
    p = publisher(journal)
    nc: FakeNats = p.nc
    died(journal, 42)
    await drain(p)
    assert [s for s, _, _ in nc.core] == ["lifewatch.a.life"]  # the birth, core only
    ((subject, mid, fut),) = nc.stored
    assert subject == "lifewatch.a.died" and mid == "boot.42.1042.died"
    assert list(p.outbox) == [mid]
    fut.set_exception(RuntimeError("no responders"))  # no stream leader
    await asyncio.sleep(0)
    monkeypatch.setattr(pubmod, "STORE_TIMEOUT", 0.0)
    retry = asyncio.create_task(p.retry(every=0.01))
    try:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(nc.stored) >= 3:
                break
        assert [m for _, m, _ in nc.stored][:3] == [mid, mid, mid]  # failed, then timed out
        assert p.stats.retries >= 2 and list(p.outbox) == [mid]
        nc.stored[-1][2].set_result(Ack())
        await asyncio.sleep(0.02)
        assert not p.outbox and p.stats.stored == 1 and len(p.stats.store_latency) == 1
    finally:
        retry.cancel()


async def test_the_outbox_is_bounded_and_counts_what_it_drops() -> None:
    journal = Journal(make_config().journal_size)
    p = publisher(journal, outbox=16)
    p.nc.is_connected = False  # nothing goes out: everything waits
    for pid in range(100, 130):
        died(journal, pid)
    await drain(p)
    assert len(p.outbox) == 16 and p.stats.outbox_dropped == 14
    assert next(iter(p.outbox)) == "boot.114.1114.died"  # the oldest were dropped
    assert p.stats.not_sent == 30  # births while disconnected: core only, not kept


async def test_the_scope_admits_only_descendants() -> None:
    journal = Journal(make_config().journal_size)

    class Reg:
        alive: dict[int, Life] = {}

    scope = Scope(500, Reg())  # type: ignore[arg-type]
    p = publisher(journal, scope=scope)
    died(journal, 501, ppid=500)  # a child of the root
    died(journal, 777, ppid=1)  # someone else's
    await drain(p)
    assert [m for _, m, _ in p.nc.stored] == ["boot.501.1501.died"]
    assert p.stats.out_of_scope == 2


async def test_the_outbox_is_kept_in_the_store_across_a_restart(tmp_path: Path) -> None:
    """Deaths not acknowledged by the stream survive the daemon: written to the durable
    journal's database as they enter the outbox, removed when acknowledged or dropped, and
    read back by the next run (real SQLite file)."""
    from tests.unit.test_store import open_store

    st, _ = open_store(tmp_path)
    journal = Journal(make_config().journal_size)
    p = publisher(journal, outbox=3)
    p.disk = DiskOutbox(st)
    nc: FakeNats = p.nc
    for pid in (42, 43, 44, 45):  # 42 is dropped by the bound, 43 acknowledged
        died(journal, pid)
    await drain(p)
    assert list(p.outbox) == ["boot.43.1043.died", "boot.44.1044.died", "boot.45.1045.died"]
    next(f for _, m, f in nc.stored if m == "boot.43.1043.died").set_result(Ack())
    await asyncio.sleep(0)
    st._commit()
    st.close()

    st2, _ = open_store(tmp_path)
    rows = DiskOutbox(st2).load()
    assert [m for m, _, _ in rows] == ["boot.44.1044.died", "boot.45.1045.died"]
    assert all(s == "lifewatch.a.died" and json.loads(b)["type"] == "died" for _, s, b in rows)
    again = publisher(Journal(16))
    assert again.restore(rows) == 2 and list(again.outbox) == [m for m, _, _ in rows]
    st2.close()
