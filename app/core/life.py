"""A process life as the registry holds it: mutable while alive, frozen for events."""

from __future__ import annotations

import functools
import math
import sys
import time
from typing import Any, NamedTuple

from app.argv import is_cut
from app.core.identity import TickClock, life_text

ALIVE, DEAD, UNKNOWN = "alive", "dead", "unknown"


class SourceSet:
    """Bits naming the sources that saw a life or a transition; a set of them is an int.

    Plain ints, not an IntFlag: `|` on an IntFlag costs about 1.1 us against 17 ns on ints,
    and the tracker merges sources several times per life (python -m timeit, here).
    """

    SNAPSHOT = 1
    AUDIT = 2
    PROC = 4
    PIDFD = 8
    LOOKUP = 16
    RESYNC = 32
    SCRIPT = 64


_BITS: dict[str, int] = {k.lower(): v for k, v in vars(SourceSet).items() if k.isupper()}


EXEC_BITS = 16  # bits per source in Life.execs; a count stops at its maximum
EXEC_MAX = (1 << EXEC_BITS) - 1
# Where each source's count sits in Life.execs. The proc connector's at 0: a life exec'd
# once, told by it alone, then holds 1, an int CPython shares (ints up to 256 are cached).
_EXEC_ORDER = (SourceSet.PROC, SourceSet.AUDIT, SourceSet.SNAPSHOT, SourceSet.PIDFD,
               SourceSet.LOOKUP, SourceSet.RESYNC, SourceSet.SCRIPT)  # fmt: skip
EXEC_SHIFT = {bit: EXEC_BITS * i for i, bit in enumerate(_EXEC_ORDER)}


@functools.cache
def source_names(bits: int) -> list[str]:
    # Cached: callers only read it (JSON encoding); there are at most 128 combinations.
    return [name for name, bit in _BITS.items() if bit & bits]


def source_bit(name: str) -> int:
    return _BITS[name]


def intern(text: str | None) -> str | None:
    # comm and exe repeat across thousands of lives: one copy each keeps a life small.
    # sys.intern's table does not keep a string alive once no life holds it.
    return None if text is None else sys.intern(text)


ARGVS = 4096  # distinct argv tuples shared at once (see intern_argv)
ARGV_SHARED_MAX = 64  # arguments: a longer argv is rarely repeated, and costs to hash
_argvs: dict[tuple[str, ...], tuple[str, ...]] = {}


def intern_argv(argv: tuple[str, ...]) -> tuple[str, ...]:
    """One copy of each argv that repeats: 10,000 `sleep 600` share one tuple (~160 B each
    otherwise, bench/memory_lives.py). The table is bounded: when it holds ARGVS tuples it
    starts again, so argv that never repeats (hostile or not) cannot grow it; lives keep
    the tuples they hold. A cut argv is not shared (it is rare, and must stay a CutArgv)."""
    if not argv or len(argv) > ARGV_SHARED_MAX or is_cut(argv):
        return argv
    got = _argvs.get(argv)
    if got is None:
        if len(_argvs) >= ARGVS:
            _argvs.clear()
        got = _argvs[argv] = argv
    return got


# A life's size for `history_bytes`: the Life and its slots' own values, its key in the
# registry's dict and order, and its `died` view (measured with sys.getsizeof, 64-bit
# CPython 3.11); argv strings cost their text plus a str header and a tuple slot each.
LIFE_BYTES = 640
ARG_BYTES = 57


def retained_bytes(life: Life) -> int:
    """An estimate of what keeping `life` costs, for the registry's `history_bytes`. It
    counts exe, comm and argv as if not shared with other lives: an upper bound."""
    argv = life.argv
    size = LIFE_BYTES + ARG_BYTES * len(argv) + sum(map(len, argv))
    if life.exe is not None:
        size += len(life.exe)
    if life.comm is not None:
        size += len(life.comm)
    return size


class Exit(NamedTuple):
    code: int | None
    signal: int | None
    core_dumped: bool


_EXITS: dict[tuple[int | None, int | None, bool], Exit] = {}


def exit_of(code: int | None, signal: int | None, core_dumped: bool = False) -> Exit:
    """A shared Exit per distinct status: thousands of deaths share a few values."""
    key = (code, signal, core_dumped)
    ex = _EXITS.get(key)
    if ex is None:
        ex = _EXITS.setdefault(key, Exit(code, signal, core_dumped))
    return ex


