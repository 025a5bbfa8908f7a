"""The subscriber index delivers exactly what offering every event to every filter did."""

from __future__ import annotations

import random

from app.core.fanout import Accept, Interest
from app.core.journal import Event, Journal, Subscriber
from app.core.life import LifeView

TYPES = ("born", "exec", "died", "gap", "resync", "source")
COMMS = ("sleep", "bash", "ntpd", None)
EXES = ("/usr/bin/sleep", "/bin/bash", None)


def view(rng: random.Random) -> LifeView:
    return LifeView(
        pid=rng.randint(1, 12), start_ticks=rng.randint(100, 104), start_slack=rng.choice((0, 1)),
        ppid=1, parent_ticks=None, comm=rng.choice(COMMS), exe=rng.choice(EXES), argv=(),
        uid=0, born_at=None, died_at=None, exit=None, cause=None, sources=1, pidfd_ino=None,
        canary=rng.random() < 0.2,
    )  # fmt: skip


def interest(rng: random.Random) -> Interest:
    pick = rng.random
    pid = rng.randint(1, 12) if pick() < 0.4 else None
    return Interest(
        types=frozenset(rng.sample(TYPES, rng.randint(1, 3))) if pick() < 0.6 else None,
        pid=pid,
        ticks=rng.randint(100, 104) if pid is not None and pick() < 0.5 else None,
        comm=rng.choice(COMMS) if pick() < 0.3 else None,
        exe=rng.choice(EXES) if pick() < 0.3 else None,
        canary=rng.choice((True, False)) if pick() < 0.15 else None,
    )


def linear(i: Interest) -> Accept:
    """The filter as stream.make_filter wrote it before the index (commit be51931)."""
    types = i.types

    def accept(ev: Event) -> bool:
        if types is not None and ev.type not in types:
            return False
        lv = ev.life
        if lv is None:
            return True
        return (
            (i.pid is None or lv.pid == i.pid)
            and (i.ticks is None or abs(lv.start_ticks - i.ticks) <= max(lv.start_slack, 0))
            and (i.comm is None or lv.comm == i.comm)
            and (i.exe is None or lv.exe == i.exe)
            and (i.canary is None or lv.canary == i.canary)
        )

    return accept


def test_index_delivers_what_every_filter_on_every_event_delivered() -> None:
    rng = random.Random(9)
    for _ in range(20):
        j = Journal(100_000, clock=lambda: 1000.0)
        wants = [interest(rng) for _ in range(300)]
        pushed: dict[int, list[int]] = {n: [] for n in range(len(wants))}
        subs: list[Subscriber] = []
        for n, w in enumerate(wants):

            def push(ev: Event, out: list[int] = pushed[n]) -> bool:
                if rng.random() < 0.02:
                    return False  # declined (a full socket): this and later events queue
                out.append(ev.cursor)
                return True

            subs.append(j.subscribe(w, 100_000, push=push if n % 3 else None))
        opaque = j.subscribe(lambda e: e.type == "died", 100_000)  # an internal reader
        events = []
        for _ in range(400):
            kind = rng.choice(TYPES)
            life = view(rng) if kind in ("born", "exec", "died") or rng.random() < 0.2 else None
            events.append(j.append(kind, life))
        for n, (w, sub) in enumerate(zip(wants, subs, strict=True)):
            want = [e.cursor for e in events if linear(w)(e)]
            # Pushed while it could be, then queued: in order, each once, nothing else.
            got = [*pushed[n], *(e.cursor for e in sub.take())]
            assert got == want, (n, w)
        assert [e.cursor for e in opaque.take()] == [e.cursor for e in events if e.type == "died"]


def test_a_push_never_overtakes_a_queued_event() -> None:
    j = Journal(1000, clock=lambda: 1000.0)
    sent: list[int] = []
    ok = [False]

    def push(ev: Event) -> bool:
        if ok[0]:
            sent.append(ev.cursor)
        return ok[0]

    sub = j.subscribe(Interest(pid=5), 100, push=push)
    life = view(random.Random(1))._replace(pid=5)
    first = j.append("died", life).cursor  # declined: queued
    ok[0] = True
    second = j.append("died", life).cursor  # the queue is not empty: queued behind it
    assert sent == [] and [e.cursor for e in sub.take()] == [first, second]


def test_subscribers_leave_the_index() -> None:
    j = Journal(100, clock=lambda: 1000.0)
    subs = [j.subscribe(Interest(pid=p, types=frozenset({"died"})), 10, push=lambda e: True)
            for p in range(1, 50)]  # fmt: skip
    subs.append(j.subscribe(Interest(types=frozenset({"died", "born"})), 10))
    assert j.subscribers == 50 and j.pushers == 49
    for sub in subs:
        sub.close()
    assert j.subscribers == 0 and j.pushers == 0
    assert j._subs.candidates(j.append("died", view(random.Random(2)))) == []
