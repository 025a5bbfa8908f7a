"""Interrupt moderation of a kernel socket (app/sources/pacing.py), on a real loop and a real
datagram socket: at rest every datagram is read at once; after a storm's wakeup the socket
fills for `hold` and is then read in one batch; stopping leaves nothing scheduled."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from app.sources.pacing import Pacer

HOLD = 0.05


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
        self.pacer = Pacer(sock.fileno(), self.on_readable, at_least=4, hold=HOLD)

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


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.005)


async def test_at_rest_each_datagram_is_read_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    r = Reader(rx)
    r.pacer.start()
    for _ in range(3):
        tx.send(b"x")
        await settle()
    assert [n for _, n in r.wakeups] == [1, 1, 1]
    assert r.pacer.holds == 0
    r.pacer.stop()


async def test_after_a_storm_the_socket_fills_for_hold_then_is_read_in_one_batch(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    r = Reader(rx)
    r.pacer.start()
    for _ in range(10):
        tx.send(b"x")
    await settle()
    assert [n for _, n in r.wakeups] == [10]
    t0 = r.wakeups[0][0]
    for _ in range(3):  # arrive during the hold: not read yet
        tx.send(b"y")
        await asyncio.sleep(0.005)
    assert len(r.wakeups) == 1
    await asyncio.sleep(HOLD * 2)
    assert [n for _, n in r.wakeups] == [10, 3]
    assert r.wakeups[1][0] - t0 >= HOLD * 0.9
    assert r.pacer.holds == 1  # 3 is a quiet wakeup: watched at once again
    tx.send(b"z")
    await settle()
    assert [n for _, n in r.wakeups] == [10, 3, 1]
    r.pacer.stop()


async def test_stop_during_a_hold_leaves_nothing_scheduled(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    r = Reader(rx)
    r.pacer.start()
    for _ in range(5):
        tx.send(b"x")
    await settle()
    assert r.pacer.holds == 1
    r.pacer.stop()
    r.pacer.stop()  # twice is fine
    tx.send(b"late")
    await asyncio.sleep(HOLD * 2)
    assert [n for _, n in r.wakeups] == [5]
