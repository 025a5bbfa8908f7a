"""Interrupt moderation for a kernel socket: under a storm, read it every `hold` seconds
rather than at every datagram; at rest, at once.

A reader woken per datagram or two pays the loop's wakeup (epoll, the callback, its set-up)
for each, and preempts the workload each time (the loop runs at nice -4). After a storm's
wakeup, the socket is left unwatched for `hold` (3 ms): the kernel queues what comes
meanwhile (a fork storm's 3 ms is ~150 audit datagrams, against a backlog of 8,192 and a
receive buffer of 32 MB) and the next read takes it in one batch. Until a read finds the
socket empty, the socket is polled every `hold` by a timer rather than watched: no epoll
change per batch. A storm is `at_least` datagrams read within SOON (2 ms), in one wakeup or
several: a quiet node never reads that many so fast (a process started and ended at once is
3 connector datagrams, 13 audit ones), so its deaths are read as soon as they come; under a
storm, at most `hold` later, and a source reads about once per `hold`. A read that stops at
its budget is followed by the next at once. `hold` 0 never paces (a receive buffer too small
to hold a storm's 3 ms).
docs/performance.md (round 5) has what it saves.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Callable
from typing import TypeVar

from app.netlink.batch import BUDGET, DRAINED

log = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds a busy socket is left to fill before the next read. Measured (/tmp probes of
# bench.storm's daemon, docs/performance.md round 5), CPU per fork+exec / fork+exit life:
# 1 ms 174 / 72 us, 2 ms 151 / 66, 3 ms 136 / 65, 4 ms 127 / 83 (audit's read budget hit
# at every poll before `more`).
HOLD = 0.003
SOON = 0.002  # the window in which `at_least` datagrams make a storm
AT_LEAST = 16  # datagrams within SOON that mean a storm (a death at rest is 1 to 4)
# A receive buffer smaller than this is not left unwatched: 3 ms of a storm's connector
# datagrams (~770 B each in the buffer's accounting) would not fit in 64 KiB.
MIN_RCVBUF = 1 << 20


def hold_for(rcvbuf: int) -> float:
    """The hold a socket with this receive buffer (bytes, as the kernel reports it) gets."""
    return HOLD if rcvbuf >= MIN_RCVBUF else 0.0


def pacer_counters(pacer: Pacer | None) -> dict[str, int]:
    """A source's counters of its pacer (0 before it starts)."""
    return {"holds": pacer.holds if pacer else 0,
            "delivery_errors": pacer.delivery_errors if pacer else 0}  # fmt: skip


class Pacer:
    """Watches a socket (epoll) at rest; polls it every `hold` (a timer, no epoll) from a
    storm's wakeup until a poll finds the socket empty. The owner reads in `on_readable`,
    with `drain` (which says how the read went), or itself and then calls `read(n)` with how
    many datagrams it read, on every path that read."""

    def __init__(
        self,
        fd: int,
        on_readable: Callable[[], None],
        at_least: int = AT_LEAST,
        hold: float = HOLD,
        soon: float = SOON,
    ) -> None:
        self.fd = fd
        self.on_readable = on_readable
        self.at_least = at_least
        self.hold = hold
        self.soon = soon
        self.holds = 0  # polls: reads at the end of a hold rather than at a wakeup
        self.delivery_errors = 0  # datagrams whose handling raised (drain)
        self._window = float("-inf")  # loop time the current SOON window started
        self._seen = 0  # datagrams read in it
        self._between = 0  # datagrams read by other paths while a poll was pending
        self._timer: asyncio.TimerHandle | None = None
        self._polling = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def polling(self) -> bool:
        """In a storm: the socket is read by a timer every `hold`, not watched."""
        return self._polling

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._polling = False
        self._between = 0
        self._loop.add_reader(self.fd, self.on_readable)

    def read(self, n: int, more: bool = False) -> None:
        """After a read of `n` datagrams: go on polling, start, or go back to watching.
        `more`: the read stopped at its budget with datagrams left; they are read after
        the loop's other ready callbacks, not a hold later."""
        loop = self._loop
        if loop is None:
            return
        if self._timer is not None:
            # Read between two polls (the proc connector's socket, read for audit's reader
            # before each of its reads): the storm goes on even if the next poll finds the
            # socket empty, so that poll does not go back to watching it.
            self._between += n
            return
        if self._polling:
            n, self._between = n + self._between, 0
            if more:
                self._timer = loop.call_later(0, self._poll)
            elif n:  # still coming: the next poll
                self._timer = loop.call_later(self.hold, self._poll)
            else:  # the storm is over: back to reading at once
                self._polling = False
                loop.add_reader(self.fd, self.on_readable)
            return
        if n == 0 or self.hold <= 0:
            return
        now = loop.time()
        if now - self._window >= self.soon:
            self._window, self._seen = now, 0
        self._seen += n
        if self._seen >= self.at_least:
            self._seen = 0
            loop.remove_reader(self.fd)
            self._polling = True
            self._timer = loop.call_later(0 if more else self.hold, self._poll)

    def drain(
        self,
        read: Callable[[int], tuple[list[T], int, int]],
        budget: int,
        deliver: Callable[[T], None],
        overrun: Callable[[], None],
        failed: Callable[[], None],
    ) -> tuple[int, int]:
        """One wakeup's reading, the same for every source: batches from `read` (a
        BatchReader's) until the socket is empty or `budget` datagrams were read, each item
        handed to `deliver`; `overrun` at ENOBUFS (the kernel dropped some: reading goes
        on). An item whose handling raises (a bug downstream) is logged and counted, and
        `failed` reports the loss; the rest of the batch still goes on. Returns (datagrams
        read, DRAINED / BUDGET / the errno of a failed read, after which the socket is no
        longer watched)."""
        n, status = 0, BUDGET
        while n < budget:
            items, got, status = read(budget - n)
            n += got
            for item in items:
                try:
                    deliver(item)
                except Exception:
                    self.delivery_errors += 1
                    k = self.delivery_errors
                    if k & (k - 1) == 0:  # the 1st, 2nd, 4th...: a loop of them cannot flood
                        log.exception("a datagram of fd %d could not be handled (%d so far)",
                                      self.fd, k)  # fmt: skip
                    failed()
            if status == DRAINED:
                break
            if status == errno.ENOBUFS:
                overrun()
                status = BUDGET
            elif status != BUDGET:
                self.stop()
                return n, status
        self.read(n, more=status == BUDGET and n >= budget)
        return n, status

    def _poll(self) -> None:
        self._timer = None
        self.holds += 1
        try:
            self.on_readable()
        finally:
            if self._loop is not None and self._polling and self._timer is None:
                # The read did not say how it went (it raised): keep polling, never stall.
                self._timer = self._loop.call_later(self.hold, self._poll)

    def stop(self) -> None:
        """Stop watching the socket (stop, or a failed read); safe to call twice."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._loop is not None and not self._loop.is_closed() and not self._polling:
            with contextlib.suppress(ValueError, OSError):  # the socket is already closed
                self._loop.remove_reader(self.fd)
        self._polling = False
        self._loop = None
