"""The event journal: numbered events, a bounded replay window and live subscribers.

Cursors are integers that grow by one per event. With the durable journal
(app/core/store.py) they are per-boot sequence numbers that go on across daemon restarts:
the window is read back from the database at start (`load`), so a client resumes across a
restart. Without it (memory only) each run starts numbering at the wall clock in
microseconds, so a cursor from an earlier run is below this run's first and is recognised
as such. A cursor that the window no longer holds, or that belongs to another run or boot,
gets an explicit `reset`: the client must re-read state. Nothing is ever skipped silently.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from app.core.fanout import Accept as Accept
from app.core.fanout import Interest, SubscriberIndex
from app.core.life import LifeView, iso, source_names

log = logging.getLogger(__name__)


# Events read back from the durable journal per step of a reader catching up from disk.
DISK_PAGE = 1024
TRIM_STEP = 64  # events memory forgets per append, at most, beyond what `size` forces


def store_gap_start(type: str, fields: object) -> int | None:
    """The first cursor of the span named by a `gap` the store wrote where events it could
    not keep were (Store.put, _failed); None for any other event."""
    if type != "gap" or not isinstance(fields, dict) or fields.get("source") != "store":
        return None
    span = fields.get("lost_cursors")
    first = span[0] if isinstance(span, list) and span else None
    return first if isinstance(first, int) else None


def lost_on_disk(ev: Event) -> bool:
    """Read back from disk, a store's gap goes to every reader, whatever its filter: the
    events it stands for may have been ones the reader wanted."""
    return store_gap_start(ev.type, ev.fields) is not None


class Archive(Protocol):
    """Where the events older than the journal's memory are (app/core/store.py)."""

    def committed(self) -> int:
        """The newest cursor on disk."""
        ...

    def read_events(self, after: int, upto: int, limit: int) -> list[Event] | None:
        """Events after `after` up to `upto`, oldest first, at most `limit`; None when the
        file no longer holds the one after `after` (retention). Blocks: run in a thread."""
        ...


class Encoder(Protocol):
    """Lives and events as JSON: implemented by the API layer (app/api/lifejson.py)."""

    def life_json(self, life: LifeView) -> dict[str, Any]: ...

    def event_bytes(self, ev: Event) -> bytes: ...

    def event_bytes_redacted(self, ev: Event) -> bytes:
        """The event without its life's argv and exe (callers who may not see them)."""
        ...

    def head(self, view: LifeView) -> bytes:
        """Encode now, and keep, the part of a life's JSON its death will not change."""
        ...


class Event:
    """One journal entry. JSON is made lazily, once, and shared by every reader."""

    __slots__ = ("_json", "_redacted", "at", "cursor", "fields", "life", "sources", "type")

    def __init__(
        self,
        cursor: int,
        type: str,
        at: float,
        life: LifeView | None,
        fields: dict[str, Any] | None,
        sources: int,
    ) -> None:
        self.cursor = cursor
        self.type = type
        self.at = at
        self.life = life
        self.fields = fields
        self.sources = sources
        self._json: bytes | None = None
        self._redacted: bytes | None = None

    def to_dict(self, enc: Encoder) -> dict[str, Any]:
        out: dict[str, Any] = {"cursor": self.cursor, "type": self.type, "at": iso(self.at)}
        if self.sources:
            out["sources"] = source_names(self.sources)
        if self.fields:
            out.update(self.fields)
        if self.life is not None:  # last, as Event.json writes it
            out["life"] = enc.life_json(self.life)
        return out

    def json(self, enc: Encoder) -> bytes:
        """`to_dict` as UTF-8 JSON, made once for every stream that sends it."""
        if self._json is None:
            self._json = enc.event_bytes(self)
        return self._json

    def json_redacted(self, enc: Encoder) -> bytes:
        """The event's JSON without its life's argv and exe, made once for every stream of a
        caller who may not see them (docs/security.md, "Who may read what")."""
        if self._redacted is None:
            self._redacted = enc.event_bytes_redacted(self)
        return self._redacted

    def amend(self, life: LifeView, sources: int) -> None:
        """A fuller account of the same transition (a death found by a lookup, then its exit
        report): replays, and readers that have not sent the event yet, get this one."""
        self.life = life
        self.sources |= sources
        self._json = self._redacted = None


# Hands an event to an idle reader at once, without waiting; False when it cannot (the
# reader's buffer is full, it is closing): the event then goes through the queue.
Push = Callable[[Event], bool]