class Life:
    """One life, `pid` + `start_ticks`. Slots, shared strings and argv keep a live process
    at ~340 B of the daemon's RSS (bench/memory_lives.py --fill, bench/RESULTS.md)."""

    __slots__ = (
        "argv",
        "born_at",
        "canary",
        "cause",
        "comm",
        "died_after",
        "died_at",
        "exe",
        "execs",
        "exit",
        "parent_ticks",
        "pid",
        "pidfd_ino",
        "ppid",
        "sources",
        "start_slack",
        "start_ticks",
        "uid",
    )

    def __init__(
        self,
        pid: int,
        start_ticks: int,
        ppid: int,
        comm: str | None,
        sources: int,
        *,
        exe: str | None = None,
        argv: tuple[str, ...] = (),
        uid: int | None = None,
        born_at: float | None = None,
        start_slack: int = 0,
    ) -> None:
        self.pid = pid
        self.start_ticks = start_ticks
        # 0: start read from /proc (exact); more: derived from a report (DERIVED_SLACK, or up
        # to MAX_SLACK when two reports disagreed).
        self.start_slack = start_slack
        self.ppid = ppid
        self.parent_ticks: int | None = None
        self.comm = intern(comm)
        self.exe = intern(exe)
        self.argv = intern_argv(argv)
        self.uid = uid
        self.born_at = born_at
        self.died_at: float | None = None
        # Set only for a death not seen (the daemon was down): it happened after this and
        # before died_at (app/core/restart.py).
        self.died_after: float | None = None
        self.exit: Exit | None = None
        self.cause: str | None = None
        self.sources = sources
        self.pidfd_ino: int | None = None
        self.canary = False
        # This life's execs as each source reported them, EXEC_BITS per source (count_exec):
        # an int field, not a dict per life (~300 B less each).
        self.execs = 0

    def set_program(self, comm: str | None, exe: str | None, argv: tuple[str, ...]) -> None:
        """What an exec changed, shared with other lives running the same program."""
        self.comm = intern(comm)
        self.exe = intern(exe)
        self.argv = intern_argv(argv)

    @property
    def alive(self) -> bool:
        return self.died_at is None

    @property
    def state(self) -> str:
        return ALIVE if self.died_at is None else DEAD

    def count_exec(self, source: int) -> tuple[int, int]:
        """Count one exec reported by `source` (a SourceSet bit). Returns its count for that
        source now and the highest count of any source before it (the tracker's exec
        dedupe: app/core/tracker.py, _exec)."""
        counts = self.execs
        before, rest = 0, counts
        while rest:
            before = max(before, rest & EXEC_MAX)
            rest >>= EXEC_BITS
        shift = EXEC_SHIFT[source]
        n = (counts >> shift & EXEC_MAX) + 1
        if n <= EXEC_MAX:
            self.execs = counts + (1 << shift)
        else:
            n = EXEC_MAX
        return n, before

    def matches(self, start_ticks: int) -> bool:
        return abs(start_ticks - self.start_ticks) <= self.start_slack

    def snapshot(self) -> LifeView:
        return LifeView(
            self.pid,
            self.start_ticks,
            self.start_slack,
            self.ppid,
            self.parent_ticks,
            self.comm,
            self.exe,
            self.argv,
            self.uid,
            self.born_at,
            self.died_at,
            self.exit,
            self.cause,
            self.sources,
            self.pidfd_ino,
            self.canary,
            self.died_after,
        )


class LifeView(NamedTuple):
    """A life frozen at one moment: what an event carries."""

    pid: int
    start_ticks: int
    start_slack: int
    ppid: int
    parent_ticks: int | None
    comm: str | None
    exe: str | None
    argv: tuple[str, ...]
    uid: int | None
    born_at: float | None
    died_at: float | None
    exit: Exit | None
    cause: str | None
    sources: int
    pidfd_ino: int | None
    canary: bool
    died_after: float | None = None

    @property
    def state(self) -> str:
        return ALIVE if self.died_at is None else DEAD

    def to_json(self, host: str, boot_id: str, clock: TickClock) -> dict[str, Any]:
        """The API's life object (openapi.yaml `Life`)."""
        return self.head_json(host, boot_id, clock) | self.tail_json()

    def head_json(self, host: str, boot_id: str, clock: TickClock) -> dict[str, Any]:
        """The fields a death does not change (app/api/lifejson.py keeps them encoded)."""
        start = clock.date_of(self.start_ticks)
        return {
            "id": life_text(host, self.pid, start),
            "host": host,
            "boot_id": boot_id,
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "start": start,
            "start_derived": self.start_slack > 0,
            "ppid": self.ppid,
            "parent": None
            if self.parent_ticks is None
            else life_text(host, self.ppid, clock.date_of(self.parent_ticks)),
            "comm": self.comm,
            "exe": self.exe,
            "argv": list(self.argv),
            "argv_truncated": is_cut(self.argv),
            "uid": self.uid,
            "born_at": iso(self.born_at),
            "pidfd_ino": self.pidfd_ino,
            "canary": self.canary,
        }

    def head_key(self) -> tuple[Any, ...]:
        """Everything head_json depends on: equal keys, equal heads."""
        return self[:10] + self[14:16]

    def tail_json(self) -> dict[str, Any]:
        ex = self.exit
        out: dict[str, Any] = {
            "state": self.state,
            "died_at": iso(self.died_at),
            "exit": None
            if ex is None
            else {"code": ex.code, "signal": ex.signal, "core_dumped": ex.core_dumped},
            "cause": self.cause,
            "sources": source_names(self.sources),
        }
        if self.died_after is not None:  # a death the daemon did not see: its bounds
            out["died_between"] = [iso(self.died_after), iso(self.died_at)]
        return out


# head_key is the view without these: what a death changes.
assert LifeView._fields[10:14] == ("died_at", "exit", "cause", "sources")


def iso(epoch: float | None) -> str | None:
    """A wall-clock time as ISO 8601 UTC with microseconds: `2026-11-26T02:37:16.150000Z`.

    By hand rather than `datetime.fromtimestamp(...).isoformat()`: 1.0 us against 4.1 us,
    and every event carries two or three of these on the death path (python -m timeit, here).
    """
    if epoch is None:
        return None
    # Rounded as datetime rounds (CPython's _PyTime_DoubleToDenominator, half to even).
    frac, whole = math.modf(epoch)
    us = round(frac * 1e6)
    if us >= 1_000_000:
        us -= 1_000_000
        whole += 1
    elif us < 0:
        us += 1_000_000
        whole -= 1
    return f"{_utc_second(int(whole))}.{us:06d}Z"


@functools.lru_cache(maxsize=16)
def _utc_second(sec: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
