"""History queries over the durable journal: dead lives of every retained boot, by death
time, paged. Runs in a worker thread with its own read-only connection (WAL: it never waits
for the writer, and the event loop never waits for it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.core.life import LifeView
from app.core.store import Boot, Resolver, Store, boot_row


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
    sql = (f"SELECT boot, key, cursor, life FROM lives WHERE {' AND '.join(where)} "
           "ORDER BY boot, key LIMIT ?")  # fmt: skip
    page = HistoryPage([], None)
    c = store.reader()
    try:
        boots = {row[0]: boot_row(row) for row in c.execute("SELECT * FROM boots")}
        rows = c.execute(sql, (*args, q.limit + 1)).fetchall()
        lives = Resolver(c)
        # Resolved in cursor order (one read per chunk), listed in the query's order.
        views = {(r[0], r[1]): lives.view(r[2], r[3])
                 for r in sorted(rows[: q.limit], key=lambda r: r[2] or 0)}  # fmt: skip
        page.skipped = lives.skipped
    finally:
        c.close()
    for ord, key, _, _ in rows[: q.limit]:
        view = views[(ord, key)]
        boot = boots.get(ord)
        if view is not None and boot is not None and (q.exe is None or view.exe == q.exe):
            page.lives.append((boot, view))
    if len(rows) > q.limit:
        page.last = (rows[q.limit - 1][0], rows[q.limit - 1][1])
    return page
