"""The identity of a node and of a process life: `host/pid/start`, with an exact start."""

from __future__ import annotations

import functools
import os
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

from app.procfs import PROC, read_boot_id, read_btime


class LifeIdError(ValueError):
    """A life id, or its start, that cannot be understood."""


def read_hz() -> int:
    """USER_HZ, the unit of /proc/<pid>/stat times (the ELF auxv AT_CLKTCK value)."""
    return os.sysconf("SC_CLK_TCK")


def _fraction_digits(hz: int) -> int:
    """The fewest decimal digits that write every tick of 1/hz s exactly (100 Hz -> 2)."""
    for digits in range(10):
        if 10**digits % hz == 0:
            return digits
    return 9  # a HZ with factors other than 2 and 5: nanoseconds, rounded


LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z: datetime's last second (MAXYEAR)


@functools.lru_cache(maxsize=1 << 16)  # lookups and events format the same starts often
def _date_of(btime: int, hz: int, ticks: int) -> str:
    whole, part = divmod(ticks, hz)
    stamp = datetime.fromtimestamp(btime + whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = _fraction_digits(hz)
    if digits == 0:
        return stamp + "Z"
    frac = (part * 10**digits + hz // 2) // hz  # round half up, in integers
    return f"{stamp}.{frac:0{digits}d}Z"


@dataclass(frozen=True, slots=True)
class TickClock:
    """Turns start ticks into dates and back, with a btime pinned once per boot."""

    btime: int
    hz: int

    def date_of(self, ticks: int) -> str:
        """`start` as ISO 8601 UTC at the tick's resolution; the same text every time."""
        return _date_of(self.btime, self.hz, ticks)

    def check_ticks(self, ticks: int) -> int:
        """`ticks`, if they name a date (up to year 9999); a client may send any 19 digits,
        and datetime raises OverflowError or OSError beyond that (issue 10: a 500)."""
        if (ticks // self.hz) > LAST_SECOND - self.btime:
            raise LifeIdError("start is beyond any date (after year 9999)")
        return ticks

    def ticks_of(self, epoch: Fraction) -> int:
        """The tick that a date names; refuses a date between two ticks."""
        ticks = (epoch - self.btime) * self.hz
        nearest = round(ticks)
        digits = _fraction_digits(self.hz)
        # For a HZ whose ticks are whole decimals (100 Hz: 10 ms) a date must be exact;
        # otherwise dates were rounded to `digits` and may be off by half a unit.
        exact = 10**digits % self.hz == 0
        slack = Fraction(0) if exact else Fraction(self.hz, 2 * 10**digits)
        if abs(ticks - nearest) > slack:
            raise LifeIdError(
                f"start date is not on a clock tick (1/{self.hz} s after btime {self.btime})"
            )
        if nearest < 0:
            raise LifeIdError("start date is before the node booted")
        return nearest


def life_text(host: str, pid: int, start: str) -> str:
    """A life's text form, `host/pid/start`: `start` is the UTC date at the tick's resolution
    (TickClock.date_of); parse_life_id reads it back. The one place that writes it."""
    return f"{host}/{pid}/{start}"


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    hostname: str
    boot_id: str
    clock: TickClock
    btime_pinned_from: str  # "kernel" or the state file it was read back from

    def life_id(self, pid: int, start_ticks: int) -> str:
        return life_text(self.hostname, pid, self.clock.date_of(start_ticks))


def load_node_identity(
    state_dir: Path | None,
    proc: Path = PROC,
    node_name: str | None = None,
    boot_id_file: Path | None = None,
) -> NodeIdentity:
    """Read the node's identity, pinning btime per boot in `state_dir` when it is writable.

    The kernel recomputes btime (realtime - boottime) at every read, so a clock step moves it;
    start ticks never move. A daemon restarted on the same boot reuses the first btime it saw,
    so the dates it gives for a life never change.
    """
    # boot_id_file: a test's override, so that daemons sharing one kernel can each "reboot".
    boot_id = boot_id_file.read_text().strip() if boot_id_file else read_boot_id(proc)
    btime = read_btime(proc)
    source = "kernel"
    if state_dir is not None:
        pin = state_dir / "btime"
        try:
            pinned_boot, pinned_btime = pin.read_text().split()
            if pinned_boot == boot_id:
                btime, source = int(pinned_btime), str(pin)
            else:
                raise ValueError("another boot")
        except (OSError, ValueError):
            try:
                state_dir.mkdir(parents=True, exist_ok=True)
                pin.write_text(f"{boot_id} {btime}\n")
            except OSError:
                pass  # read-only or unprivileged: pinned in memory for this run only
    name = node_name or socket.gethostname()
    return NodeIdentity(name, boot_id, TickClock(btime, read_hz()), source)


@dataclass(frozen=True, slots=True)
class LifeId:
    """A parsed `host/pid/start`; `start` is ticks (int) or an epoch date (Fraction)."""

    host: str
    pid: int
    start: int | Fraction

    def ticks(self, clock: TickClock) -> int:
        start = self.start
        return clock.check_ticks(start if isinstance(start, int) else clock.ticks_of(start))


_HOST = re.compile(r"^[A-Za-z0-9_.:-]{1,253}$")
_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:?\d\d)$")
MAX_PID = 4194304  # PID_MAX_LIMIT on 64-bit kernels (include/linux/threads.h)


def parse_pid(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 7:
        raise LifeIdError(f"pid must be a positive integer, got {text!r}")
    pid = int(text)
    if not 0 < pid <= MAX_PID:
        raise LifeIdError(f"pid {pid} is out of range (1..{MAX_PID})")
    return pid


def parse_start(text: str) -> int | Fraction:
    """A start given as clock ticks since boot (`12345`) or as an ISO 8601 date."""
    if text.isascii() and text.isdigit():
        if len(text) > 19:
            raise LifeIdError("start ticks out of range")
        return int(text)
    if not _DATE.match(text):
        raise LifeIdError(
            "start must be clock ticks or an ISO 8601 date like "
            f"2026-01-02T03:04:05.67Z, got {text!r}"
        )
    main, _, rest = text.partition(".")
    frac = Fraction(0)
    if rest:
        digits = re.match(r"\d+", rest)
        assert digits is not None
        frac = Fraction(int(digits.group()), 10 ** len(digits.group()))
        main += rest[len(digits.group()) :]
    try:
        when = datetime.fromisoformat(main.replace("Z", "+00:00"))
    except ValueError as e:
        raise LifeIdError(f"start date {text!r} is not a valid date: {e}") from None
    return Fraction(int(when.timestamp())) + frac


def parse_life_id(text: str) -> LifeId:
    """Parse `host/pid/start`; raises LifeIdError with a message fit for a client."""
    if len(text) > 400:
        raise LifeIdError("life id is too long")
    parts = text.split("/")
    if len(parts) != 3:
        raise LifeIdError(f"a life is written host/pid/start, got {text!r}")
    host, pid, start = parts
    if not _HOST.match(host):
        raise LifeIdError(f"host {host!r} is not a valid host name")
    return LifeId(host, parse_pid(pid), parse_start(start))


def same_host(a: str, b: str) -> bool:
    """Host names compare without case (RFC 4343): `VM/1/1` names a life of host `vm`."""
    return a == b or a.lower() == b.lower()
