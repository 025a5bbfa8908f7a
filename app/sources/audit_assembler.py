"""Groups audit records into events by serial, and notices serials that never arrived.

A syscall event is several records sharing one `audit(stamp:serial)` and ends with an EOE
record (design.md fact 6). Records outside a syscall (CONFIG_CHANGE, user messages) have no
EOE: they are completed when their type says so, or by the timeout. An event is never held
longer than `timeout` and two events are never merged (same serial with another stamp means
the counter wrapped: the old group is completed first).

Serials come from one global u32 kernel counter shared by every record type (fact 7), so a
serial that has not arrived within `reorder` seconds, while later ones did, was lost on the
way to this reader. Records from different CPUs arrive slightly out of order, hence the
window. The clock is injected: timeouts are tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from app.netlink.audit_proto import AUDIT_EOE
from app.netlink.audit_records import Record

U32 = 0xFFFFFFFF
HALF = 1 << 31
# Types below 1300 are user-space, daemon and control messages: never part of a syscall.
FIRST_EVENT_TYPE = 1300


class AssemblerSink(Protocol):
    """What the assembler reports to (go-libaudit's two-method reassembler interface)."""

    def event_complete(self, records: list[Record]) -> None: ...

    def events_lost(self, first_serial: int, count: int) -> None: ...


class Assembler:
    def __init__(
        self,
        sink: AssemblerSink,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 0.5,
        reorder: float = 1.0,
        window: int = 4096,
    ) -> None:
        self.sink = sink
        self.clock = clock
        self.timeout = timeout  # longest an incomplete event is held
        self.reorder = reorder  # how long a missing serial may be late before it is lost
        self.window = window  # or how many later serials may arrive before it is lost
        self._open: dict[int, tuple[float, float, list[Record]]] = {}  # serial -> group
        self._next: int | None = None  # the lowest serial not seen yet
        self._ahead: set[int] = set()  # serials seen beyond _next
        self._hole_since = 0.0
        self.records = 0
        self._counters = {
            "events": 0, "timed_out": 0, "gaps": 0, "lost_serials": 0,
            "late": 0,
        }  # fmt: skip

    # -- input -----------------------------------------------------------------------------
    def push(self, rec: Record) -> None:
        """One record. Hot path: keep it short (see bench/audit_parser.py)."""
        self.records += 1
        serial = rec.serial
        group = self._open.get(serial)
        if group is None:
            self._see(serial)
            if rec.type == AUDIT_EOE:
                return  # the rest of this event was lost or already timed out
            if rec.type < FIRST_EVENT_TYPE:
                self._emit([rec])
                return
            self._open[serial] = (self.clock(), rec.stamp, [rec])
            return
        if group[1] != rec.stamp:
            # The counter wrapped onto a serial still open: that is another event.
            del self._open[serial]
            self._emit(group[2])
            self.push(rec)
            return
        if rec.type == AUDIT_EOE:
            del self._open[serial]
            self._emit(group[2])
        else:
            group[2].append(rec)

    def seen(self, serial: int) -> None:
        """An event handled without the assembler (a SYSCALL record the compiled reader
        confirmed against the connector's report, its EOE dropped): its serial counts, and
        a group of that serial already open (records logged before the SYSCALL one) is
        complete now, as its EOE would have made it."""
        self.records += 1
        group = self._open.pop(serial, None)
        if group is None:
            self._see(serial)
        else:
            self._emit(group[2])

    def flush(self, force: bool = False) -> None:
        """Complete events held longer than `timeout` and declare serials missing for longer
        than `reorder`; with `force`, complete everything (on stop)."""
        now = self.clock()
        if self._open:
            stale = [s for s, g in self._open.items() if force or now - g[0] >= self.timeout]
            for serial in stale:
                group = self._open.pop(serial)
                self._counters["timed_out"] += 1
                self._emit(group[2])
        if self._ahead and (force or now - self._hole_since >= self.reorder):
            while self._ahead:
                self._declare_gap()

    @property
    def counters(self) -> dict[str, int]:
        return {"records": self.records, **self._counters}

    @property
    def pending(self) -> int:
        return len(self._open)

    @property
    def holes(self) -> int:
        """Serials seen beyond the lowest missing one (0 when the stream is contiguous)."""
        return len(self._ahead)

    # -- serial accounting -----------------------------------------------------------------
    def _see(self, serial: int) -> None:
        nxt = self._next
        if nxt is None or serial == nxt:
            self._next = (serial + 1) & U32
            if self._ahead:
                self._advance()
            return
        if (serial - nxt) & U32 < HALF:  # ahead of the lowest missing one: a hole opens
            if not self._ahead:
                self._hole_since = self.clock()
            self._ahead.add(serial)
            if len(self._ahead) > self.window:
                self._declare_gap()
        else:
            self._counters["late"] += 1  # behind: late, or arriving after its gap was declared

    def _advance(self) -> None:
        nxt = self._next
        assert nxt is not None
        while nxt in self._ahead:
            self._ahead.discard(nxt)
            nxt = (nxt + 1) & U32
        self._next = nxt
        if self._ahead:
            self._hole_since = self.clock()

    def _declare_gap(self) -> None:
        nxt = self._next
        assert nxt is not None
        lowest = min(self._ahead, key=lambda s: (s - nxt) & U32)
        count = (lowest - nxt) & U32
        self._counters["gaps"] += 1
        self._counters["lost_serials"] += count
        self._next = lowest
        self._advance()
        self.sink.events_lost(nxt, count)

    def _emit(self, records: list[Record]) -> None:
        self._counters["events"] += 1
        self.sink.event_complete(records)
