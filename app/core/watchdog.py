"""The systemd watchdog fed by the sources' health, not by the event loop being alive.

Every check (half of $WATCHDOG_USEC) looks at each running kernel reader: a reader that had
datagrams waiting in its socket and read none since the previous check is stalled (wedged,
or starved by the rest of the loop). `WATCHDOG=1` is sent only when no reader is stalled and
the canary passes for every source it checks; otherwise the pings stop and systemd restarts
the daemon after WatchdogSec. A source that failed to start (a missing capability) does not
stop them: a restart would not give it one. Each check also sends a `STATUS=` line when the
sources' states changed (docs/operations.md, "systemd").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.core.sdnotify import Notifier
from app.sources.base import FAILED, OK, STOPPED

if TYPE_CHECKING:
    from app.core.service import Service

log = logging.getLogger(__name__)

STATUS_ONLY_INTERVAL = 5.0  # seconds between STATUS= updates when no watchdog is asked for


@dataclass(frozen=True, slots=True)
class Verdict:
    healthy: bool
    status: str  # one line for systemctl status
    why: str  # what stops the pings, empty when healthy


class Watchdog:
    def __init__(self, service: Service, notifier: Notifier) -> None:
        self.service = service
        self.notifier = notifier
        self.interval = notifier.watchdog_interval or STATUS_ONLY_INTERVAL
        self._read: dict[str, int] = {}  # datagrams read by each reader at the last check
        self._task: asyncio.Task[None] | None = None
        self._last_status = ""
        self._last_why = ""
        self.pings = 0

    def check(self) -> Verdict:
        """Judge the readers since the previous check (call it once per interval)."""
        parts: list[str] = []
        stalled: list[str] = []
        for source in self.service.sources:
            h = self.service.source_health(source)
            parts.append(f"{source.name} {h.state}")
            read = h.counters.get("datagrams")
            if h.state in (FAILED, STOPPED) or read is None:
                continue
            before = self._read.get(source.name)
            self._read[source.name] = read
            waiting = h.counters.get("socket_queue_bytes", 0)
            if before is not None and read == before and waiting:
                stalled.append(f"{source.name} reader stalled ({waiting} bytes waiting, none read)")
        canary = self.service.canary
        missed = []
        if canary is not None:
            missed = [f"{n} missed the canary" for n, v in canary.stats.verdicts.items()
                      if v.state != OK]  # fmt: skip
        why = "; ".join(stalled + missed)
        status = ", ".join(parts) or "no kernel source"
        if why:
            status += f"; watchdog held: {why}"
        return Verdict(not why, status, why)

    def tick(self) -> Verdict:
        v = self.check()
        # One line per change of what holds the pings, not per check (the byte counts in
        # `why` move at every check while a reader is stalled).
        kind = re.sub(r"[0-9]+", "N", v.why)
        if kind != self._last_why:
            if v.why:
                log.warning("watchdog: not pinging systemd: %s", v.why)
            else:
                log.info("watchdog: pinging systemd again")
            self._last_why = kind
        if v.status != self._last_status:
            self.notifier.status(v.status)
            self._last_status = v.status
        if v.healthy and self.notifier.watchdog_interval is not None and self.notifier.watchdog():
            self.pings += 1
        return v

    def ready(self) -> None:
        """READY=1: the snapshot is taken and the sources run (Service.start has returned)."""
        v = self.check()
        self._last_status = v.status
        self.notifier.ready(v.status)

    def start(self) -> None:
        if self.notifier.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="watchdog")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.tick()
            except Exception:  # never let a bug here stop the daemon; the pings stop instead
                log.exception("watchdog check failed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.notifier.stopping()
