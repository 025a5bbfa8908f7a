"""Differences between two kernel clocks, read so that a preemption cannot skew them.

A kernel timestamp in one clock (the proc connector's CLOCK_MONOTONIC, audit's wall clock)
is turned into another (CLOCK_BOOTTIME, which /proc's start ticks count; wall time) by
adding the difference between the two clocks. Read naively, `b() - a()`, a preemption
between the two reads adds its whole length to the difference: under a loaded box that is
milliseconds, enough to date a life's start ticks wrong (bench.storm, run next to a
compile, found lives recorded with a start the kernel never gave). So the difference is
read with `b` between two reads of `a`, keeping the tightest of a few tries, and cached:
these differences move only when the machine is suspended (BOOTTIME - MONOTONIC) or the
wall clock is adjusted (REALTIME - ...), so the hot path reads one monotonic clock to know
whether its cached value is older than `every` seconds.
"""

from __future__ import annotations

import time

TIGHT_NS = 20_000  # two reads closer than this had no preemption between them worth a tick
TRIES = 8


def bracketed_ns(a: int, b: int) -> int:
    """clock `b` - clock `a` (clock ids of time.clock_gettime_ns), in ns."""
    read = time.clock_gettime_ns
    best_width, best = -1, 0
    for _ in range(TRIES):
        a0 = read(a)
        bv = read(b)
        a1 = read(a)
        width = a1 - a0
        if best_width < 0 or width < best_width:
            best_width, best = width, bv - (a0 + a1) // 2
        if width < TIGHT_NS:
            break
    return best


class ClockOffset:
    """`b - a` in ns, refreshed when older than `every` seconds (callable: the hot path)."""

    def __init__(self, a: int, b: int, every: float = 0.5) -> None:
        self.a, self.b, self.every = a, b, every
        self._at = time.monotonic()
        self._ns = bracketed_ns(a, b)

    def __call__(self) -> int:
        now = time.monotonic()
        if now - self._at >= self.every:
            self._ns = bracketed_ns(self.a, self.b)
            self._at = now
        return self._ns

    def seconds(self) -> float:
        return self() / 1e9


# One of each per process: every source and the tracker read the same cached values.
BOOT_MINUS_MONO = ClockOffset(time.CLOCK_MONOTONIC, time.CLOCK_BOOTTIME)
REAL_MINUS_BOOT = ClockOffset(time.CLOCK_BOOTTIME, time.CLOCK_REALTIME)
REAL_MINUS_MONO = ClockOffset(time.CLOCK_MONOTONIC, time.CLOCK_REALTIME)
