"""Interrupt moderation for a kernel socket: under a storm, read it every `hold` seconds
rather than at every datagram; at rest, at once.

A reader woken per datagram or two pays the loop's wakeup (epoll, the callback, its set-up)
for each, and preempts the workload each time (the loop runs at nice -4). After a wakeup
that read at least `at_least` datagrams, which a quiet node never does, the socket is left
unwatched for `hold` (1 ms): the kernel queues what comes meanwhile (a fork storm's 1 ms is
~60 audit datagrams, against a backlog of 8,192 and a receive buffer of megabytes) and the
next wakeup reads it in one batch. A death on a quiet node is read as soon as it comes; under
a storm, at most `hold` later. docs/performance.md (round 5) has what it saves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

HOLD = 0.001  # seconds a busy socket is left to fill before the next read
AT_LEAST = 16  # datagrams in one wakeup that mean a storm (a death at rest is 1 to 4)


class Pacer:
    def __init__(
        self,
        fd: int,
        on_readable: Callable[[], None],
        at_least: int = AT_LEAST,
        hold: float = HOLD,
    ) -> None:
        self.fd = fd
        self.on_readable = on_readable
        self.at_least = at_least
        self.hold = hold
        self.holds = 0  # how many times the socket was left to fill
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self.on_readable)

    def read(self, n: int) -> None:
        """After a wakeup that read `n` datagrams: hold the socket if that was a storm's."""
        if n < self.at_least or self._loop is None or self._timer is not None:
            return
        self._loop.remove_reader(self.fd)
        self._timer = self._loop.call_later(self.hold, self._resume)
        self.holds += 1

    def _resume(self) -> None:
        self._timer = None
        if self._loop is None:
            return
        self._loop.add_reader(self.fd, self.on_readable)
        self.on_readable()  # what queued meanwhile, now, not after another loop turn

    def stop(self) -> None:
        """Stop watching the socket (stop, or a failed read); safe to call twice."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(ValueError, OSError):  # the socket is already closed
                self._loop.remove_reader(self.fd)
        self._loop = None
