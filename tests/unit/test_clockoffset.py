"""Clock differences read so that a preemption between two reads cannot skew them
(app/sources/clockoffset.py): what dates a life whose /proc entry is already gone."""

from __future__ import annotations

import time

import pytest

from app.sources import clockoffset
from app.sources.clockoffset import ClockOffset, bracketed_ns

A, B = time.CLOCK_MONOTONIC, time.CLOCK_BOOTTIME
OFFSET = 1_000_000_000


def test_a_preempted_read_is_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    # first try: 5 ms pass between reading `a` and reading `b` (the reader was preempted);
    # second try: 100 ns. The naive b - a of the first would be 5 ms off: more than a tick.
    reads = iter([0, OFFSET + 5_000_000, 5_000_100, 10_000_000, OFFSET + 10_000_050, 10_000_100])
    monkeypatch.setattr(time, "clock_gettime_ns", lambda _clock: next(reads))
    assert bracketed_ns(A, B) == OFFSET


def test_the_tightest_of_the_tries_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    widths = [9_000_000, 3_000_000, 7_000_000] * 3  # never tight: all TRIES are read
    seq: list[int] = []
    t = 0
    for w in widths[: clockoffset.TRIES]:
        seq += [t, t + OFFSET + w, t + w]  # `b` read at the end of the window: off by w/2
        t += 100_000_000
    reads = iter(seq)
    monkeypatch.setattr(time, "clock_gettime_ns", lambda _clock: next(reads))
    assert bracketed_ns(A, B) == OFFSET + 3_000_000 // 2


def test_real_clocks_agree_with_a_quiet_naive_read() -> None:
    naive = time.clock_gettime_ns(B) - time.clock_gettime_ns(A)
    assert abs(clockoffset.BOOT_MINUS_MONO() - naive) < 1_000_000
    real = time.clock_gettime(time.CLOCK_REALTIME) - time.clock_gettime(time.CLOCK_BOOTTIME)
    assert abs(clockoffset.REAL_MINUS_BOOT.seconds() - real) < 0.001


def test_cached_until_older_than_every(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counted(a: int, b: int) -> int:
        calls.append(1)
        return 42

    monkeypatch.setattr(clockoffset, "bracketed_ns", counted)
    off = ClockOffset(A, B, every=0.05)
    assert [off() for _ in range(100)] == [42] * 100
    assert len(calls) == 1
    time.sleep(0.06)
    assert off() == 42 and len(calls) == 2
