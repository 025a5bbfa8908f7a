"""The journal's cursor, replay and reset rules, and slow-subscriber overflow."""

from __future__ import annotations

import asyncio

from app.core.journal import Accept, Event, Journal


def accept_all(_: Event) -> bool:
    return True


def make(size: int = 8, now: float = 1000.0) -> Journal:
    return Journal(size, clock=lambda: now)


def test_cursors_grow_by_one_from_the_run_start() -> None:
    j = make(now=1000.0)
    evs = [j.append("born") for _ in range(5)]
    assert j.first_cursor == 1_000_000_000
    assert [e.cursor for e in evs] == list(range(j.first_cursor, j.first_cursor + 5))
    assert j.last_cursor == evs[-1].cursor


def test_replay_after_a_cursor() -> None:
    j = make()
    evs = [j.append("born", fields={"n": i}) for i in range(5)]
    got = j.since(evs[1].cursor)
    assert got is not None
    assert [e.fields for e in got] == [{"n": 2}, {"n": 3}, {"n": 4}]
    assert j.since(evs[-1].cursor) == []
    assert [e.cursor for e in j.since(0) or []] == [e.cursor for e in evs]


def test_cursor_older_than_the_window_needs_reset() -> None:
    j = make(size=4)
    evs = [j.append("born") for _ in range(10)]
    assert j.since(evs[5].cursor) is not None  # oldest kept is evs[6]
    assert j.since(evs[4].cursor) is None
    assert j.reset_reason(evs[4].cursor) == "cursor_too_old"
    assert j.since(0) is None  # the run's start has left the window


def test_cursor_of_another_run_needs_reset() -> None:
    old = make(now=1000.0)
    old_cursor = [old.append("born") for _ in range(3)][-1].cursor
    new = make(now=1001.0)  # a later run: its cursors are all larger
    new.append("born")
    assert new.since(old_cursor) is None
    assert new.reset_reason(old_cursor) == "other_run"
    assert new.since(new.last_cursor + 5) is None  # from the future: also another run


async def test_subscribe_with_resume_has_no_hole() -> None:
    j = make(size=100)
    evs = [j.append("born", fields={"n": i}) for i in range(3)]
    sub = j.subscribe(accept_all, 10, after=evs[0].cursor)
    j.append("died", fields={"n": 3})
    got = await sub.next_batch() + await sub.next_batch()
    assert [e.fields for e in got] == [{"n": 1}, {"n": 2}, {"n": 3}]


async def test_subscribe_with_stale_cursor_gets_reset_first() -> None:
    j = make(size=2)
    first = j.append("born").cursor
    for _ in range(5):
        j.append("born")
    sub = j.subscribe(accept_all, 10, after=first)
    j.append("died")
    got = await sub.next_batch()
    assert [e.type for e in got] == ["reset"]
    assert got[0].fields == {"reason": "cursor_too_old"}
    assert [e.type for e in await sub.next_batch()] == ["died"]


async def test_slow_subscriber_catches_up_from_the_window_without_loss() -> None:
    j = make(size=1000)
    slow = j.subscribe(accept_all, maxsize=4)
    fast = j.subscribe(accept_all, maxsize=1000)
    for i in range(50):
        j.append("born", fields={"n": i})
    assert slow.overflowed and slow.overflows == 1
    assert j.overflows == 1
    got = await slow.next_batch()
    lagging, *rest = got  # told first, with the cursor it resumes after: nothing yet
    assert lagging.type == "lagging" and lagging.cursor == j.first_cursor - 1
    assert [e.fields["n"] for e in rest if e.fields] == list(range(50))
    assert len(await fast.next_batch()) == 50  # the other subscriber never noticed


async def test_overflow_past_the_window_gives_gap_and_reset() -> None:
    j = make(size=8)
    slow = j.subscribe(accept_all, maxsize=4)
    for _ in range(20):
        j.append("born")
    got = await slow.next_batch()
    assert [e.type for e in got] == ["lagging", "gap", "reset"]
    assert got[1].fields is not None and got[1].fields["reason"] == "subscriber_overflow"
    j.append("died")
    assert [e.type for e in await slow.next_batch()] == ["died"]  # live again after reset


