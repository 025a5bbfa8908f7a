"""The durable journal (app/core/store.py) on real SQLite files: what a restart reads back,
what a crash loses and says, what is moved aside, what the queue and retention do."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from app.argv import CutArgv
from app.core import store as store_module
from app.core.identity import NodeIdentity, TickClock
from app.core.journal import Event, Journal
from app.core.life import Life, LifeView, exit_of
from app.core.store import (
    FAIL_LIMIT,
    RESERVE,
    SEQ_BITS,
    Resolver,
    Restored,
    Store,
    StoreSettings,
)
from app.core.storecodec import CodecError, pack_view, unpack_view

BOOT_A, BOOT_B = "boot-a", "boot-b"


def node(boot: str = BOOT_A) -> NodeIdentity:
    return NodeIdentity("h", boot, TickClock(1_700_000_000, 100), "kernel")


def view(pid: int, died: float | None = None, comm: str = "sleep") -> LifeView:
    life = Life(pid, 1000 + pid, 1, comm, 4, exe="/bin/sleep", argv=("sleep", "9"), born_at=5.0)
    if died is not None:
        life.died_at, life.exit, life.cause = died, exit_of(3, None), "exit"
    return life.snapshot()


def open_store(tmp: Path, boot: str = BOOT_A, **kw: Any) -> tuple[Store, Restored]:
    clock = kw.pop("clock", lambda: 1_800_000_000.0)
    st = Store(StoreSettings(tmp / "lifewatch.db", **kw), clock=clock)
    got = st.open(node(boot), history=100, window=100)
    return st, got


def test_codec_round_trip_and_refusal() -> None:
    life = Life(7, 8, 1, "a\udcff", 4, argv=CutArgv(("x\udcfe", "y")), born_at=1.5)
    life.died_at, life.exit, life.cause, life.died_after = 3.0, exit_of(None, 9), "signal", 2.0
    v = life.snapshot()
    back = unpack_view(pack_view(v))
    assert back == v and type(back.argv) is CutArgv
    with pytest.raises(CodecError):
        unpack_view(b"\x00garbage")
    with pytest.raises(CodecError):
        unpack_view(pack_view(v)[:-3])


def test_a_clean_restart_reads_the_boot_back(tmp_path: Path) -> None:
    st, got = open_store(tmp_path)
    first = got.first_cursor
    assert first == got.boot.ord << SEQ_BITS | 1
    j = Journal(100, first_cursor=first)
    j.sink = st.put
    st.last_cursor = lambda: j.last_cursor
    j.append("born", view(10))
    j.append("born", view(11))
    j.append("died", view(11, died=9.0))
    j.append("gap", None, {"reason": "x", "list": [1, "a", None]})
    st.close()
    st2, again = open_store(tmp_path)
    assert again.resumed and again.boot.clean
    assert again.first_cursor == j.last_cursor + 1
    assert [v.pid for v in again.alive] == [10]
    assert [v.pid for v in again.dead] == [11]
    assert again.dead[0].exit == exit_of(3, None)
    evs = again.events
    assert [e.type for e in evs] == ["born", "born", "died", "gap"]
    assert evs[3].fields == {"reason": "x", "list": [1, "a", None]}
    assert again.lost is None
    st2.close()


def test_a_crash_loses_the_tail_and_says_which_cursors(tmp_path: Path) -> None:
    st, got = open_store(tmp_path)
    j = Journal(100, first_cursor=got.first_cursor)
    j.sink = st.put
    st.last_cursor = lambda: j.last_cursor
    j.append("born", view(10))
    st._commit()  # committed
    j.append("born", view(11))  # queued, never committed: the "kill -9" below
    assert st._db is not None
    st._db.close()
    st2, again = open_store(tmp_path)
    assert again.resumed and not again.boot.clean
    lost = again.lost
    assert lost is not None and lost[0] == j.first_cursor + 1
    assert lost[1] >= j.last_cursor and again.first_cursor == lost[1] + 1
    assert lost[1] - lost[0] < RESERVE + 2
    assert [v.pid for v in again.alive] == [10]
    st2.close()


def test_a_new_boot_kills_the_old_boots_lives(tmp_path: Path) -> None:
    st, got = open_store(tmp_path, BOOT_A)
    st.put(view(10))
    st.put(view(12, died=4.0))
    st.close()
    st2, again = open_store(tmp_path, BOOT_B)
    assert not again.resumed
    assert again.rebooted is not None and again.rebooted[:2] == (BOOT_A, 1)
    assert again.boot.ord == got.boot.ord % 65535 + 1
    old = got.boot.ord << SEQ_BITS | 5
    assert st2.cursor_reason(old) == "node_rebooted"
    assert st2.cursor_reason((again.boot.ord + 7) << SEQ_BITS) == "other_run"
    db = st2.reader()
    lives = Resolver(db)
    rows = [
        lives.view(c, b) for (c, b) in db.execute("SELECT cursor, life FROM lives ORDER BY key")
    ]
    db.close()
    assert [(v.pid, v.cause) for v in rows if v] == [(10, "node_rebooted"), (12, "exit")]
    assert rows[0] and rows[0].died_after is not None and rows[0].died_at is not None
    st2.close()


def test_damaged_and_newer_files_are_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "lifewatch.db").write_bytes(b"this is not a database" * 300)
    st, got = open_store(tmp_path)
    assert got.moved_aside and "moved to" in got.moved_aside
    st.close()
    assert len(list(tmp_path.glob("lifewatch.db.aside-*"))) == 1
    c = sqlite3.connect(tmp_path / "lifewatch.db")
    c.execute("PRAGMA user_version = 99")
    c.close()
    st, got = open_store(tmp_path, clock=lambda: 1_800_000_100.0)
    assert "newer" in (got.moved_aside or "")
    assert not got.resumed
    st.close()


def test_a_full_queue_drops_and_writes_a_gap_in_place(tmp_path: Path) -> None:
    st, got = open_store(tmp_path, queue=16)
    j = Journal(100, first_cursor=got.first_cursor)
    j.sink = st.put
    st.last_cursor = lambda: j.last_cursor
    for i in range(20):
        j.append("born", view(100 + i))
    assert st.dropped == 4 and st.depth == 16
    st._commit()
    j.append("born", view(200))  # room again: the dropped span is written as a gap
    st.close()
    _, again = open_store(tmp_path)
    evs = again.events
    gap = [e for e in evs if e.type == "gap"]
    assert len(gap) == 1 and gap[0].fields is not None
    first = j.first_cursor
    assert gap[0].fields["lost_cursors"] == [first + 16, first + 19]
    assert gap[0].cursor == first + 19
    assert evs[-1].life is not None and evs[-1].life.pid == 200


def test_retention_by_age_and_size(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    st, got = open_store(tmp_path, retention=100.0, max_bytes=1 << 20, clock=lambda: now[0])
    j = Journal(100_000, clock=lambda: now[0], first_cursor=got.first_cursor)
    j.sink = st.put
    st.last_cursor = lambda: j.last_cursor
    j.append("born", view(77), at=now[0])  # alive throughout: never forgotten
    for i in range(50):
        j.append("died", view(i, died=now[0]), at=now[0])
    st._commit()
    now[0] += 1000  # all of them older than the retention now
    j.append("died", view(999, died=now[0]), at=now[0])
    st._commit()
    st._maintain()
    db = st.reader()
    assert db.execute("SELECT count(*) FROM chunks").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM lives").fetchone()[0] == 2
    (blob,) = db.execute("SELECT life FROM lives WHERE died_at IS NULL").fetchone()
    assert unpack_view(blob) == view(77)  # its born event is gone: its state kept in its row
    # Size: 4 KiB argv per life passes 1 MiB; the oldest go until the file fits again.
    for i in range(600):
        big = (f"{i:04d}" + "x" * 4000,)  # distinct: marshal writes a repeated string once
        life = Life(5000 + i, 9, 1, "big", 4, argv=big, born_at=now[0])
        life.died_at = now[0]
        j.append("died", life.snapshot(), at=now[0])
    st._commit()
    assert st.used_bytes() > 1 << 20
    st._maintain()
    assert st.used_bytes() <= 1 << 20
    assert st.deleted > 50
    assert db.execute("PRAGMA freelist_count").fetchone()[0] == 0  # pages given back
    db.close()
    st.close()


def test_a_component_keeps_its_own_table(tmp_path: Path) -> None:
    st, _ = open_store(tmp_path)

    def migrate(c: sqlite3.Connection, have: int) -> None:
        if have < 1:
            c.execute("CREATE TABLE outbox(id INTEGER PRIMARY KEY, body BLOB)")

    st.component("outbox", 1, migrate)
    st.write(lambda c: c.execute("INSERT INTO outbox(body) VALUES (x'01')"))
    st.write(lambda c: c.execute("INSERT INTO nowhere VALUES (1)"))  # fails alone
    st._commit()
    db = st.reader()
    assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 1
    assert db.execute("SELECT version FROM components").fetchall() == [(1,)]
    db.close()
    st.close()


def test_journal_with_skipped_cursors_and_a_loaded_window() -> None:
    base = 5 << SEQ_BITS
    old = [Event(base + i, "born", 1.0, view(i), None, 4) for i in (1, 2, 3)]
    j = Journal(100, first_cursor=base + 1000)  # cursors 4..999 skipped (a crash)
    j.load(old, base, complete=True)
    j.append("gap", None, {"reason": "daemon_crashed"})
    got = j.since(base + 2)
    assert got is not None and [e.cursor for e in got] == [base + 3, base + 1000]
    got = j.since(base + 500)  # a cursor in the lost span: what came after it
    assert got is not None and [e.cursor for e in got] == [base + 1000]
    got = j.since(0)
    assert got is not None and len(got) == 4
    assert j.since(base - 1) is None and j.reset_reason(base - 1) == "other_run"
    j.foreign = lambda c: "node_rebooted"
    assert j.reset_reason(base - 1) == "node_rebooted"
    partial = Journal(100, first_cursor=base + 1000)
    partial.load(old[1:], base, complete=False)  # the first event of the boot is gone
    assert partial.since(base) is None and partial.reset_reason(base + 1) == "cursor_too_old"
    assert partial.since(base + 1) is not None


def test_a_damaged_chunk_is_skipped_and_counted(tmp_path: Path) -> None:
    st, got = open_store(tmp_path)
    j = Journal(100, first_cursor=got.first_cursor)
    j.sink = st.put
    st.last_cursor = lambda: j.last_cursor
    j.append("died", view(11, died=9.0))
    st._commit()
    j.append("died", view(12, died=9.5))
    st.close()
    db = sqlite3.connect(tmp_path / "lifewatch.db")
    (first,) = db.execute("SELECT min(first) FROM chunks").fetchone()
    (blob,) = db.execute("SELECT data FROM chunks WHERE first = ?", (first,)).fetchone()
    flipped = blob[:-5] + bytes([blob[-5] ^ 0x40]) + blob[-4:]  # one bit, as a disk might
    db.execute("UPDATE chunks SET data = ? WHERE first = ?", (flipped, first))
    db.commit()
    db.close()
    st2, again = open_store(tmp_path)
    assert [life.pid for life in again.dead] == [12]  # the other one's state is unreadable
    assert again.skipped == 2  # its chunk (the window) and its life row
    assert [e.life.pid for e in again.events if e.life] == [12]
    st2.close()


def disk_journal(tmp: Path, size: int = 10_000, memory: int = 16) -> tuple[Store, Journal]:
    """A journal that keeps `memory` events in memory and reads older ones back from `st`."""
    st, got = open_store(tmp)
    j = Journal(size, first_cursor=got.first_cursor, memory=memory)
    j.sink = st.put
    j.archive = st
    st.last_cursor = lambda: j.last_cursor
    return st, j


async def drain(sub: Any, until: int) -> list[Event]:
    out: list[Event] = []
    while not out or out[-1].cursor < until:
        out += await asyncio.wait_for(sub.next_batch(), 5)
    return out


async def test_events_that_left_memory_are_replayed_from_disk_in_order(tmp_path: Path) -> None:
    st, j = disk_journal(tmp_path)
    evs = [j.append("born", view(i)) for i in range(700)]
    st._commit()
    j.trim(step=1 << 30)  # memory forgets what is on disk (at the next append, in the daemon)
    assert len(j._events) == 16 and j.since(evs[10].cursor) is None
    assert j.on_disk(evs[10].cursor) and j.on_disk(0)
    assert not j.on_disk(evs[-5].cursor)  # still in memory: no disk read
    sub = j.subscribe(lambda e: True, 4096, after=evs[10].cursor)
    first = await sub.next_batch()  # a page from disk
    assert [e.cursor for e in first] == [e.cursor for e in evs[11 : 11 + len(first)]]
    # Live events meanwhile are not queued twice: they are read by cursor when it gets there.
    late = [j.append("died", view(i, died=9.0)) for i in range(40)]
    st._commit()
    rest = await drain(sub, late[-1].cursor)
    got = [e.cursor for e in first + rest]
    assert got == [e.cursor for e in evs[11:] + late]  # each once, in order, none missing
    assert rest[-1].life is not None and rest[-1].life.died_at == 9.0
    more = j.append("born", view(999))  # caught up: live again, pushed through the queue
    assert [e.cursor for e in await sub.next_batch()] == [more.cursor]
    # From the start of the boot (after=0), and a filtered reader.
    deaths = j.subscribe(lambda e: e.type == "died", 4096, after=0)
    assert [e.cursor for e in await drain(deaths, late[-1].cursor)] == [e.cursor for e in late]
    st.close()


async def test_what_is_not_on_disk_yet_is_replayed_from_memory(tmp_path: Path) -> None:
    st, j = disk_journal(tmp_path)
    evs = [j.append("born", view(i)) for i in range(100)]  # none committed yet
    assert j.held == 100 and not j.on_disk(evs[0].cursor)  # kept past `memory` (16)
    sub = j.subscribe(lambda e: True, 4096, after=evs[0].cursor)
    got = await drain(sub, evs[-1].cursor)
    assert [e.cursor for e in got] == [e.cursor for e in evs[1:]]
    assert j.disk_reads == 0
    st.close()


async def test_an_overflowed_reader_catches_up_from_disk_without_loss(tmp_path: Path) -> None:
    st, j = disk_journal(tmp_path)
    sub = j.subscribe(lambda e: True, 8)
    evs = [j.append("born", view(i)) for i in range(300)]  # the queue of 8 overflows
    st._commit()
    got = await drain(sub, evs[-1].cursor)
    lagging = [e for e in got if e.type == "lagging"]
    assert len(lagging) == 1 and lagging[0].fields is not None
    after = lagging[0].fields["resume_after"]
    assert after == evs[0].cursor - 1  # nothing was taken before it overflowed
    assert [e.cursor for e in got if e.type == "born"] == [e.cursor for e in evs]
    assert not [e for e in got if e.type in ("gap", "reset")]
    st.close()


async def test_what_disk_no_longer_holds_is_a_reset_never_a_hole(tmp_path: Path) -> None:
    st, j = disk_journal(tmp_path, size=200)
    evs = [j.append("born", view(i)) for i in range(150)]
    st._commit()
    evs += [j.append("born", view(i)) for i in range(150, 300)]
    st._commit()
    # Older than the `size` a client may replay: reset, as from memory.
    assert not j.on_disk(evs[50].cursor) and j.since(evs[50].cursor) is None
    sub = j.subscribe(lambda e: True, 4096, after=evs[50].cursor)
    assert [e.type for e in await sub.next_batch()] == ["reset"]
    # Within it, but retention deleted the chunk: reset with a gap, never a silent hole.
    assert st._db is not None
    st._db.execute("DELETE FROM chunks WHERE first <= ?", (evs[149].cursor,))
    assert j.on_disk(evs[120].cursor)
    assert st.read_events(evs[120].cursor, evs[200].cursor, 10) is None
    sub = j.subscribe(lambda e: True, 4096, after=evs[120].cursor)
    assert [e.type for e in await sub.next_batch()] == ["gap", "reset"]
    # What follows the deleted chunk is still served.
    back = st.read_events(evs[149].cursor, evs[200].cursor, 1000)
    assert back is not None and [e.cursor for e in back] == [e.cursor for e in evs[150:201]]
    st.close()


async def test_a_failed_commit_is_retried_and_a_refused_one_is_a_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st, j = disk_journal(tmp_path)
    a = [j.append("born", view(i)) for i in range(50)]
    st._commit()
    assert st._db is not None
    pages = st._db.execute("PRAGMA page_count").fetchone()[0]
    st._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
    b = [j.append("born", view(100 + i)) for i in range(300)]
    st._commit_safe()
    assert st.failures == 1 and st.depth == 300 and st.top == a[-1].cursor  # kept, queued
    st._db.execute("PRAGMA max_page_count = 1073741823")  # room again
    c = [j.append("died", view(1000 + i, died=9.0)) for i in range(50)]
    st._commit_safe()
    sub = j.subscribe(lambda e: True, 4096, after=a[10].cursor)
    got = await drain(sub, c[-1].cursor)
    assert [e.cursor for e in got] == [e.cursor for e in a[11:] + b + c]
    # A batch the file refuses FAIL_LIMIT times is given up, with a gap in its place that
    # even a reader of deaths only is given.
    st._db.execute(f"PRAGMA max_page_count = {st._db.execute('PRAGMA page_count').fetchone()[0]}")
    d = [j.append("died", view(2000 + i, died=9.0)) for i in range(300)]
    for _ in range(FAIL_LIMIT):
        st._commit_safe()
    assert st.depth == 300  # not given up before FAIL_SECONDS of failing
    monkeypatch.setattr(store_module, "FAIL_SECONDS", 0.0)
    st._commit_safe()
    st._db.execute("PRAGMA max_page_count = 1073741823")
    e = [j.append("died", view(3000 + i, died=9.0)) for i in range(30)]
    st._commit_safe()
    j.trim(
        step=1 << 30
    )  # until now memory held them: it forgets only what is on disk (or past size)
    deaths = j.subscribe(lambda ev: ev.type == "died", 4096, after=c[-1].cursor)
    got = await drain(deaths, e[-1].cursor)
    assert [(x.type, x.cursor) for x in got] == [("gap", d[-1].cursor)] + [
        ("died", x.cursor) for x in e
    ]
    assert got[0].fields is not None and got[0].fields["lost_cursors"] == [
        d[0].cursor,
        d[-1].cursor,
    ]
    st.close()


async def test_a_full_store_queue_is_a_gap_for_every_reader(tmp_path: Path) -> None:
    st, got = open_store(tmp_path, queue=100)
    j = Journal(10_000, first_cursor=got.first_cursor, memory=16)
    j.sink, j.archive = st.put, st
    st.last_cursor = lambda: j.last_cursor
    evs = [j.append("died", view(i, died=9.0)) for i in range(250)]  # 150 past the queue
    st._commit_safe()
    evs.append(j.append("died", view(999, died=9.0)))  # queued again: the gap goes first
    st._commit_safe()
    j.trim(step=1 << 30)
    sub = j.subscribe(lambda e: e.type == "died", 4096, after=0)
    back = await drain(sub, evs[-1].cursor)
    gaps = [e for e in back if e.type == "gap"]
    assert len(gaps) == 1 and gaps[0].fields is not None
    assert gaps[0].fields["lost_cursors"] == [evs[100].cursor, evs[249].cursor]
    assert [e.cursor for e in back if e.type == "died"] == [e.cursor for e in evs[:100]] + [
        evs[-1].cursor
    ]
    st.close()


async def test_a_cursor_of_the_run_before_a_crash_is_read_back(tmp_path: Path) -> None:
    """After a crash the next run's cursors skip ahead by up to 2^20: the replay window is
    counted in events, not by subtracting cursors."""
    st, j = disk_journal(tmp_path, size=50_000)
    evs = [j.append("born", view(i)) for i in range(200)]
    st._commit()
    assert st._db is not None
    st._db.close()
    st._db = None  # kill -9: no clean stop
    st2, again = open_store(tmp_path)
    assert again.lost is not None and again.first_cursor - evs[-1].cursor > 50_000
    j2 = Journal(50_000, first_cursor=again.first_cursor, memory=16)
    base = again.boot.ord << SEQ_BITS
    j2.load(again.events, base, complete=False)
    j2.sink, j2.archive = st2.put, st2
    st2.last_cursor = lambda: j2.last_cursor
    later = [j2.append("born", view(1000 + i)) for i in range(100)]
    st2._commit()
    assert j2.on_disk(evs[100].cursor)
    sub = j2.subscribe(lambda e: True, 4096, after=evs[100].cursor)
    got = await drain(sub, later[-1].cursor)
    assert [e.cursor for e in got] == [e.cursor for e in evs[101:] + later]
    st2.close()


async def test_a_death_amended_after_its_commit_is_replayed_amended(tmp_path: Path) -> None:
    st, j = disk_journal(tmp_path)
    life = Life(7, 1007, 1, "sleep", 4, exe="/bin/sleep", argv=("sleep",), born_at=5.0)
    life.died_at, life.cause = 9.0, "vanished"
    died = j.append("died", life.snapshot(), None, 1)
    st._commit()  # written as first known: no exit
    life.exit, life.cause = exit_of(3, None), "exit"
    died.amend(life.snapshot(), 2)  # its exit report came (Registry.completed)
    st.put(life.snapshot())  # ... and the registry's `touched`
    for i in range(40):
        j.append("born", view(100 + i))
    st._commit()
    sub = j.subscribe(lambda e: e.type == "died", 4096, after=0)
    got = await drain(sub, died.cursor)
    assert got[0].life is not None and got[0].life.exit == exit_of(3, None)
    assert got[0].life.cause == "exit" and got[0].cursor == died.cursor
    st.close()


async def test_a_database_that_cannot_be_read_is_a_reset_not_a_traceback(
    tmp_path: Path,
) -> None:
    st, j = disk_journal(tmp_path)
    evs = [j.append("born", view(i)) for i in range(100)]
    st._commit()
    j.trim(step=1 << 30)

    def broken() -> sqlite3.Connection:
        raise sqlite3.OperationalError("disk I/O error")

    st.reader = broken  # type: ignore[method-assign]
    assert st.read_events(evs[0].cursor, evs[-1].cursor, 10) is None
    sub = j.subscribe(lambda e: True, 4096, after=evs[3].cursor)
    assert [e.type for e in await sub.next_batch()] == ["gap", "reset"]
    st.close()


def test_memory_keeps_what_is_not_on_disk_yet_up_to_size(tmp_path: Path) -> None:
    """An event leaves memory once committed (the store's queue holds it until then anyway):
    a reader coming back from disk finds the rest in memory without waiting for a commit.
    Whatever the store does, memory holds at most `size` events."""
    st, j = disk_journal(tmp_path, size=200, memory=16)
    evs = [j.append("born", view(i)) for i in range(100)]
    assert j.held == 100 and j.since(evs[0].cursor) is not None  # none on disk yet
    evs += [j.append("born", view(i)) for i in range(100, 250)]
    assert j.held == 200 and j.oldest_cursor == evs[50].cursor  # `size` bounds it
    st._commit()
    evs.append(j.append("born", view(999)))
    assert j.held == 201 - 64  # a step at a time: one append never forgets thousands
    j.trim(step=1 << 30)
    assert j.held == 16 and j.oldest_cursor == evs[-16].cursor
    assert j.on_disk(evs[100].cursor) and not j.on_disk(evs[-16].cursor)
    st.close()


async def test_a_full_queue_gap_in_a_chunk_that_starts_before_its_span_is_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gap for a full queue goes behind what was queued before the drop: its chunk can
    start before the span it names, and a page ending inside the span still finds it."""
    monkeypatch.setattr(store_module, "BATCH", 4)  # stands for 20,000 against a queue of 100,000
    st, got = open_store(tmp_path, queue=10)
    j = Journal(10_000, first_cursor=got.first_cursor, memory=16)
    j.sink, j.archive = st.put, st
    st.last_cursor = lambda: j.last_cursor
    ev = [j.append("born", view(i)) for i in range(40)]  # 10 queued, 30 dropped
    st._commit()  # room again
    ev.append(j.append("born", view(40)))  # ends the drop: its gap, then this event
    st._commit()
    st._commit()  # a chunk [8, 9, gap(39), 40]
    ev.append(j.append("born", view(41)))
    sub = j.subscribe(lambda e: True, 4096, after=ev[5].cursor)
    back = await drain(sub, ev[-1].cursor)
    gaps = [e for e in back if e.type == "gap"]
    assert len(gaps) == 1 and gaps[0].fields is not None
    assert gaps[0].fields["lost_cursors"] == [ev[10].cursor, ev[39].cursor]
    told = {e.cursor for e in back}
    assert all(e.cursor in told for e in ev[6:10] + ev[40:])  # nothing else missing
    st.close()


def test_a_batch_given_up_twice_names_both_spans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "FAIL_SECONDS", 0.0)
    st, j = disk_journal(tmp_path, memory=1000)
    ev = [j.append("born", view(i)) for i in range(50)]
    st._commit()
    assert st._db is not None
    st._db.execute(f"PRAGMA max_page_count = {st._db.execute('PRAGMA page_count').fetchone()[0]}")
    ev += [j.append("born", view(i)) for i in range(50, 350)]
    for _ in range(FAIL_LIMIT):
        st._commit_safe()  # given up: a gap for 50..349
    ev += [j.append("born", view(i)) for i in range(350, 650)]
    for _ in range(FAIL_LIMIT):
        st._commit_safe()  # given up again, with that gap in it
    st._db.execute("PRAGMA max_page_count = 1073741823")
    ev += [j.append("born", view(i)) for i in range(650, 660)]
    st._commit()
    rows = st.read_events(ev[0].cursor - 1, st.top, 10_000)
    assert rows is not None
    gaps = [e.fields["lost_cursors"] for e in rows if e.type == "gap" and e.fields]
    assert gaps == [[ev[50].cursor, ev[649].cursor]]
    st.close()
