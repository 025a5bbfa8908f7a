"""When a life started: the clocks the tracker reads, and the start of a new life dated from
a fork report, exactly from /proc while the child is there, else from the report's stamp."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app import procfs
from app.sources.observations import Fork, boot_minus_mono_ns, real_minus_boot


@dataclass(frozen=True, slots=True)
class Clocks:
    """Injected clocks: wall time, monotonic time (spacing and grace windows), and the
    kernel's boottime - monotonic offset (ns)."""

    wall: Callable[[], float] = time.time
    mono: Callable[[], float] = time.monotonic
    boot_minus_mono_ns: Callable[[], int] = boot_minus_mono_ns
    real_minus_boot: Callable[[], float] = real_minus_boot


# Ticks a start derived from a report may be off. On a quiet box the connector's timestamp
# is exact or one tick late and audit's stamp exact or one tick early (design.md fact 11);
# under load both were seen 2 to 4 ticks off (docs/performance.md, "Lives missed under a
# loaded box"). A pid is never reused within a few ticks, so the wider slack is never
# ambiguous; a life dated from /proc has none.
DERIVED_SLACK = 3


def estimate(o: Fork, hz: int, clocks: Clocks) -> tuple[int, int] | None:
    """(start ticks, slack) of a new life from the report alone, without /proc."""
    if o.start_ticks is not None:
        return o.start_ticks, 0
    if o.mono_ns is not None:
        # Taken just after the child's start time is set: exact or late (a fork preempted
        # between the two points).
        boot_ns = o.mono_ns + clocks.boot_minus_mono_ns()
        return boot_ns * hz // 1_000_000_000, DERIVED_SLACK
    if o.audit_stamp is not None:
        return audit_estimate(o.audit_stamp, hz, clocks)
    return None


def audit_estimate(stamp: float, hz: int, clocks: Clocks) -> tuple[int, int]:
    """(start ticks, slack) of a child from its parent's audit fork record's stamp: coarse
    wall clock at the parent's syscall entry, a lower bound, usually 0-1 tick early
    (bench/audit_forks.py measures it), more when the fork is slow. Centred one tick later,
    where the quiet box's error is."""
    return int((stamp - clocks.real_minus_boot()) * hz) + 1, DERIVED_SLACK


def start_of(
    o: Fork, est: tuple[int, int] | None, proc: Path
) -> tuple[int, int, str | None] | None:
    """(start ticks, slack, comm): read from /proc while the child is there (exact),
    else the report's own estimate (+-DERIVED_SLACK ticks, design.md fact 11)."""
    if est is not None and (est[1] == 0 or o.ended):
        # An exact start, or a process whose exit was read with its fork: in a fork+exit
        # storm 98% of those reads found the pid reaped (a probe, docs/performance.md round
        # 6), each a failed open for nothing; the connector's stamp dates it (design.md
        # fact 11).
        return est[0], est[1], None
    if est is not None:
        # Hot path (every fork): `stat` alone, 15 us instead of 50 for a pidfd capture.
        # A pid reaped and reused since would show another parent or a later start than
        # the kernel's timestamp says; a pid is not reused within one tick.
        try:
            st: procfs.Stat | None = procfs.read_stat(o.pid, proc)
        except (OSError, procfs.StatError):
            st = None
        same_parent = st is not None and (st.ppid == o.ppid or o.ppid == 0)
        if st is not None and same_parent and abs(st.start_ticks - est[0]) <= est[1] + 1:
            return st.start_ticks, 0, st.comm
        return est[0], est[1], None
    # Only `stat` is wanted: argv_max=0 reads one byte of cmdline, not all of it.
    got = procfs.capture(o.pid, proc, argv_max=0) if o.pid else None
    if got is None:
        return None
    info, pidfd = got
    os.close(pidfd)
    if info.stat.ppid == o.ppid or o.ppid == 0:
        return info.stat.start_ticks, 0, info.stat.comm
    return None