async def test_append_never_waits_for_a_reader() -> None:
    j = make(size=10_000)
    stuck = j.subscribe(accept_all, maxsize=1)  # nobody ever reads it

    async def producer() -> int:
        for _ in range(5000):
            j.append("born")
        return j.last_cursor

    # Synchronous appends: they finish without the reader running at all.
    last = await asyncio.wait_for(producer(), timeout=5)
    assert last == j.first_cursor + 4999
    assert stuck.overflowed
    stuck.close()
    assert j.subscribers == 0


async def test_filtered_subscriber_only_sees_matches() -> None:
    j = make(size=100)
    sub = j.subscribe(lambda e: e.type == "died", maxsize=10)
    j.append("born")
    j.append("died")
    j.append("exec")
    assert [e.type for e in await sub.next_batch()] == ["died"]


async def test_push_while_idle_queue_behind_a_busy_reader_and_keep_order() -> None:
    j = make(size=100)
    pushed: list[int] = []
    room = [True]  # the client's socket has room

    def push(ev: Event) -> bool:
        if room[0]:
            pushed.append(ev.cursor)
        return room[0]

    sub = j.subscribe(accept_all, maxsize=10, push=push)
    a = j.append("born").cursor
    assert pushed == [a] and sub.delivered == a and not sub.queue
    room[0] = False  # the socket is full: the next event queues
    b = j.append("born").cursor
    room[0] = True
    c = j.append("born").cursor  # room again, but b waits: c must not overtake it
    assert pushed == [a] and [e.cursor for e in sub.queue] == [b, c]
    batch = sub.take()  # the reader holds b and c and is sending them
    assert [e.cursor for e in batch] == [b, c] and sub.busy
    d = j.append("born").cursor  # meanwhile: queued behind them, not pushed
    assert pushed == [a] and [e.cursor for e in await sub.next_batch()] == [d]
    assert sub.take() == [] and not sub.busy  # the reader is idle again
    e = j.append("born").cursor
    assert pushed == [a, e] and sub.delivered == e


async def test_a_declined_push_past_the_queue_still_catches_up_without_loss() -> None:
    j = make(size=1000)
    sub = j.subscribe(accept_all, maxsize=4, push=lambda ev: False)
    cursors = [j.append("born").cursor for _ in range(20)]
    assert sub.overflowed
    lagging, *rest = await sub.next_batch()
    assert lagging.type == "lagging" and [e.cursor for e in rest] == cursors


async def test_a_failing_push_falls_back_to_the_queue_and_loses_nothing() -> None:
    j = make(size=100)

    def broken(ev: Event) -> bool:
        raise TypeError("cannot encode")

    sub = j.subscribe(accept_all, maxsize=10, push=broken)
    other = j.subscribe(accept_all, maxsize=10)
    assert j.pushers == 1
    a = j.append("born").cursor  # the error stays here, not in the caller (a kernel reader)
    b = j.append("born").cursor
    assert sub.push is None and j.pushers == 0
    assert [e.cursor for e in await sub.next_batch()] == [a, b]
    assert [e.cursor for e in await other.next_batch()] == [a, b]
    assert [e.cursor for e in j.since(0) or []] == [a, b]
    sub.close()
    assert j.pushers == 0 and j.subscribers == 1


async def test_stream_clients_are_offered_an_event_before_internal_readers() -> None:
    j = make(size=100)
    order: list[str] = []

    def offered(name: str) -> Accept:
        def accept(ev: Event) -> bool:
            order.append(name)
            return True

        return accept

    j.subscribe(offered("internal"), 10)
    j.subscribe(offered("client"), 10, push=lambda ev: True)
    j.subscribe(offered("internal"), 10)
    j.append("died")
    assert order == ["client", "internal", "internal"]
