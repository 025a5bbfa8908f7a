"""The registry: every known life of this node by (pid, start), and the journal of changes.

Only the tracker (app/core/tracker.py) calls the methods under "changing"; everything else
reads. Each change is journaled in the same synchronous step, so a reader never sees state
the journal lacks.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from app.core.identity import NodeIdentity
from app.core.journal import Encoder, Event, Journal
from app.core.life import ALIVE, DEAD, UNKNOWN, Exit, Life, LifeView, retained_bytes
from app.procfs import ProcInfo


def life_key(pid: int, start_ticks: int) -> int:
    """One int for (pid, start): pids fit in 23 bits (PID_MAX_LIMIT = 2**22)."""
    return start_ticks << 23 | pid


# Each entry of the dead lives' order is the life's key and its size estimate in one int:
# no second object per dead life. A size is at most SIZE_MASK (argv is capped far below).
SIZE_BITS = 24
SIZE_MASK = (1 << SIZE_BITS) - 1


MAX_SLACK = 5  # ticks: the widest a derived start's slack grows (app/core/tracker.py)
# Where a dead life started, around a start asked for: nearest first (most stop at 0).
_OFFSETS = (0, *(sign * d for d in range(1, MAX_SLACK + 1) for sign in (-1, 1)))


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to "is this life alive?"."""

    state: str
    life: Life | None
    reason: str