class Subscriber:
    """A live reader with a bounded queue. `offer` is called synchronously by the journal and
    never blocks; when the queue is full the subscriber is marked overflowed and, on its next
    read, is told `lagging` (the cursor it has been given everything up to) and then catches
    up from the journal window (no loss), or gets `gap` + `reset` if the window has moved past
    it."""

    def __init__(
        self,
        journal: Journal,
        accept: Accept | Interest,
        maxsize: int,
        delivered: int,
        push: Push | None = None,
    ) -> None:
        self._journal = journal
        # An Interest is indexed by the journal (only matching events are offered); a bare
        # callable is offered every event.
        self.interest = accept if isinstance(accept, Interest) else None
        self.accept: Accept = accept.matcher() if isinstance(accept, Interest) else accept
        self.push = push
        # The reader holds a batch it has not finished sending: what comes meanwhile queues
        # behind it, so a push never overtakes an event taken earlier.
        self.busy = False
        self.pushed = 0
        self.maxsize = maxsize
        self.queue: deque[Event] = deque()
        self.pending: list[Event] = []  # replay handed over at subscription
        # Catching up from disk after this cursor (events that left the journal's memory):
        # live events are not queued meanwhile, they are read by cursor when it gets there.
        self.behind: int | None = None
        self.overflowed = False
        self.overflows = 0
        self.delivered = delivered  # cursor of the last event handed to the reader
        self._wake = asyncio.Event()
        self.closed = False

    def offer(self, ev: Event) -> None:
        if self.overflowed or self.behind is not None or not self.accept(ev):
            return
        if self.push is not None and not self.busy and not self.queue and not self.pending:
            try:
                pushed = self.push(ev)
            except Exception:
                # Never into the kernel reader: this reader takes the queue from now on.
                log.exception("push to a stream reader failed; it is served from its queue")
                self.push = None
                self._journal.demoted(self)
                pushed = False
            if pushed:
                self.delivered = ev.cursor
                self.pushed += 1
                return
        if len(self.queue) >= self.maxsize:
            self.overflowed = True
            self.overflows += 1
            self._journal.overflows += 1
        else:
            self.queue.append(ev)
        self._wake.set()

    def take(self) -> list[Event]:
        """What is ready now, without waiting (may be empty)."""
        if self.pending:
            batch, self.pending = self.pending, []
        elif self.overflowed:
            batch = self._catch_up()
        else:
            batch = list(self.queue)
            self.queue.clear()
        if batch and batch[-1].cursor > 0:
            self.delivered = max(self.delivered, batch[-1].cursor)
        self.busy = bool(batch)
        return batch

    async def next_batch(self) -> list[Event]:
        while not self.closed:
            if self.behind is not None:
                batch = await self._read_behind(self.behind)
                if batch:
                    return batch
                continue
            batch = self.take()
            if batch:
                return batch
            self._wake.clear()
            await self._wake.wait()
        return []

    def _catch_up(self) -> list[Event]:
        """`lagging` naming the cursor to resume after, then what was missed from the window
        (or `gap` + `reset` when the window no longer holds it)."""
        self.overflowed = False
        self.queue.clear()
        j = self._journal
        lagging = j.lagging(self.delivered, self.maxsize)
        if j.on_disk(self.delivered):
            self.behind = self.delivered  # next_batch reads the rest back from disk
            return [lagging]
        missed = j.since(self.delivered)
        if missed is None:
            return [lagging, *self._overrun()]
        return [lagging, *(e for e in missed if self.accept(e))]

    def _overrun(self, reason: str = "subscriber_overflow") -> list[Event]:
        j = self._journal
        gap = j.synthetic("gap", {"reason": reason, "after": self.delivered})
        reset = j.synthetic("reset", {"reason": reason})
        self.delivered = j.last_cursor
        return [gap, reset]

    async def _read_behind(self, after: int) -> list[Event]:
        """One step of catching up from `after`: a page read back from disk, or, once the
        journal's memory holds what follows, the rest from memory and live from then on
        (both in the same loop turn as the switch: no event between them is missed)."""
        j = self._journal
        if not j.on_disk(after):
            self.behind = None
            missed = j.since(after)
            if missed is None:
                return self._overrun()
            batch = [e for e in missed if self.accept(e)]
            self.delivered = max(self.delivered, missed[-1].cursor if missed else after)
            self.busy = bool(batch)
            return batch
        try:
            got = await j.read_back(after, DISK_PAGE)
        except Exception:  # never out of next_batch: a reader's task must not end on it
            log.exception("reading events back from disk failed")
            got = None
        if self.closed or self.behind != after:
            return []
        if got is None:
            self.behind = None
            return self._overrun(j.reset_reason(after))
        events, upto = got
        self.behind = self.delivered = upto
        return [e for e in events if self.accept(e) or lost_on_disk(e)]

    def close(self) -> None:
        self.closed = True
        self._journal.unsubscribe(self)
        self._wake.set()


def _cursor(ev: Event) -> int:
    return ev.cursor


