"""Interrupt moderation of a kernel socket (app/sources/pacing.py), on a real loop and a real
datagram socket: at rest every datagram is read at once; after a storm's wakeup (many
datagrams, or wakeups close together) the socket fills for `hold` and is then read in one
batch; when the storm ends reads are immediate again; stopping leaves nothing scheduled."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from app.sources import pacing
from app.sources.pacing import Pacer

HOLD = 0.05  # long against the loop's own delays on a loaded box
REST = HOLD * 4  # spacing that is not a storm (more than `soon`, 2 holds)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


class Reader:
    """Reads what is queued, at most `budget` per wakeup; the test's pacing unless given."""

    def __init__(self, sock: socket.socket, budget: int = 1 << 30, **pacing: Any) -> None:
        self.sock = sock
        self.budget = budget
        self.wakeups: list[tuple[float, int]] = []
        pacing = {"at_least": 4, "hold": HOLD, "soon": 2 * HOLD} | pacing
        self.pacer = Pacer(sock.fileno(), self.on_readable, **pacing)

    def on_readable(self) -> None:
        n = 0
        while n < self.budget:
            try:
                self.sock.recv(64)
            except BlockingIOError:
                break
            n += 1
        self.wakeups.append((asyncio.get_running_loop().time(), n))
        self.pacer.read(n, more=n == self.budget)

    async def storm(self, tx: socket.socket, n: int) -> None:
        """Start watching, and send `n` at once: a storm's wakeup, polling from then on."""
        self.pacer.start()
        for _ in range(n):
            tx.send(b"x")
        await asyncio.sleep(0.003)
        assert self.pacer.polling

    @property
    def counts(self) -> list[int]:
        """Datagrams per wakeup that read any (a hold's end may find nothing queued)."""
        return [n for _, n in self.wakeups if n]


async def test_at_rest_each_datagram_is_read_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    r = Reader(rx)
    r.pacer.start()
    for _ in range(3):
        t = asyncio.get_running_loop().time()
        tx.send(b"x")
        await asyncio.sleep(0.003)
        assert r.wakeups[-1][0] - t < HOLD / 2  # read at once, not held
        await asyncio.sleep(REST)
    assert r.counts == [1, 1, 1]
    assert r.pacer.holds == 0 and not r.pacer.polling
    r.pacer.stop()