class Registry:
    def __init__(
        self,
        node: NodeIdentity,
        journal: Journal,
        history: int = 100_000,
        history_bytes: int = 64 << 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        # Set by the API layer (app/api/app.py): a life's head is encoded through it at birth
        # and exec while stream clients listen, so that its death costs little to send.
        self.encoder: Encoder | None = None
        self.journal = journal
        self.history = history
        # Dead lives are also evicted, oldest first, while their estimated size
        # (life.retained_bytes) passes this: argv is the user's to choose (design.md fact 14).
        self.history_bytes = history_bytes
        self.dead_bytes = 0
        self._clock = clock
        self.alive: dict[int, Life] = {}
        # Dead lives by life_key, oldest first in _dead_order (key << SIZE_BITS | size). An
        # int key and a deque of ints cost ~60 B per life less than an OrderedDict of tuples.
        self.dead: dict[int, Life] = {}
        self._dead_order: deque[int] = deque()
        self.evicted = 0
        # Where lives changed outside events go (the durable store's put), if anywhere.
        self.keep: Callable[[LifeView], object] | None = None
        # Lives dead before this moment and not in `dead` are unknown, not "never existed".
        self.history_since = clock()

    # -- reading ---------------------------------------------------------------------------
    def holder(self, pid: int) -> Life | None:
        return self.alive.get(pid)

    def find(self, pid: int, start_ticks: int) -> Life | None:
        life = self.alive.get(pid)
        if life is not None and life.matches(start_ticks):
            return life
        # Derived starts are +-3 ticks (dating.DERIVED_SLACK), up to MAX_SLACK when two reports
        # disagreed (app/core/tracker.py): a pid is not reused within a few ticks.
        for d in _OFFSETS:
            dead = self.dead.get(life_key(pid, start_ticks + d))
            if dead is not None and dead.matches(start_ticks):
                return dead
        return None

    def answer(self, pid: int, start_ticks: int) -> Answer:
        life = self.find(pid, start_ticks)
        if life is not None:
            return Answer(life.state, life, "known")
        holder = self.alive.get(pid)
        if holder is not None and holder.start_ticks > start_ticks:
            return Answer(UNKNOWN, None, "pid now held by a later life; no record of this one")
        return Answer(UNKNOWN, None, "no record of this life")

    def lives(self, state: str | None = None) -> Iterator[Life]:
        if state in (None, ALIVE):
            yield from self.alive.values()
        if state in (None, DEAD):
            yield from reversed(self.dead.values())

    def __len__(self) -> int:
        return len(self.alive) + len(self.dead)

    # -- changing ------------------------------------------------------------------------
    def load(self, infos: Iterable[ProcInfo], source: int) -> int:
        """Add lives found in /proc without a birth event (the start-up snapshot)."""
        new = []
        for info in infos:
            if info.stat.pid not in self.alive:
                life = self.alive[info.stat.pid] = self._from_proc(info, source, born_at=None)
                new.append(life)
        for life in self.alive.values():
            self._link_parent(life)
        if self.keep is not None:
            for life in new:
                self.keep(life.snapshot())
        return len(new)

    def _from_proc(self, info: ProcInfo, source: int, born_at: float | None) -> Life:
        st = info.stat
        life = Life(
            st.pid, st.start_ticks, st.ppid, st.comm, source,
            exe=info.exe, argv=info.argv, uid=info.uid, born_at=born_at,
        )  # fmt: skip
        life.pidfd_ino = info.pidfd_ino
        return life

    def _link_parent(self, life: Life) -> None:
        parent = self.alive.get(life.ppid)
        if parent is not None and parent.start_ticks <= life.start_ticks:
            life.parent_ticks = parent.start_ticks

    def born(self, life: Life, sources: int, fields: dict[str, Any] | None = None) -> None:
        old = self.alive.get(life.pid)
        if old is not None and old is not life:
            # The pid is held by a new start: evidence that the old life is gone.
            self.died(old, None, life.born_at or self._clock(), "pid_reused", 0)
        self._link_parent(life)
        self.alive[life.pid] = life
        view = life.snapshot()
        self._prepare(view)
        self.journal.append("born", view, fields, sources, life.born_at)

    def learned(self, info: ProcInfo, source: int) -> Life:
        """A live process found outside the event stream (lookup, resync)."""
        life = self._from_proc(info, source, born_at=None)
        self.born(life, source, {"late": True})
        return life

    def exec(self, life: Life, sources: int, at: float) -> None:
        view = life.snapshot()
        self._prepare(view)
        self.journal.append("exec", view, None, sources, at)

    def _prepare(self, view: LifeView) -> None:
        """Encode now what the life's death will not change, while streams listen: its
        `died` event then costs little (app/api/lifejson.py)."""
        enc = self.encoder
        if enc is not None and self.journal.pushers:  # stream clients, not metrics or watches
            enc.head(view)

    def died(
        self,
        life: Life,
        exit: Exit | None,
        at: float,
        cause: str,
        sources: int,
        died_after: float | None = None,
    ) -> Event:
        life.died_at = at
        life.died_after = died_after
        life.exit = exit
        life.cause = cause
        life.sources |= sources
        if self.alive.get(life.pid) is life:
            del self.alive[life.pid]
        self._file_dead(life)
        self._evict()
        return self.journal.append("died", life.snapshot(), None, sources, at)

    def _file_dead(self, life: Life) -> None:
        """Keep a dead life for lookups, in the order it died, counted in bytes."""
        key = life_key(life.pid, life.start_ticks)
        self.dead[key] = life
        size = min(retained_bytes(life), SIZE_MASK)
        self._dead_order.append(key << SIZE_BITS | size)
        self.dead_bytes += size

    def _evict(self) -> None:
        """Forget the oldest dead lives until both bounds hold (lookups of them then answer
        `unknown`, as before the history began)."""
        order = self._dead_order
        while order and (len(order) > self.history or self.dead_bytes > self.history_bytes):
            entry = order.popleft()
            self.dead_bytes -= entry & SIZE_MASK
            if self.dead.pop(entry >> SIZE_BITS, None) is not None:
                self.evicted += 1

    def completed(self, died: Event, life: Life, sources: int) -> None:
        """`life`'s death, journaled as `died`, is now known better (its exit report came)."""
        died.amend(life.snapshot(), sources)
        self.touched(life)  # the store keeps the life; the event stays as first written

    def touched(self, life: Life) -> None:
        """`life` changed without an event (a second report of its death brought its exit):
        the durable store keeps the change."""
        if self.keep is not None:
            self.keep(life.snapshot())

    def restore(self, alive: Iterable[Life], dead: Iterable[Life], since: float) -> None:
        """Lives an earlier run of this boot recorded (app/core/restart.py), before any
        event: dead ones oldest first. History then began at `since`."""
        for life in alive:
            self.alive[life.pid] = life
        for life in dead:
            self._file_dead(life)
        self._evict()
        self.history_since = min(self.history_since, since)

    def note(self, type: str, fields: dict[str, Any], at: float | None = None) -> None:
        """A journal event about the node rather than a life (gap, resync, source...)."""
        self.journal.append(type, None, fields, 0, at)
