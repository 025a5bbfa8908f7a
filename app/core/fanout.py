"""What a reader wants from the journal (`Interest`), and the index that offers an event only
to the readers that could want it.

Offering each event to every subscriber costs O(clients) per event, each running its filter:
with 1,000 clients each following one life, every death ran 1,000 filters (design.md fact 13).
The index files each subscriber under its most selective filter — its pid (for `life=` and
`pid=`), else its exe, else its comm, else its types — so an event about a life is offered to
the subscribers filed under that life's pid, exe and comm, and to those that filter only by
type; an event without a life (gap, resync, source...) to every subscriber, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from app.core.journal import Event

Accept = Callable[["Event"], bool]


@dataclass(frozen=True, slots=True)
class Interest:
    """A stream's filter as data: every field that is set must match (`None`: any).
    `ticks` (with `pid`) names one life: it matches within the life's start slack."""

    types: frozenset[str] | None = None
    pid: int | None = None
    ticks: int | None = None
    comm: str | None = None
    exe: str | None = None
    canary: bool | None = None
    # A set of lives, (pid, start ticks) (a stream of a life's partners): an event about a
    # life matches when it is one of them.
    lives: frozenset[tuple[int, int]] | None = None
    uid: int | None = None  # only lives run by this uid (a caller under hidepid)

    def matcher(self) -> Accept:
        """The filter as a closure specialised to the fields set: it runs once per offered
        event, on the kernel reader's callback."""
        types, pid, ticks = self.types, self.pid, self.ticks
        comm, exe, canary, uid = self.comm, self.exe, self.canary, self.uid
        if self.lives is not None:
            lives = dict(self.lives)

            def one_of(ev: Event) -> bool:
                if types is not None and ev.type not in types:
                    return False
                lv = ev.life
                if lv is None:
                    return True
                if uid is not None and lv.uid != uid:
                    return False
                start = lives.get(lv.pid)
                return start is not None and abs(lv.start_ticks - start) <= max(lv.start_slack, 0)

            return one_of
        if pid is None and comm is None and exe is None and canary is None and uid is None:

            def by_type(ev: Event) -> bool:
                return types is None or ev.type in types

            return by_type

        def accept(ev: Event) -> bool:
            if types is not None and ev.type not in types:
                return False
            lv = ev.life
            if lv is None:  # node events (gap, resync, source...) pass unless types exclude
                return True
            return (
                (pid is None or lv.pid == pid)
                and (ticks is None or abs(lv.start_ticks - ticks) <= max(lv.start_slack, 0))
                and (comm is None or lv.comm == comm)
                and (exe is None or lv.exe == exe)
                and (canary is None or lv.canary == canary)
                and (uid is None or lv.uid == uid)
            )

        return accept


class Indexed(Protocol):
    """What the index needs of a subscriber: its interest (None: an opaque filter, offered
    every event)."""

    interest: Interest | None


S = TypeVar("S", bound=Indexed)
# Bucket keys: ("pid", n), ("exe", s), ("comm", s), ("type", t), ("all",)
Key = tuple[object, ...]


def _keys(interest: Interest | None) -> list[Key]:
    if interest is None:
        return [("all",)]
    if interest.lives is not None:
        return sorted({("pid", p) for p, _ in interest.lives}) or [("type", "none")]
    if interest.pid is not None:
        return [("pid", interest.pid)]
    if interest.exe is not None:
        return [("exe", interest.exe)]
    if interest.comm is not None:
        return [("comm", interest.comm)]
    if interest.types is not None:
        return [("type", t) for t in sorted(interest.types)]
    return [("all",)]


class SubscriberIndex(Generic[S]):
    """Subscribers filed by their most selective filter, in two tiers: stream clients first,
    then internal readers (metrics, watches), whose wakeups need not delay a client. Within a
    bucket, subscription order. A subscriber sits in one bucket per event kind, so no event is
    offered twice to one subscriber."""

    def __init__(self) -> None:
        # Every subscriber per tier, for node events (no life: offered to all).
        self._all: tuple[dict[S, None], dict[S, None]] = ({}, {})
        self._buckets: tuple[dict[Key, dict[S, None]], dict[Key, dict[S, None]]] = ({}, {})
        self._tier: dict[S, int] = {}
        self._pushing: set[S] = set()  # stream clients whose push still works

    def add(self, sub: S, client: bool) -> None:
        tier = 0 if client else 1
        self._tier[sub] = tier
        self._all[tier][sub] = None
        if client:
            self._pushing.add(sub)
        buckets = self._buckets[tier]
        for key in _keys(sub.interest):
            buckets.setdefault(key, {})[sub] = None

    def remove(self, sub: S) -> None:
        tier = self._tier.pop(sub, None)
        if tier is None:
            return
        self._pushing.discard(sub)
        del self._all[tier][sub]
        buckets = self._buckets[tier]
        for key in _keys(sub.interest):
            bucket = buckets[key]
            del bucket[sub]
            if not bucket:
                del buckets[key]

    def demote(self, sub: S) -> None:
        """A stream client whose push failed: it is served from its queue from now on."""
        self._pushing.discard(sub)

    @property
    def clients(self) -> int:
        return len(self._pushing)

    def __len__(self) -> int:
        return len(self._tier)

    def __iter__(self) -> Iterator[S]:
        return iter(list(self._tier))

    def candidates(self, ev: Event) -> list[S]:
        """The subscribers that could accept `ev`, clients first; each still applies its own
        filter. A new list: an offer may close its subscriber, which edits the buckets."""
        lv = ev.life
        if lv is None:
            return [*self._all[0], *self._all[1]]
        out: list[S] = []
        for buckets in self._buckets:
            if not buckets:
                continue
            for key in (("pid", lv.pid), ("exe", lv.exe), ("comm", lv.comm), ("type", ev.type)):
                bucket = buckets.get(key)
                if bucket:
                    out.extend(bucket)
            bucket = buckets.get(("all",))
            if bucket:
                out.extend(bucket)
        return out
