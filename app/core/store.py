"""The durable journal: events and lives in SQLite (WAL), written by one thread, off the loop.

The event loop only appends to a bounded deque (`put`, O(1), never blocks, never touches
the disk). A writer thread wakes every `commit_interval` seconds, takes what queued and
writes it in one transaction (group commit). So: every event older than `commit_interval`
plus one commit (tens of milliseconds; `commit_seconds` on /metrics) is in the database,
and a daemon killed at any moment loses at most that tail. When the deque is full the
event is not queued: counted (`dropped`), and the span of dropped cursors is written as a
`gap` row in its place, so a client replaying it after a restart is told.

Cursors are `boot_ord << SEQ_BITS | n`: `n` counts this boot's events from 1 and goes on
across daemon restarts of the same boot; `boot_ord` numbers the boots this database has
seen, so a cursor names its boot. After a clean stop the next run continues at the next
cursor; after a crash it continues past every cursor the dead run may have handed out
(`reserved`, written with each commit), and the cursors in between are reported lost.

Schema versioned (PRAGMA user_version) with migrations (MIGRATIONS); a database that is
damaged, not lifewatch's or of a newer schema is moved aside (logged) and a new one begins.
Other components keep their own tables in the same file through `component` and `write`
(docs/storage.md).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import marshal
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.identity import NodeIdentity
from app.core.journal import Event, store_gap_start
from app.core.life import Life, LifeView, retained_bytes
from app.core.storecodec import (
    CodecError,
    EventRow,
    fast_view,
    flat_view,
    life_of,
    pack_chunk,
    pack_view,
    read_chunk,
    unpack_chunk,
    unpack_view,
)

log = logging.getLogger(__name__)

SEQ_BITS = 37  # events per boot: 1.4e11; boot_ord < 2**16 keeps cursors below 2**53 (JS)
ORDS = (1 << 16) - 1
RESERVE = 1 << 20  # cursors a run may hand out past its last commit (see `reserved`)
APP_ID = 0x4C574442  # "LWDB": PRAGMA application_id of lifewatch's database
SCHEMA = 1
HEARTBEAT = 5.0  # s between commits when nothing happens: last_seen stays this fresh
BATCH = 20_000  # most queue items in one transaction
FAIL_LIMIT = 3  # failed commits of one batch, over at least FAIL_SECONDS, before it is
FAIL_SECONDS = 10.0  # given up (Store._failed): a disk full for a moment loses nothing
WRITER_CACHE_KIB = 256  # the writer's page cache once the boot is read back
STEP = 20  # chunks (commits' worth of events) deleted per retention step: a short one
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

Write = Callable[[sqlite3.Connection], object]
Item = Event | LifeView | Write
Row = tuple[Any, ...]


def boot_of(cursor: int) -> int:
    return cursor >> SEQ_BITS


@dataclass(frozen=True, slots=True)
class StoreSettings:
    path: Path
    queue: int = 100_000
    commit_interval: float = 0.1
    retention: float = 7 * 86400.0
    max_bytes: int = 256 << 20
    synchronous: str = "NORMAL"
    maintain_interval: float = 10.0


@dataclass(frozen=True, slots=True)
class Boot:
    ord: int
    boot_id: str
    host: str
    btime: int
    hz: int
    first_seen: float
    last_seen: float
    next_cursor: int
    reserved: int
    clean: bool
    committed: int  # the newest cursor written (retention may have deleted it since)


@dataclass
class Restored:
    """What the database knew of this boot, read at start (app/core/restart.py uses it)."""

    boot: Boot  # this boot's row as the previous run left it (a new boot: just made)
    first_cursor: int  # this run's first cursor
    resumed: bool  # a previous run of this boot wrote here
    alive: list[LifeView] = field(default_factory=list)
    dead: list[Life] = field(default_factory=list)  # oldest death first
    events: list[Event] = field(default_factory=list)  # oldest first
    lost: tuple[int, int] | None = None  # cursors handed out, never committed (a crash)
    rebooted: tuple[str, int, float] | None = None  # previous boot id, lives, its last_seen
    skipped: int = 0  # rows that could not be read back (damaged)
    moved_aside: str | None = None  # why the old file was moved aside, if it was


def boot_row(row: tuple[Any, ...]) -> Boot:
    o, boot_id, host, btime, hz, first, last, nxt, reserved, clean, committed = row
    return Boot(o, boot_id, host, btime, hz, first, last, nxt, reserved, bool(clean), committed)


class MoveAside(Exception):
    """The database file cannot be used as it is."""


def _create(c: sqlite3.Connection) -> None:
    # (PRAGMA auto_vacuum = INCREMENTAL is set by _connect before any table exists.)
    # One statement at a time: executescript would commit the migration's transaction.
    for sql in (
        "CREATE TABLE boots(ord INTEGER PRIMARY KEY, boot_id TEXT UNIQUE NOT NULL, "
        "host TEXT NOT NULL, btime INTEGER NOT NULL, hz INTEGER NOT NULL, "
        "first_seen REAL NOT NULL, last_seen REAL NOT NULL, next_cursor INTEGER NOT NULL, "
        "reserved INTEGER NOT NULL, clean INTEGER NOT NULL, committed INTEGER NOT NULL)",
        # One row per commit: the events of one group commit (storecodec.pack_chunk).
        "CREATE TABLE chunks(first INTEGER PRIMARY KEY, last INTEGER NOT NULL, "
        "at REAL NOT NULL, data BLOB NOT NULL)",
        # One row per life: its state is the life of the event `cursor` names, or `life`.
        "CREATE TABLE lives(boot INTEGER NOT NULL, key INTEGER NOT NULL, died_at REAL, "
        "comm BLOB, cursor INTEGER, life BLOB, PRIMARY KEY(boot, key)) WITHOUT ROWID",
        # No index on died_at: one less B-tree per life on the storm's path; the queries
        # by death time (history pages, restore, retention) scan, off the event loop.
        "CREATE TABLE components(name TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    ):
        c.execute(sql)


# version -> step that brings a database of that version to the next one. Version 0 is an
# empty file. A step runs inside the transaction that sets the new user_version.
MIGRATIONS: dict[int, Write] = {0: _create}


def _chunk(events: list[EventRow]) -> Row:
    """The chunk row of a batch: its cursors, its last event's time, its events."""
    try:
        data = pack_chunk(events)
    except ValueError:  # a field marshal cannot write: that event keeps its place, not them
        events = [e if _marshals(e) else (*e[:5], {"fields_not_kept": True}) for e in events]
        data = pack_chunk(events)
    return (events[0][0], max(e[0] for e in events), events[-1][2], data)


