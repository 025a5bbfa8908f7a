"""WebSocket keepalive that blames the client only for the client's silence, never for the
daemon's own lateness.

aiohttp's `heartbeat=` closes a connection (1006, nothing sent, nothing logged) when a pong is
not *processed* within heartbeat/2: under load the event loop is late, not the client, and
1,000 healthy clients were dropped at once (shared/design.md fact 13). Here a ping goes out
every `interval` seconds and a client counts as dead only after `misses` intervals with no
frame at all from it (pong, ping, data), not counting the time the loop itself was late to
wake this check. A client whose socket does not drain (it does not read what it is sent)
cannot answer pings sent behind that data: it is left to the slow-client rule (stream.py),
unless it has been silent for twice that rule's own limit and more.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

PING = b"\x89\x00"  # FIN, opcode 9 (ping), unmasked, empty payload (RFC 6455 5.5.2)


@dataclass
class Liveness:
    """When a client last sent anything, and how much of the time since was the daemon's
    own lateness. Times are the caller's (loop.time()): injected, so tests need no sleep."""

    interval: float
    last_seen: float
    misses: int = 3
    excused: float = 0.0  # loop lateness since last_seen: not the client's silence

    def seen(self, now: float) -> None:
        self.last_seen = now
        self.excused = 0.0

    def late(self, lag: float) -> None:
        """The check woke `lag` s after it was due: the loop was busy, the client may have
        answered in that time without our reading it yet."""
        if lag > 0:
            self.excused += lag

    def silent_for(self, now: float) -> float:
        return now - self.last_seen - self.excused

    def dead(self, now: float, writes_stalled: bool, stall_limit: float) -> bool:
        silent = self.silent_for(now)
        if writes_stalled:  # our pings wait behind unread data: the slow-client rule's case
            return silent > 2 * stall_limit + self.interval * self.misses
        return silent > self.interval * self.misses


async def keepalive(
    transport: asyncio.Transport, live: Liveness, stall_limit: float, phase: float
) -> str | None:
    """Ping every interval, the first after `phase` s, until the client is found dead;
    returns why (the close reason), or None when the connection is gone anyway. Cancelled by
    the stream handler when the stream ends for another reason.

    A random phase per client: clients that connected together (1,000 at a daemon's restart)
    would otherwise be pinged together, and their 1,000 pongs woken together, every interval:
    that burst raised death latency p99 from ~4 to 20-40 ms (bench/fanout.py)."""
    loop = asyncio.get_running_loop()
    wait = phase
    while True:
        due = loop.time() + wait
        await asyncio.sleep(wait)
        wait = live.interval
        now = loop.time()
        live.late(now - due)
        if transport.is_closing():
            return None
        stalled = transport.get_write_buffer_size() > 0
        if live.dead(now, stalled, stall_limit):
            return f"no frame from the client for {live.silent_for(now):.0f} s (heartbeat)"
        transport.write(PING)