class Journal:
    def __init__(
        self,
        size: int,
        clock: Callable[[], float] = time.time,
        first_cursor: int | None = None,
        memory: int | None = None,
    ) -> None:
        """`size` events can be replayed; the newest `memory` of them (default: all) are kept
        in memory, the older ones are read back from `archive` (the durable store) once it
        is set. Without an archive the window is what memory holds. An event leaves memory
        only once the archive has it on disk (it is held by the store's queue until then
        anyway), so a reader reading back from disk reaches memory without waiting for a
        commit; `size` bounds memory whatever the store does."""
        self.size = size
        self.memory = size if memory is None else max(1, min(memory, size))
        self.archive: Archive | None = None
        self._clock = clock
        self._events: deque[Event] = deque()
        # This run's first cursor (given by the durable store: its boot's next).
        self.first_cursor = int(clock() * 1_000_000) if first_cursor is None else first_cursor
        self._next = self.first_cursor
        # Cursors above `floor` are this journal's (this run's, or this boot's once `load`ed).
        self.floor = self.first_cursor - 1
        self.evicted = self.floor  # the newest cursor the window no longer holds
        # The newest cursor of this boot's earlier runs (`load`): cursors skip between runs
        # (after a crash, by up to 2^20), so events are counted per run, not by difference.
        self._earlier = self.floor
        # Every appended event, for the durable store (Store.put): never blocks.
        self.sink: Callable[[Event], object] | None = None
        # The reset reason for a cursor of another run or boot (Store.cursor_reason).
        self.foreign: Callable[[int], str] | None = None
        # Stream clients (events pushed onto their sockets) are offered each event before
        # the internal readers (metrics, watches), whose wakeups need not delay a client; and
        # only the subscribers whose filter could match it (app/core/fanout.py).
        self._subs: SubscriberIndex[Subscriber] = SubscriberIndex()
        self.overflows = 0
        self.disk_reads = 0  # pages read back from the archive (read_back)
        self.disk_events = 0
        # Events by (type, SourceSet bits) and gaps by (source, reason), counted as they are
        # appended: one dict update each, cheaper than a subscriber that wakes to count them
        # (docs/performance.md). Names are made when /metrics or /v1/node read them.
        self.by_sources: dict[tuple[str, int], int] = {}
        self.gaps: dict[tuple[str, str], int] = {}

    @property
    def last_cursor(self) -> int:
        """The cursor of the newest event (first_cursor - 1 before any)."""
        return self._next - 1

    @property
    def counts(self) -> dict[str, int]:
        """Events appended by type."""
        out: dict[str, int] = {}
        for (kind, _), n in list(self.by_sources.items()):
            out[kind] = out.get(kind, 0) + n
        return out

    @property
    def held(self) -> int:
        """Events in the replay window."""
        return len(self._events)

    @property
    def oldest_cursor(self) -> int:
        return self._events[0].cursor if self._events else self._next

    def append(
        self,
        type: str,
        life: LifeView | None = None,
        fields: dict[str, Any] | None = None,
        sources: int = 0,
        at: float | None = None,
    ) -> Event:
        ev = Event(self._next, type, self._clock() if at is None else at, life, fields, sources)
        self._next += 1
        events = self._events
        events.append(ev)
        if len(events) > self.memory:
            self.trim()
        key = (type, sources)
        counts = self.by_sources
        counts[key] = counts.get(key, 0) + 1
        if type == "gap" and fields:
            gkey = (str(fields.get("source", "?")), str(fields.get("reason", "?")))
            self.gaps[gkey] = self.gaps.get(gkey, 0) + 1
        for sub in self._subs.candidates(ev):  # an idle client is sent it now (push)
            sub.offer(ev)
        if self.sink is not None:
            self.sink(ev)
        return ev

    def trim(self, step: int = TRIM_STEP) -> None:
        """Memory forgets its oldest events past `memory`: those on disk, or past `size`;
        at most `step` more than `size` forces. Done at each append."""
        events = self._events
        archive = self.archive
        on_disk = self._next if archive is None else archive.committed()
        excess = len(events) - self.memory
        # At most TRIM_STEP past what `size` forces, per call: a commit of 20,000 events does
        # not make one append on the kernel reader's path forget all of them at once.
        budget = max(step, excess - (self.size - self.memory))
        while excess > 0 and budget > 0:
            if events[0].cursor > on_disk and excess <= self.size - self.memory:
                break
            self.evicted = events.popleft().cursor
            excess -= 1
            budget -= 1

    def load(self, events: list[Event], floor: int, complete: bool) -> None:
        """The window as an earlier run of this boot left it (oldest first, cursors below
        this run's first, before any append): a client resumes from any of them. Cursors
        above `floor` are this boot's; `complete` when `events` are all of them since."""
        assert not self._events, "load before the first append"
        events = [e for e in events if floor < e.cursor < self.first_cursor][-self.memory :]
        self._events.extend(events)
        self.floor = floor
        self.evicted = floor
        self._earlier = events[-1].cursor if events else floor
        if events and not complete:
            self.evicted = events[0].cursor - 1

    def synthetic(self, type: str, fields: dict[str, Any]) -> Event:
        """An event for one reader only (reset, overflow gap): carries the current cursor."""
        return Event(self.last_cursor, type, self._clock(), None, fields, 0)

    def lagging(self, delivered: int, limit: int) -> Event:
        """For one reader that fell behind: it has everything up to `delivered` (the event's
        cursor) and resumes after it; `behind` counts the journal's events since."""
        fields = {
            "resume_after": delivered,
            "reason": "queue_full",
            "behind": self.last_cursor - delivered,
            "queue_limit": limit,
        }
        return Event(delivered, "lagging", self._clock(), None, fields, 0)

    def since(self, after: int) -> list[Event] | None:
        """Events after `after`, or None when they cannot all be given (reset needed).
        `after=0` means from the start of this run (this boot, with the durable store)."""
        if after == 0:
            after = self.floor
        if after > self.last_cursor or after < self.floor:
            return None  # another run's cursor
        if after < self.evicted:
            return None  # older than what memory holds (see on_disk)
        events = self._events
        # Cursors may skip (a restart after a crash goes on past every cursor the dead run
        # may have handed out): found by bisection, not by arithmetic.
        start = bisect.bisect_right(events, after, key=_cursor)
        return list(itertools.islice(events, start, None))

    def on_disk(self, after: int) -> bool:
        """Whether the events after `after` are to be read back from disk (`read_back`): they
        left memory, are of this boot and within the `size` events a client may replay."""
        if after == 0:
            after = self.floor
        return (
            self.archive is not None
            and self.floor <= after < self.evicted
            and self._events_after(after) <= self.size
        )

    def _events_after(self, after: int) -> int:
        """How many events came after `after` (cursors are dense within a run): this run's,
        and the earlier runs' since `after` (an upper bound if those skipped too)."""
        n = self.last_cursor - max(after, self.first_cursor - 1)
        if after < self._earlier:
            n += self._earlier - after
        return n

    async def read_back(self, after: int, limit: int) -> tuple[list[Event], int] | None:
        """Up to `limit` events after `after` (on_disk), read from the archive in a thread
        (the loop never waits on the disk), and the cursor they reach: the caller goes on
        after it. None when they cannot be read back (retention took them, the file cannot be
        read). Memory forgets only what is on disk (trim), so what left it is there."""
        archive = self.archive
        if archive is None:
            return None
        if after == 0:
            after = self.floor
        upto = min(self.evicted, archive.committed())
        if upto <= after:
            return None
        events = await asyncio.to_thread(archive.read_events, after, upto, limit)
        if events is None:
            return None
        self.disk_reads += 1
        self.disk_events += len(events)
        # Cursors may skip (a restart after a crash): a page short of `limit` reached `upto`;
        # it may end past it, on the gap of events the store could not keep.
        reach = events[-1].cursor if len(events) >= limit else upto
        return events, max(reach, events[-1].cursor) if events else reach

    def reset_reason(self, after: int) -> str:
        if after != 0 and (after > self.last_cursor or after < self.floor):
            return "other_run" if self.foreign is None else self.foreign(after)
        return "cursor_too_old"

    def subscribe(
        self,
        accept: Accept | Interest,
        maxsize: int,
        after: int | None = None,
        push: Push | None = None,
    ) -> Subscriber:
        """Live events from now, or replay from `after` then live, with no hole between.
        A cursor the journal cannot serve yields `reset` first, then live events. With
        `push`, an event for a reader that is idle is handed over at once."""
        sub = Subscriber(self, accept, maxsize, self.last_cursor, push)
        if after is not None and after != self.last_cursor:
            missed = self.since(after)
            if missed is None and self.on_disk(after):
                sub.behind = sub.delivered = self.floor if after == 0 else after
            elif missed is None:
                sub.pending = [self.synthetic("reset", {"reason": self.reset_reason(after)})]
            else:
                sub.pending = [e for e in missed if sub.accept(e)]
        self._subs.add(sub, client=push is not None)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subs.remove(sub)

    def demoted(self, sub: Subscriber) -> None:
        """`sub`'s push failed: it no longer counts as a stream client."""
        self._subs.demote(sub)

    @property
    def pushers(self) -> int:
        """Subscribers that take events pushed onto a socket: stream clients. O(1): the
        registry asks on every birth."""
        return self._subs.clients

    @property
    def subscribers(self) -> int:
        return len(self._subs)