def _first(row: EventRow) -> int:
    return int(row[0])


def _lost_from(row: EventRow, after: int, upto: int) -> bool:
    """Whether `row` is the gap of events the writer could not keep whose span begins in
    (after, upto] while the gap itself (at the span's last cursor) is past `upto`."""
    first = store_gap_start(row[1], row[5])
    return first is not None and after < first <= upto < row[0]


def _marshals(row: EventRow) -> bool:
    try:
        marshal.dumps(row)
        return True
    except ValueError:
        return False


def _cursor(ev: Event) -> int:
    return ev.cursor


def _died_at(life: Life) -> float:
    return life.died_at or 0.0


def _comm_bytes(comm: str | None) -> bytes | None:
    return None if comm is None else comm.encode("utf-8", "surrogateescape")


def life_key(pid: int, start_ticks: int) -> int:
    return start_ticks << 23 | pid  # as app/core/registry.py: pids fit in 23 bits


class Resolver:
    """Life rows to lives: the inline `life`, or the life of the event their `cursor` names
    (read from its chunk; the chunks last read are kept, so rows in cursor order cost one
    read per chunk)."""

    def __init__(
        self, c: sqlite3.Connection, keep: int = 8, known: dict[int, LifeView] | None = None
    ) -> None:
        self.c = c
        self.keep = keep
        self.known = known or {}  # lives already read, by their event's cursor
        self._chunks: dict[int, tuple[int, dict[int, Any]]] = {}  # first -> (last, rows)
        self.skipped = 0

    def view(self, cursor: int | None, blob: bytes | None) -> LifeView | None:
        try:
            if blob is not None:
                return unpack_view(blob)
            if cursor is None:
                raise CodecError("a life row with neither life nor cursor")
            got = self.known.get(cursor)
            return fast_view(self._flat(cursor)) if got is None else got
        except CodecError:
            self.skipped += 1
            return None

    def life(self, cursor: int | None, blob: bytes | None) -> Life | None:
        """As `view`, made a Life at once (no view in between)."""
        try:
            if blob is None and cursor is not None and cursor not in self.known:
                return life_of(self._flat(cursor))
        except CodecError:
            self.skipped += 1
            return None
        v = self.view(cursor, blob)
        return None if v is None else life_of(v)

    def _flat(self, cursor: int) -> Any:
        for first, (last, rows) in self._chunks.items():
            if first <= cursor <= last:
                return rows[cursor]
        row = self.c.execute("SELECT first, last, data FROM chunks WHERE first <= ? "
                             "ORDER BY first DESC LIMIT 1", (cursor,)).fetchone()  # fmt: skip
        if row is None or row[1] < cursor:
            raise CodecError(f"the event {cursor} is no longer kept")
        rows = {e[0]: e[4] for e in read_chunk(row[2])}
        if len(self._chunks) >= self.keep:
            del self._chunks[next(iter(self._chunks))]
        self._chunks[row[0]] = (row[1], rows)
        if cursor not in rows:
            raise CodecError(f"the event {cursor} is not in its chunk")
        return rows[cursor]


