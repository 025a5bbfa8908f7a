"""What event sources tell the tracker: typed observations of kernel facts, never changed.

Sources translate their wire formats (audit records, proc connector messages, pidfd wakeups)
into these; the tracker fuses them into life transitions. `at` is wall-clock epoch seconds
of the observation; `mono_ns` is CLOCK_MONOTONIC when the kernel gave one.

Not `frozen`: a frozen dataclass is built through object.__setattr__ per field, 1.5 us
against 0.4 us here (python -m timeit), and every death passes through one on its way to
the clients (bench/death_latency.py). Nothing writes to an observation after it is made.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.netlink.audit_records import Confirmed
from app.sources.clockoffset import BOOT_MINUS_MONO, REAL_MINUS_BOOT


def boot_minus_mono_ns() -> int:
    """CLOCK_BOOTTIME - CLOCK_MONOTONIC now (the time the machine spent suspended): turns a
    kernel `mono_ns` into time since boot, the clock /proc's start ticks count. Read so
    that a preemption cannot skew it, and cached (app/sources/clockoffset.py)."""
    return BOOT_MINUS_MONO()


def real_minus_boot() -> float:
    """CLOCK_REALTIME - CLOCK_BOOTTIME in seconds (turns audit's wall-clock stamps into time
    since boot), read as `boot_minus_mono_ns` is."""
    return REAL_MINUS_BOOT.seconds()


@dataclass(slots=True)
class Fork:
    source: str
    pid: int  # the new process (a thread group leader: sources drop threads)
    ppid: int
    at: float
    start_ticks: int | None = None  # known exactly when the source read it
    mono_ns: int | None = None  # kernel CLOCK_MONOTONIC of the fork (proc connector)
    audit_stamp: float | None = None  # audit's coarse wall-clock stamp of the syscall
    uid: int | None = None
    # The source read the process's exit with its fork (the connector, in one batch): its
    # /proc entry is a zombie's at best, most often gone (reaped), so not worth a read.
    ended: bool = False


@dataclass(slots=True)
class Exec:
    source: str
    pid: int
    at: float
    exe: str | None = None
    argv: tuple[str, ...] | None = None
    comm: str | None = None
    uid: int | None = None
    cwd: str | None = None
    ppid: int | None = None


@dataclass(slots=True)
class Exit:
    source: str
    pid: int
    at: float
    code: int | None = None  # exit(2) status when it exited normally
    signal: int | None = None  # the killing signal
    core_dumped: bool = False
    start_ticks: int | None = None  # of the dying life, when the source knows it
    mono_ns: int | None = None


@dataclass(slots=True)
class Loss:
    """The source knows it missed events (serial gap, kernel lost counter, ENOBUFS...)."""

    source: str
    reason: str
    at: float
    detail: str = ""
    since: float | None = None  # start of the window in which events may be missing


@dataclass(slots=True)
class Health:
    """The source's state changed: ok, degraded or failed, with a reason."""

    source: str
    state: str
    reason: str
    at: float


# Confirmed: audit's report of a fork or exit that the connector told already (audit_lives).
Observation = Fork | Exec | Exit | Loss | Health | Confirmed


def wait_status(status: int) -> tuple[int | None, int | None, bool]:
    """Split a wait(2) status into (exit code, signal, core dumped)."""
    sig = status & 0x7F
    if sig == 0:
        return (status >> 8) & 0xFF, None, False
    return None, sig, bool(status & 0x80)