async def test_after_a_storm_the_socket_fills_for_hold_then_is_read_in_one_batch(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    r = Reader(rx)
    r.pacer.start()
    for _ in range(10):
        tx.send(b"x")
    await asyncio.sleep(0.003)
    assert r.counts == [10] and r.pacer.polling
    t0 = r.wakeups[0][0]
    for _ in range(3):  # arrive during the hold: not read yet
        tx.send(b"y")
        await asyncio.sleep(0.002)
    assert r.counts == [10]
    await asyncio.sleep(HOLD * 1.5)
    assert r.counts == [10, 3]  # one batch, once the hold is over
    assert r.wakeups[1][0] - t0 >= HOLD * 0.9
    # That poll found some: the next comes after another hold, finds nothing, and the storm
    # is over.
    await asyncio.sleep(HOLD * 1.5)
    assert not r.pacer.polling and r.pacer.holds == 2
    t = asyncio.get_running_loop().time()
    tx.send(b"z")
    await asyncio.sleep(0.003)
    assert r.counts == [10, 3, 1] and r.wakeups[-1][0] - t < HOLD / 2
    r.pacer.stop()


async def test_reads_by_another_path_between_polls_keep_the_storm_on(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The connector's socket is also read for audit's reader between its own polls: a poll
    that then finds it empty does not end the storm (each datagram would wake the loop
    again); a poll with nothing read since the last one does."""
    rx, tx = pair
    r = Reader(rx)
    await r.storm(tx, 10)
    for _ in range(3):  # read by the other path during the hold
        tx.send(b"y")
        await asyncio.sleep(0.002)
        r.on_readable()
    await asyncio.sleep(HOLD * 1.5)  # the poll finds nothing, but 3 were read meanwhile
    assert r.pacer.polling and r.pacer.holds == 1
    await asyncio.sleep(HOLD * 1.5)  # nothing read since: the storm is over
    assert not r.pacer.polling and r.pacer.holds == 2
    r.pacer.stop()


async def test_a_steady_trickle_is_batched_too(pair: tuple[socket.socket, socket.socket]) -> None:
    """Fewer than `at_least` per wakeup, but wakeups close together: the rate makes it a
    storm, so a source wakes about once per hold however the datagrams are spread."""
    rx, tx = pair
    r = Reader(rx)
    r.pacer.start()
    for _ in range(40):
        tx.send(b"t")
        await asyncio.sleep(HOLD / 8)
    await asyncio.sleep(HOLD * 2)
    assert sum(r.counts) == 40
    # The first `at_least` at once, then one read per hold: about 10 reads, not 40.
    assert len(r.counts) <= 12
    assert r.pacer.holds >= 3
    r.pacer.stop()


async def test_stop_during_a_hold_leaves_nothing_scheduled(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    r = Reader(rx)
    await r.storm(tx, 5)
    r.pacer.stop()
    r.pacer.stop()  # twice is fine
    tx.send(b"late")
    await asyncio.sleep(HOLD * 2)
    assert r.counts == [5] and r.pacer.holds == 0


async def test_a_read_stopped_by_its_budget_is_followed_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    r = Reader(rx, budget=4)
    r.pacer.start()
    for _ in range(10):
        tx.send(b"x")
    await asyncio.sleep(0.005)
    assert [n for _, n in r.wakeups] == [4, 4, 2]  # no hold between: far less than HOLD
    assert r.wakeups[-1][0] - r.wakeups[0][0] < HOLD / 2
    await asyncio.sleep(HOLD * 1.5)
    assert [n for _, n in r.wakeups] == [4, 4, 2, 0] and not r.pacer.polling
    r.pacer.stop()


async def test_a_process_started_and_ended_at_rest_is_read_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The production settings (the connector's 8 in 2 ms): FORK, EXEC and EXIT 0.5 ms
    apart are each read as they come; a storm is a count, not two wakeups close together."""
    rx, tx = pair
    r = Reader(rx, at_least=8, hold=pacing.HOLD, soon=pacing.SOON)
    r.pacer.start()
    for _ in range(3):
        tx.send(b"x")
        await asyncio.sleep(0.0005)
    await asyncio.sleep(0.01)
    # No poll ever: every read was the socket's own wakeup, none waited for a hold (under
    # the old rule the second wakeup, 0.5 ms after the first, started polling).
    assert sum(r.counts) == 3 and not r.pacer.polling and r.pacer.holds == 0
    r.pacer.stop()


async def test_no_hold_never_paces(pair: tuple[socket.socket, socket.socket]) -> None:
    """A receive buffer too small for a storm's hold (hold_for: 0): read at every wakeup."""
    assert pacing.hold_for(pacing.MIN_RCVBUF - 1) == 0 and pacing.hold_for(pacing.MIN_RCVBUF) > 0
    rx, tx = pair
    r = Reader(rx, hold=0)
    r.pacer.start()
    for _ in range(10):
        tx.send(b"x")
    await asyncio.sleep(0.003)
    assert r.counts == [10] and not r.pacer.polling
    r.pacer.stop()


async def test_drain_goes_on_past_an_overrun_and_a_failed_item_and_stops_at_a_read_error() -> None:
    """The sources' one reading loop: batches until the socket is empty, ENOBUFS reported and
    read past, an item whose handling raises counted and reported while the rest of its batch
    is delivered, and a failed read ends the watch and says its errno."""
    import errno

    from app.netlink.batch import BUDGET, DRAINED

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        pacer = Pacer(a.fileno(), lambda: None, hold=0)
        pacer.start()
        batches = [([1, 2], 2, errno.ENOBUFS), ([3, 4, 5], 3, DRAINED)]
        got, overruns, failures = [], [], []

        def deliver(x: int) -> None:
            if x == 2:
                raise RuntimeError("a bug")
            got.append(x)

        def read(k: int) -> tuple[list[int], int, int]:
            return batches.pop(0)

        def drain() -> tuple[int, int]:
            return pacer.drain(read, 100, deliver, lambda: overruns.append(1),
                               lambda: failures.append(1))  # fmt: skip

        assert drain() == (5, DRAINED)
        assert got == [1, 3, 4, 5] and overruns == [1] and failures == [1]
        assert pacer.delivery_errors == 1
        batches[:] = [([6], 1, BUDGET), ([7], 1, errno.EBADF)]
        assert drain() == (2, errno.EBADF) and got[-2:] == [6, 7]
        pacer.stop()  # already stopped by the failed read: twice is fine
    finally:
        a.close()
        b.close()
