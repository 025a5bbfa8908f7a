"""History queries over the durable journal: dead lives of every retained boot, by death
time, paged. Runs in a worker thread with its own read-only connection (WAL: it never waits
for the writer, and the event loop never waits for it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.core.life import LifeView
from app.core.store import Boot, Store, boot_row
from app.core.storecodec import CodecError, unpack_view


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    since: float | None = None  # died at or after (epoch seconds)
    until: float | None = None  # died before
    comm: str | None = None
    exe: str | None = None
    after: tuple[int, int] | None = None  # (boot ord, life key) of the last life of a page
    limit: int = 100


@dataclass
class HistoryPage:
    lives: list[tuple[Boot, LifeView]]
    last: tuple[int, int] | None  # where the next page starts (None: this is the last)
    skipped: int = 0  # rows that could not be read back


def query_history(store: Store, q: HistoryQuery) -> HistoryPage:
    """Dead lives ordered by boot, then start (a life's key orders by start ticks)."""
    where = ["died_at IS NOT NULL"]
    args: list[Any] = []
    if q.since is not None:
        where.append("died_at >= ?")
        args.append(q.since)
    if q.until is not None:
        where.append("died_at < ?")
        args.append(q.until)
    if q.comm is not None:
        where.append("comm = ?")
        args.append(q.comm.encode("utf-8", "surrogateescape"))
    if q.after is not None:
        where.append("(boot > ? OR (boot = ? AND key > ?))")
        args += [q.after[0], q.after[0], q.after[1]]
    sql = (f"SELECT boot, key, life FROM lives WHERE {' AND '.join(where)} "
           "ORDER BY boot, key LIMIT ?")  # fmt: skip
    c = store.reader()
    try:
        boots = {row[0]: boot_row(row) for row in c.execute("SELECT * FROM boots")}
        rows = c.execute(sql, (*args, q.limit + 1)).fetchall()
    finally:
        c.close()
    page = HistoryPage([], None)
    for ord, _key, blob in rows[: q.limit]:
        try:
            view = unpack_view(blob)
        except CodecError:
            page.skipped += 1
            continue
        boot = boots.get(ord)
        if boot is not None and (q.exe is None or view.exe == q.exe):
            page.lives.append((boot, view))
    if len(rows) > q.limit:
        page.last = (rows[q.limit - 1][0], rows[q.limit - 1][1])
    return page