class Store:
    """The database of one node, open for this run. `put` is the loop's whole cost."""

    def __init__(self, settings: StoreSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.path = settings.path
        self._clock = clock
        self._q: deque[Item] = deque()
        self._max = settings.queue
        self._db: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the writer's connection: the writer, or close()
        self.boot_ord = 0
        self.last_cursor: Callable[[], int] = lambda: 0  # the journal's, set by the service
        self.ords: dict[int, str] = {}  # boot ord -> boot id, for the reset reason
        # Dropped when the queue was full: counted; the open span is written as a gap row.
        self.dropped = 0
        self._drop: list[Any] | None = None  # [first cursor, last cursor, since, until]
        # Measured by the writer: commits, rows, the commit time histogram.
        self.commits = 0
        self.rows = 0
        self.commit_counts = [0] * (len(COMMIT_BUCKETS) + 1)
        self.commit_sum = 0.0
        self.commit_max = 0.0
        self.last_commit = 0.0
        self.failures = 0
        self.used = 0  # bytes of pages in use, as of the last commit
        self.top = 0  # the newest cursor committed (the journal reads back up to it)
        self._failing: tuple[int, float] | None = None  # (failed commits, since) of a batch
        self._beat = 0.0
        self.deleted = 0
        self.maintenance_seconds = 0.0

    # -- start -------------------------------------------------------------------------------
    def open(
        self, node: NodeIdentity, history: int, window: int, history_bytes: int = 1 << 62
    ) -> Restored:
        """Open (or make) the database and read this boot back. A file that cannot be used
        is moved aside with a log line and a new one is made: never a failed start."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            got = self._open(node, (history, history_bytes), window)
        except (MoveAside, sqlite3.DatabaseError) as e:
            if isinstance(e, sqlite3.ProgrammingError | sqlite3.InterfaceError):
                raise  # this code's fault, not the file's
            aside = self._move_aside(str(e))
            got = self._open(node, (history, history_bytes), window)
            got.moved_aside = aside
        if self._db is not None:
            # The boot is read back: from now on the writer appends, touching the last pages
            # of each table. SQLite's default page cache (2 MiB) would fill with pages it no
            # longer reads, and count in the daemon's memory (bench.memory_lives: 1,343
            # against 1,044 B per live process without the store, 10,000 sleepers).
            self._db.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
        # Every cursor before this run's first is on disk or was lost with an earlier run.
        self.top = got.first_cursor - 1
        return got

    def _connect(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        c.execute("PRAGMA busy_timeout = 5000")
        # Takes effect only on a file with no table yet (a new one): freed pages can then be
        # given back a few at a time (Store._vacuum), never by a full VACUUM.
        c.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise MoveAside(f"cannot use WAL mode (got {mode})")
        c.execute(f"PRAGMA synchronous = {self.settings.synchronous}")
        c.execute("PRAGMA journal_size_limit = 67108864")
        return c

    def _open(self, node: NodeIdentity, history: tuple[int, int], window: int) -> Restored:
        c = self._connect()
        try:
            self._migrate(c)
            got = self._boot(c, node, history, window)
        except BaseException:
            c.close()
            raise
        self._db = c
        return got

    def _migrate(self, c: sqlite3.Connection) -> None:
        app_id = c.execute("PRAGMA application_id").fetchone()[0]
        version = c.execute("PRAGMA user_version").fetchone()[0]
        tables = c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id not in (0, APP_ID) or (app_id == 0 and tables):
            raise MoveAside("not a lifewatch database")
        if version > SCHEMA:
            raise MoveAside(f"schema {version} is newer than this lifewatch's ({SCHEMA})")
        while version < SCHEMA:
            c.execute("BEGIN IMMEDIATE")
            try:
                MIGRATIONS[version](c)
                version += 1
                c.execute(f"PRAGMA user_version = {version}")
                c.execute(f"PRAGMA application_id = {APP_ID}")
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            log.info("database %s: schema now %d", self.path, version)

    def _move_aside(self, why: str) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._clock()))
        target = self.path.with_name(f"{self.path.name}.aside-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            with contextlib.suppress(FileNotFoundError):
                src.rename(Path(str(target) + suffix))
        log.error("database %s cannot be used (%s): moved aside to %s; starting a new one",
                  self.path, why, target)  # fmt: skip
        return f"{why}; moved to {target}"

    def _boot(
        self, c: sqlite3.Connection, node: NodeIdentity, history: tuple[int, int], window: int
    ) -> Restored:
        now = self._clock()
        self.ords = {o: b for o, b in c.execute("SELECT ord, boot_id FROM boots")}
        row = c.execute("SELECT * FROM boots WHERE boot_id = ?", (node.boot_id,)).fetchone()
        c.execute("BEGIN IMMEDIATE")
        try:
            if row is None:
                got = self._new_boot(c, node, now)
            else:
                got = self._same_boot(c, boot_row(row), history, window)
            reserved = got.first_cursor - 1 + RESERVE
            c.execute(
                "UPDATE boots SET clean = 0, reserved = ?, next_cursor = ? WHERE ord = ?",
                (reserved, got.first_cursor, got.boot.ord),
            )
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        self.boot_ord = got.boot.ord
        return got

    def _new_boot(self, c: sqlite3.Connection, node: NodeIdentity, now: float) -> Restored:
        top = c.execute("SELECT max(ord) FROM boots").fetchone()[0]
        # A new file starts at an ord taken from the clock, so that cursors a client kept
        # from a file moved aside are not taken for this one's.
        ord = (int(now) // 60) % ORDS + 1 if top is None else top % ORDS + 1
        c.execute("DELETE FROM boots WHERE ord = ?", (ord,))  # 65,535 boots ago: reused
        first = ord << SEQ_BITS | 1
        boot = Boot(ord, node.boot_id, node.hostname, node.clock.btime, node.clock.hz,
                    now, now, first, first - 1, False, first - 1)  # fmt: skip
        c.execute("INSERT INTO boots VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                  [getattr(boot, f) for f in Boot.__slots__])  # fmt: skip
        self.ords[ord] = node.boot_id
        got = Restored(boot, first, resumed=False)
        prev = c.execute(
            "SELECT boot_id, last_seen FROM boots WHERE ord != ? ORDER BY last_seen DESC LIMIT 1",
            (ord,),
        ).fetchone()
        if prev is not None:
            n = self._rebooted(c, ord, max(prev[1], node.clock.btime))
            got.rebooted = (prev[0], n, prev[1])
        return got

    def _rebooted(self, c: sqlite3.Connection, ord: int, boot_time: float) -> int:
        """Every life of an earlier boot that was still alive died with that boot."""
        rows = c.execute(
            "SELECT l.boot, l.key, l.cursor, l.life, b.last_seen FROM lives l JOIN boots b "
            "ON b.ord = l.boot WHERE l.died_at IS NULL AND l.boot != ? ORDER BY l.cursor",
            (ord,),
        ).fetchall()
        out = []
        lives = Resolver(c)
        for boot, key, cursor, blob, last_seen in rows:
            v = lives.view(cursor, blob)
            if v is None:
                continue
            died = max(boot_time, last_seen)
            v = v._replace(died_at=died, cause="node_rebooted", died_after=last_seen)
            out.append((died, pack_view(v), boot, key))
        c.executemany("UPDATE lives SET died_at = ?, life = ?, cursor = NULL "
                      "WHERE boot = ? AND key = ?", out)  # fmt: skip
        return len(out)

    def _same_boot(
        self, c: sqlite3.Connection, boot: Boot, history: tuple[int, int], window: int
    ) -> Restored:
        lo = boot.ord << SEQ_BITS
        committed = max(lo, boot.committed)
        if boot.clean:
            first = max(boot.next_cursor, committed + 1)
        else:
            first = max(boot.reserved, committed) + 1
        got = Restored(boot, first, resumed=True)
        if not boot.clean and first - 1 > committed:
            got.lost = (committed + 1, first - 1)
        got.events = self._window(c, lo, first, window, got)
        # The window's lives are read once: the newest deaths' rows point into it.
        lives = Resolver(c, known={e.cursor: e.life for e in got.events if e.life is not None})
        rows = c.execute("SELECT died_at, cursor, life FROM lives WHERE boot = ? AND died_at "
                         "IS NULL ORDER BY cursor", (boot.ord,)).fetchall()  # fmt: skip
        got.alive = [v for v in (lives.view(r[1], r[2]) for r in rows) if v is not None]
        got.dead = self._dead(c, boot.ord, history, lives)
        got.skipped += lives.skipped
        return got

    def _dead(
        self, c: sqlite3.Connection, ord: int, history: tuple[int, int], lives: Resolver
    ) -> list[Life]:
        """This boot's dead lives the registry keeps (`history` lives, `history_bytes` of
        them), newest born first, in the file's own order (no sort, no index to keep up on
        the storm's path); returned oldest death first, as the registry holds them."""
        count, budget = history
        out: list[Life] = []
        rows = c.execute("SELECT cursor, life FROM lives WHERE boot = ? AND died_at IS NOT "
                         "NULL ORDER BY key DESC", (ord,))  # fmt: skip
        while len(out) < count and budget > 0:
            part = rows.fetchmany(min(4096, count - len(out)))
            if not part:
                break
            for cursor, blob in part:
                life = lives.life(cursor, blob)
                if life is not None:
                    out.append(life)
                    budget -= retained_bytes(life)
        rows.close()
        out.sort(key=_died_at)
        return out

    def _window(
        self, c: sqlite3.Connection, lo: int, first: int, window: int, got: Restored
    ) -> list[Event]:
        """The newest `window` events of this boot, oldest first."""
        chunks: list[list[Event]] = []
        n = 0
        for (data,) in c.execute("SELECT data FROM chunks WHERE first > ? AND first < ? "
                                 "ORDER BY first DESC", (lo, first)):  # fmt: skip
            try:
                rows = unpack_chunk(data)
            except CodecError:
                got.skipped += 1
                continue
            chunks.append([Event(r[0], r[1], r[2], r[4], r[5], r[3]) for r in rows])
            n += len(rows)
            if n >= window:
                break
        events = [ev for chunk in reversed(chunks) for ev in chunk]
        if any(a.cursor >= b.cursor for a, b in itertools.pairwise(events)):
            # Never written so (events are queued in cursor order); the journal bisects.
            events = sorted({ev.cursor: ev for ev in events}.values(), key=_cursor)
        return events[-window:] if window else []

    def start(self) -> None:
        """Start the writer thread (after `open`)."""
        self._thread = threading.Thread(target=self._run, name="lifewatch-store", daemon=True)
        self._thread.start()

    # -- the loop's side: never blocks -----------------------------------------------------
    def put(self, item: Item) -> bool:
        """Queue an event (or a life, or a component's write) for the next commit."""
        q = self._q
        if len(q) < self._max:
            if self._drop is not None:
                self._end_drop()
            q.append(item)
            return True
        self.dropped += 1
        if isinstance(item, Event):
            now = self._clock()
            if self._drop is None:
                self._drop = [item.cursor, item.cursor, now, now]
            else:
                self._drop[1], self._drop[3] = item.cursor, now
        return False

    def _end_drop(self) -> None:
        first, last, since, until = self._drop or (0, 0, 0.0, 0.0)
        self._drop = None
        log.error("history queue full: events %d..%d were not written to disk", first, last)
        fields = {"source": "store", "reason": "not_on_disk", "lost_cursors": [first, last],
                  "since": since, "until": until,
                  "detail": "the database writer fell behind; these events were streamed "
                            "but not kept across a restart"}  # fmt: skip
        # In place of the last lost event: a replay after a restart says what is missing.
        self._q.append(Event(last, "gap", until, None, fields, 0))

    def write(self, fn: Write) -> bool:
        """Run `fn(connection)` on the writer thread inside the next group commit (for a
        component's own tables). Never blocks; False when the queue is full."""
        return self.put(fn)

    def component(
        self, name: str, version: int, migrate: Callable[[sqlite3.Connection, int], None]
    ) -> None:
        """Declare a component's tables: `migrate(conn, have)` brings them from version
        `have` (0: absent) to `version`, once, in a transaction on the writer thread."""

        def step(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT version FROM components WHERE name = ?", (name,)).fetchone()
            have = 0 if row is None else int(row[0])
            if have < version:
                migrate(c, have)
                c.execute("INSERT OR REPLACE INTO components VALUES (?, ?)", (name, version))

        self.write(step)

    def reader(self) -> sqlite3.Connection:
        """A read-only connection of its own (WAL: reads never wait for the writer). For
        the thread that makes it; the caller closes it."""
        c = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        c.execute("PRAGMA busy_timeout = 5000")
        return c

    # -- the journal's archive (app/core/journal.py, Archive) -----------------------------------
    def committed(self) -> int:
        return self.top

    def read_events(self, after: int, upto: int, limit: int) -> list[Event] | None:
        """This boot's events after `after` up to `upto`, oldest first, about `limit` (whole
        chunks: a page never decodes a chunk twice), read on a connection of its own (call
        it from a thread). None when they cannot all be read: retention deleted the event
        after `after`, a chunk is damaged, the file cannot be read (logged)."""
        lo = self.boot_ord << SEQ_BITS
        try:
            c = self.reader()
        except sqlite3.Error as e:
            log.warning("reading events back from %s failed: %s", self.path, e)
            return None
        try:
            # One snapshot for both reads: retention cannot delete between them.
            c.execute("BEGIN")
            (start,) = c.execute(
                "SELECT max(first) FROM chunks WHERE first <= ? AND first > ?",
                (max(after, lo) + 1, lo),
            ).fetchone()
            if start is None:
                return None  # the event after `after` is no longer kept
            out: list[Event] = []
            rows = c.execute(
                "SELECT data FROM chunks WHERE first >= ? AND first <= ? ORDER BY first",
                (start, upto),
            )
            full = False
            for (data,) in rows:
                # Lives are made only for the events in range, and at most `limit` of them.
                chunk = sorted(read_chunk(data), key=_first)
                for r in chunk:
                    if after < r[0] <= upto:
                        if len(out) >= limit:
                            full = True
                            break
                        view = None if r[4] is None else fast_view(r[4])
                        out.append(Event(r[0], r[1], r[2], view, r[5], r[3]))
                    elif r[0] > upto and _lost_from(r, after, upto):
                        out.append(Event(r[0], r[1], r[2], None, r[5], r[3]))
                if full:
                    # The page stops before the span: its gap is found again by the next.
                    out = [e for e in out if e.cursor <= upto]
                    break
            else:
                out += self._lost_within(c, after, upto)
            self._newer_deaths(c, out)
            c.execute("COMMIT")
        except (sqlite3.Error, CodecError) as e:
            log.warning("reading events back from %s failed: %s", self.path, e)
            return None
        finally:
            c.close()
        out.sort(key=_cursor)  # a gap written for dropped events goes where they were
        return out

    def _lost_within(self, c: sqlite3.Connection, after: int, upto: int) -> list[Event]:
        """The `gap` of events the writer could not keep (put, _failed), when the span it
        names reaches into (after, upto]: it is written at the span's last cursor, in the
        first chunk past it, so a page ending inside the span would not see it. It ends the
        page: the reader goes on after it, as a replay after a restart does."""
        row = c.execute(
            "SELECT data FROM chunks WHERE first > ? ORDER BY first LIMIT 1", (upto,)
        ).fetchone()
        if row is None:
            return []
        return [Event(r[0], r[1], r[2], None, r[5], r[3])
                for r in read_chunk(row[0]) if _lost_from(r, after, upto)]  # fmt: skip

    def _newer_deaths(self, c: sqlite3.Connection, events: list[Event]) -> None:
        """A death whose exit report came after its event was written (Registry.completed):
        the event as memory has it, from its life's row, which keeps the newest state."""
        died = {life_key(e.life.pid, e.life.start_ticks): e
                for e in events if e.type == "died" and e.life is not None}  # fmt: skip
        keys = list(died)
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            marks = ",".join("?" * len(part))
            for key, blob in c.execute(
                f"SELECT key, life FROM lives WHERE boot = ? AND life IS NOT NULL "
                f"AND key IN ({marks})",
                (self.boot_ord, *part),
            ):
                ev = died[key]
                now = unpack_view(blob)
                assert ev.life is not None
                if now.died_at == ev.life.died_at:
                    ev.life = now  # (the event's own sources stay as first written)

    @property
    def depth(self) -> int:
        return len(self._q)

    def cursor_reason(self, cursor: int) -> str:
        """Why a cursor of another boot or run cannot be served (journal reset reason)."""
        ord = boot_of(cursor)
        return "node_rebooted" if ord != self.boot_ord and ord in self.ords else "other_run"

    # -- the writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        interval = self.settings.commit_interval
        next_maintain = time.monotonic() + self.settings.maintain_interval
        while not self._stop.wait(interval):
            self._commit_safe()
            if time.monotonic() >= next_maintain:
                self._maintain()
                next_maintain = time.monotonic() + self.settings.maintain_interval

    def _commit_safe(self) -> None:
        try:
            with self._lock:
                if not self._q and time.monotonic() - self._beat < HEARTBEAT:
                    return
                self._commit()  # when idle, a heartbeat: last_seen moves on
                while self._q:
                    self._commit()
        except Exception:
            self.failures += 1
            log.exception("history commit failed; retrying at the next interval")

    def _commit(self, clean: bool = False) -> None:
        assert self._db is not None
        t0 = time.perf_counter()
        # Taken before the batch: the daemon had recorded everything it knew by then.
        now = self._clock()
        last = self.last_cursor()
        q, batch = self._q, list[Item]()
        while q and len(batch) < BATCH:
            batch.append(q.popleft())
        c = self._db
        try:
            events, lives, writes = self._rows(batch)
            c.execute("BEGIN")
            top = 0
            if events:
                chunk = _chunk(events)
                top = chunk[1]
                c.execute("INSERT OR REPLACE INTO chunks VALUES (?,?,?,?)", chunk)
            c.executemany("INSERT OR REPLACE INTO lives VALUES (?,?,?,?,?,?)", lives)
            for fn in writes:
                self._component_write(c, fn)
            c.execute(
                "UPDATE boots SET last_seen = ?, reserved = max(reserved, ?), next_cursor = "
                "max(next_cursor, ?), clean = ?, committed = max(committed, ?) WHERE ord = ?",
                (now, last + RESERVE, last + 1, int(clean), top, self.boot_ord),
            )
            c.execute("COMMIT")
        except BaseException:
            self._failed(batch)
            if c.in_transaction:  # SQLITE_FULL and the like have rolled back already
                c.execute("ROLLBACK")
            raise
        took = time.perf_counter() - t0
        self._failing = None
        self.top = max(self.top, top)
        self.used = self.used_bytes()
        self._beat = time.monotonic()
        self.commits += 1
        self.rows += len(events) + len(lives)
        self.last_commit = now
        self.commit_sum += took
        self.commit_max = max(self.commit_max, took)
        i = 0
        while i < len(COMMIT_BUCKETS) and took > COMMIT_BUCKETS[i]:
            i += 1
        self.commit_counts[i] += 1

    def _failed(self, batch: list[Item]) -> None:
        """A batch whose commit failed goes back to the front of the queue, to be tried at the
        next interval: the journal reads back from disk, and a batch simply forgotten would
        be a hole there. One that fails FAIL_LIMIT times in a row (a row the file refuses)
        is given up, and a `gap` naming its cursors is written in its place."""
        if not batch:
            return  # a heartbeat: nothing to keep, and not a batch's failure
        mono = time.monotonic()
        tries, since = self._failing or (0, mono)
        tries += 1
        if tries < FAIL_LIMIT or mono - since < FAIL_SECONDS:
            self._failing = (tries, since)
            self._q.extendleft(reversed(batch))
            return
        self._failing = None
        cursors = [item.cursor for item in batch if type(item) is Event]
        for item in batch:  # a store gap given up with it: its span is this one's too
            start = store_gap_start(item.type, item.fields) if type(item) is Event else None
            if start is not None:
                cursors.append(start)
        if cursors:
            now = self._clock()
            fields = {"source": "store", "reason": "not_on_disk",
                      "lost_cursors": [min(cursors), max(cursors)], "since": now, "until": now,
                      "detail": "the database refused these events; they were streamed "
                                "but not kept"}  # fmt: skip
            self._q.appendleft(Event(max(cursors), "gap", now, None, fields, 0))
        log.error("history commit failed %d times in %.0f s: %d items given up",
                  tries, mono - since, len(batch))  # fmt: skip

    def _rows(self, batch: list[Item]) -> tuple[list[EventRow], list[Row], list[Write]]:
        """A batch as chunk rows, life rows (the last state of each life) and writes."""
        events: list[EventRow] = []
        # The last state of each life in the batch, as the cursor of its event and the view
        # that event carried (cursor None: a view written alone): its row is made once, not
        # per event (a life born and dead within one commit, as in a storm, has two).
        last: dict[int, tuple[int | None, LifeView]] = {}
        writes: list[Write] = []
        for item in batch:
            if type(item) is Event:
                view = item.life
                if view is None:
                    events.append((item.cursor, item.type, item.at, item.sources, None,
                                   item.fields))  # fmt: skip
                    continue
                events.append((item.cursor, item.type, item.at, item.sources,
                               flat_view(view), item.fields))  # fmt: skip
                last[view.start_ticks << 23 | view.pid] = (item.cursor, view)
            elif isinstance(item, LifeView):
                last[life_key(item.pid, item.start_ticks)] = (None, item)
            else:
                writes.append(item)  # type: ignore[arg-type]
        ord = self.boot_ord
        lives: list[Row] = []
        for key, (cursor, v) in last.items():
            lives.append((ord, key, v.died_at, _comm_bytes(v.comm), cursor,
                          None if cursor is not None else pack_view(v)))  # fmt: skip
        return events, lives, writes

    def _component_write(self, c: sqlite3.Connection, fn: Write) -> None:
        c.execute("SAVEPOINT component")
        try:
            fn(c)
            c.execute("RELEASE component")
        except Exception:
            c.execute("ROLLBACK TO component")
            c.execute("RELEASE component")
            log.exception("a component's write to the database failed; skipped")

    # -- retention ----------------------------------------------------------------------------
    def _maintain(self) -> None:
        """Forget what is older than `retention`, then the oldest while the file passes
        `max_bytes`; give freed pages back. A few chunks at a time, each step its own short
        transaction, so the writer's next commit never waits long."""
        t0 = time.perf_counter()
        try:
            cutoff = self._clock() - self.settings.retention
            while self._forget(cutoff):
                pass
            for _ in range(1000):  # a bound per pass; the next pass goes on
                if self.used_bytes() <= self.settings.max_bytes or not self._forget(None):
                    break
            self._vacuum()
        except Exception:
            self.failures += 1
            log.exception("history retention failed; retrying at the next pass")
        self.maintenance_seconds += time.perf_counter() - t0

    def _forget(self, cutoff: float | None) -> bool:
        """Delete the oldest STEP chunks (those older than `cutoff`, or the oldest whatever
        their age) and the dead lives whose state they held or that died before `cutoff`.
        A life still alive whose state is in them is kept: its state is copied into its row
        first. False when nothing was left to delete."""
        assert self._db is not None
        c = self._db
        with self._lock:
            old = "WHERE at < ?" if cutoff is not None else ""
            args: tuple[Any, ...] = (cutoff, STEP) if cutoff is not None else (STEP,)
            row = c.execute(f"SELECT max(last), count(*) FROM (SELECT last FROM chunks {old} "
                            "ORDER BY first LIMIT ?)", args).fetchone()  # fmt: skip
            upto, n = row if row[0] is not None else (None, 0)
            c.execute("BEGIN")
            try:
                if upto is not None:
                    keep = c.execute("SELECT boot, key, cursor FROM lives WHERE died_at IS NULL "
                                     "AND life IS NULL AND cursor <= ? ORDER BY cursor",
                                     (upto,)).fetchall()  # fmt: skip
                    lives = Resolver(c)
                    for boot, key, cursor in keep:
                        v = lives.view(cursor, None)
                        blob = None if v is None else pack_view(v)
                        c.execute("UPDATE lives SET life = ?, cursor = NULL WHERE boot = ? "
                                  "AND key = ?", (blob, boot, key))  # fmt: skip
                    n += c.execute("DELETE FROM lives WHERE life IS NULL AND cursor <= ?",
                                   (upto,)).rowcount  # fmt: skip
                    c.execute("DELETE FROM chunks WHERE last <= ?", (upto,))
                if cutoff is not None:
                    n += c.execute("DELETE FROM lives WHERE (boot, key) IN (SELECT boot, key "
                                   "FROM lives WHERE died_at < ? ORDER BY died_at LIMIT ?)",
                                   (cutoff, STEP * 100)).rowcount  # fmt: skip
                elif upto is None:
                    n += c.execute("DELETE FROM lives WHERE (boot, key) IN (SELECT boot, key "
                                   "FROM lives WHERE died_at IS NOT NULL ORDER BY died_at "
                                   "LIMIT ?)", (STEP * 100,)).rowcount  # fmt: skip
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        self.deleted += n
        return n > 0

    def _vacuum(self) -> None:
        assert self._db is not None
        for _ in range(1000):
            with self._lock:
                free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
                if not free:
                    return
                # executescript steps the pragma to its end; execute() frees one page.
                self._db.executescript("PRAGMA incremental_vacuum(256)")

    def used_bytes(self) -> int:
        """Bytes of the database's pages in use (the file less its free pages)."""
        c = self._db
        if c is None:
            return 0
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        free = c.execute("PRAGMA freelist_count").fetchone()[0]
        size = c.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += Path(str(self.path) + suffix).stat().st_size
        return total

    def commit_histogram(self) -> Iterator[tuple[float, int]]:
        n = 0
        for bound, count in zip((*COMMIT_BUCKETS, float("inf")), self.commit_counts, strict=True):
            n += count
            yield bound, n

    # -- stop ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Write what is queued, mark the stop clean, and close."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self._db is None:
            return
        with self._lock:
            try:
                while self._q:
                    self._commit()
                self._commit(clean=True)
            except Exception:
                log.exception("history: final commit failed; the next start reports a gap")
            self._db.close()
            self._db = None
