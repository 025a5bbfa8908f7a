"""Interrupt moderation of a kernel socket (app/sources/pacing.py), on a real loop and a real
datagram socket: at rest every datagram is read at once; after a storm's wakeup (many
datagrams, or wakeups close together) the socket fills for `hold` and is then read in one
batch; when the storm ends reads are immediate again; stopping leaves nothing scheduled."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from app.sources.pacing import Pacer

HOLD = 0.02
REST = HOLD * 4  # spacing that is not a storm (more than `soon`, 2 holds)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


class Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.wakeups: list[tuple[float, int]] = []
        self.pacer = Pacer(sock.fileno(), self.on_readable, at_least=4, hold=HOLD, soon=2 * HOLD)

    def on_readable(self) -> None:
        n = 0
        while True:
            try:
                self.sock.recv(64)
            except BlockingIOError:
                break
            n += 1
        self.wakeups.append((asyncio.get_running_loop().time(), n))
        self.pacer.read(n)

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
    assert len(r.wakeups) <= 40 * (HOLD / 8) / HOLD + 4  # about one per hold, not 40
    assert r.pacer.holds >= 3
    r.pacer.stop()


async def test_stop_during_a_hold_leaves_nothing_scheduled(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    r = Reader(rx)
    r.pacer.start()
    for _ in range(5):
        tx.send(b"x")
    await asyncio.sleep(0.003)
    assert r.pacer.polling
    r.pacer.stop()
    r.pacer.stop()  # twice is fine
    tx.send(b"late")
    await asyncio.sleep(HOLD * 2)
    assert r.counts == [5] and r.pacer.holds == 0


async def test_a_read_stopped_by_its_budget_is_followed_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    got: list[tuple[float, int]] = []

    def on_readable() -> None:  # reads at most 4 per call, as a budget
        n = 0
        while n < 4:
            try:
                rx.recv(64)
            except BlockingIOError:
                break
            n += 1
        got.append((asyncio.get_running_loop().time(), n))
        pacer.read(n, more=n == 4)

    pacer = Pacer(rx.fileno(), on_readable, at_least=4, hold=HOLD, soon=2 * HOLD)
    pacer.start()
    for _ in range(10):
        tx.send(b"x")
    await asyncio.sleep(0.005)
    assert [n for _, n in got] == [4, 4, 2]  # no hold between: far less than HOLD
    assert got[-1][0] - got[0][0] < HOLD / 2
    await asyncio.sleep(HOLD * 1.5)
    assert [n for _, n in got] == [4, 4, 2, 0] and not pacer.polling
    pacer.stop()


async def test_a_process_started_and_ended_at_rest_is_read_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The production settings (the connector's 8 in 2 ms): FORK, EXEC and EXIT 0.5 ms
    apart are each read as they come; a storm is a count, not two wakeups close together."""
    from app.sources.pacing import HOLD as HOLD_REAL

    rx, tx = pair
    got: list[tuple[float, int]] = []
    sent: list[float] = []

    def on_readable() -> None:
        n = 0
        while True:
            try:
                rx.recv(64)
            except BlockingIOError:
                break
            n += 1
        got.append((asyncio.get_running_loop().time(), n))
        pacer.read(n)

    pacer = Pacer(rx.fileno(), on_readable, at_least=8)
    pacer.start()
    for _ in range(3):
        tx.send(b"x")
        sent.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.0005)
    await asyncio.sleep(0.01)
    assert sum(n for _, n in got) == 3 and not pacer.polling and pacer.holds == 0
    # Each read well before a hold would have ended (the loop's own delay aside).
    assert all(t - s < HOLD_REAL / 2 for (t, _), s in zip(got, sent, strict=False))
    pacer.stop()


async def test_no_hold_never_paces(pair: tuple[socket.socket, socket.socket]) -> None:
    """A receive buffer too small for a storm's hold (hold_for: 0): read at every wakeup."""
    from app.sources.pacing import MIN_RCVBUF, hold_for

    assert hold_for(MIN_RCVBUF - 1) == 0 and hold_for(MIN_RCVBUF) > 0
    rx, tx = pair
    r = Reader(rx)
    r.pacer = Pacer(rx.fileno(), r.on_readable, at_least=4, hold=0)
    r.pacer.start()
    for _ in range(10):
        tx.send(b"x")
    await asyncio.sleep(0.003)
    assert r.counts == [10] and not r.pacer.polling
    r.pacer.stop()
