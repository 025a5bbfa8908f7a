"""The tracker fuses what sources observe into life transitions: born, exec, died.

It is the registry's only writer. Sources may report one transition more than once (audit and
the proc connector both see a fork) and in any order (a child's exit can arrive before its
parent's fork record): the tracker gives one life, one event per transition, never a `died`
before its `born`, and keeps the richer fields of each source.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app import procfs
from app.core.life import Exit as ExitInfo
from app.core.life import Life, SourceSet, exit_of, iso, source_bit
from app.core.registry import Registry
from app.sources.observations import Exec, Exit, Fork, Health, Loss, Observation

RECENT_DEAD = 4096  # deaths remembered by pid, to merge a second source's report of one


@dataclass(frozen=True, slots=True)
class Clocks:
    """Injected clocks: wall time, and the kernel's boottime - monotonic offset (ns)."""

    wall: Callable[[], float] = time.time
    boot_minus_mono_ns: Callable[[], int] = lambda: (
        time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    )
    real_minus_boot: Callable[[], float] = lambda: (
        time.clock_gettime(time.CLOCK_REALTIME) - time.clock_gettime(time.CLOCK_BOOTTIME)
    )


PENDING = 4096  # pids with reports that came before the birth they belong to
PENDING_TTL = 10.0  # seconds such a report waits for its birth before it is dropped
RESYNC_SPACING = 0.5  # s between two repairs from /proc, however many gaps come
SAME_MOMENT = 0.02  # s: audit stamps are coarse wall clock, up to a tick or two early


@dataclass(slots=True)
class _Early:
    """Reports about a pid whose life is not known yet: audit's records of a short child
    (exec, exit_group) can arrive before its parent's fork record, and the child may be
    reaped by then, so /proc cannot vouch for it."""

    at: float  # wall time when stashed
    execs: list[Exec]
    exit: Exit | None = None


class Tracker:
    def __init__(
        self, registry: Registry, clocks: Clocks | None = None, proc: Path = procfs.PROC
    ) -> None:
        self.registry = registry
        self.clocks = clocks or Clocks()
        self.proc = proc
        self.hz = registry.node.clock.hz
        self._recent_dead: OrderedDict[int, Life] = OrderedDict()
        self._early: OrderedDict[int, _Early] = OrderedDict()
        # pid -> [life, {source bit: execs that source reported for this life}]
        self._execs: dict[int, tuple[Life, dict[int, int]]] = {}
        self._resync_pending = False
        self._last_resync = float("-inf")
        self.counters: dict[str, int] = {
            "duplicates": 0,
            "unidentified_exits": 0,
            "undated_forks": 0,
            "early_reports": 0,
            "early_applied": 0,
            "stale_exits": 0,
        }
        self.on_resync: list[Callable[[], object]] = []
        # Canary lives (app/canary.py): children of these pids are canaries, and each
        # source's report of a canary's birth or death is told to `on_canary`.
        self.canary_parents: set[int] = set()
        self.on_canary: Callable[[str, str, Life], None] | None = None

    # -- the Sink interface ------------------------------------------------------------
    def submit(self, obs: Observation) -> None:
        if isinstance(obs, Fork):
            self._fork(obs)
        elif isinstance(obs, Exit):
            self._exit(obs)
        elif isinstance(obs, Exec):
            self._exec(obs)
        elif isinstance(obs, Loss):
            self._loss(obs)
        elif isinstance(obs, Health):
            self.registry.note(
                "source", {"source": obs.source, "state": obs.state, "reason": obs.reason}, obs.at
            )

    # -- births --------------------------------------------------------------------------
    def _fork(self, o: Fork) -> None:
        bit = source_bit(o.source)
        est = self._estimate(o)
        known = self._known(o.pid, est)
        if known is not None:
            # The same birth told by a second source: one life, one event; keep its fields.
            known.sources |= bit
            if o.uid is not None:
                known.uid = o.uid
            self.counters["duplicates"] += 1
            self._seen(known, o.source, "born")
            return
        start = self._start_of(o, est)
        if start is None:
            self.counters["undated_forks"] += 1  # gone, and no kernel timestamp to date it
            return
        ticks, slack, comm = start
        parent = self.registry.alive.get(o.ppid)
        life = Life(
            o.pid, ticks, o.ppid, comm or (parent.comm if parent else None), bit,
            exe=parent.exe if parent else None,
            argv=parent.argv if parent else (),
            uid=o.uid if o.uid is not None else (parent.uid if parent else None),
            born_at=o.at, start_slack=slack,
        )  # fmt: skip
        life.canary = o.ppid in self.canary_parents or (parent is not None and parent.canary)
        self.registry.born(life, bit)
        self._seen(life, o.source, "born")
        early = self._early.pop(o.pid, None)
        if early is not None and self.clocks.wall() - early.at <= PENDING_TTL:
            self.counters["early_applied"] += 1
            for ex in early.execs:
                self._exec(ex)
            if early.exit is not None and early.exit.at >= o.at - SAME_MOMENT:
                self._exit(early.exit)

    def _estimate(self, o: Fork) -> tuple[int, int] | None:
        """(start ticks, slack) of a new life from the report alone, without /proc."""
        if o.start_ticks is not None:
            return o.start_ticks, 0
        if o.mono_ns is not None:
            # Taken just after the child's start time is set: exact or one tick late.
            boot_ns = o.mono_ns + self.clocks.boot_minus_mono_ns()
            return boot_ns * self.hz // 1_000_000_000, 1
        if o.audit_stamp is not None:
            # Coarse wall clock at the parent's syscall entry: a lower bound, 0-2 ticks early
            # (design.md fact 11; 2 when fork is slow, measured by the audit branch's
            # bench/audit_forks.py). Centred one tick later: stamp+1 +-1.
            since_boot = o.audit_stamp - self.clocks.real_minus_boot()
            return int(since_boot * self.hz) + 1, 1
        return None

    def _known(self, pid: int, est: tuple[int, int] | None) -> Life | None:
        """The life a second report of a birth refers to, if already recorded."""
        for life in (self.registry.alive.get(pid), self._recent_dead.get(pid)):
            if life is not None and (est is None or _close(life, *est)):
                return life
        return None

    def _start_of(self, o: Fork, est: tuple[int, int] | None) -> tuple[int, int, str | None] | None:
        """(start ticks, slack, comm): read from /proc while the child is there (exact),
        else the report's own estimate (+-1 tick, design.md fact 11)."""
        if est is not None and est[1] == 0:
            return est[0], 0, None
        if est is not None:
            # Hot path (every fork): `stat` alone, 15 us instead of 50 for a pidfd capture.
            # A pid reaped and reused since would show another parent or a later start than
            # the kernel's timestamp says; a pid is not reused within one tick.
            try:
                st: procfs.Stat | None = procfs.read_stat(o.pid, self.proc)
            except (OSError, procfs.StatError):
                st = None
            same_parent = st is not None and (st.ppid == o.ppid or o.ppid == 0)
            if st is not None and same_parent and abs(st.start_ticks - est[0]) <= est[1] + 1:
                return st.start_ticks, 0, st.comm
            return est[0], est[1], None
        got = procfs.capture(o.pid, self.proc) if o.pid else None
        if got is None:
            return None
        info, pidfd = got
        os.close(pidfd)
        if info.stat.ppid == o.ppid or o.ppid == 0:
            return info.stat.start_ticks, 0, info.stat.comm
        return None

    def _life_now(self, pid: int, source: int, start_ticks: int | None) -> Life | None:
        """The alive life of `pid`, learning it from /proc if the birth was missed."""
        life = self.registry.alive.get(pid)
        if life is not None and (start_ticks is None or life.matches(start_ticks)):
            return life
        info = procfs.capture_closed(pid, self.proc)
        if info is None or (start_ticks is not None and info.stat.start_ticks != start_ticks):
            return None
        st = info.stat
        life = Life(
            st.pid, st.start_ticks, st.ppid, st.comm, source,
            exe=info.exe, argv=info.argv, uid=info.uid,
        )  # fmt: skip
        life.pidfd_ino = info.pidfd_ino
        life.canary = st.ppid in self.canary_parents
        self.registry.born(life, source, {"late": True})
        return life

    def _stash(self, pid: int) -> _Early:
        early = self._early.get(pid)
        if early is None or self.clocks.wall() - early.at > PENDING_TTL:
            early = self._early[pid] = _Early(self.clocks.wall(), [])
        self._early.move_to_end(pid)
        while len(self._early) > PENDING:
            self._early.popitem(last=False)
        self.counters["early_reports"] += 1
        return early

    def _seen(self, life: Life, source: str, what: str) -> None:
        if life.canary and self.on_canary is not None:
            self.on_canary(source, what, life)

    # -- exec ------------------------------------------------------------------------------
    def _exec(self, o: Exec) -> None:
        """One `exec` event per exec, however many sources report it. Sources report a
        life's execs in order, so the n-th report of each source is the n-th exec: a report
        numbered past every other source's is new; one that ties is the same exec told again
        (its fields are kept: audit's argv/exe/uid are the exec's own, /proc's are later)."""
        bit = source_bit(o.source)
        life = self.registry.alive.get(o.pid)
        dead = self._recent_dead.get(o.pid)
        if life is None and dead is not None and _within(dead, o.at):
            life = dead  # told after the death: enrich, no event after `died`
        elif life is None:
            life = self._life_now(o.pid, bit, None)
        if life is None:
            self._stash(o.pid).execs.append(o)
            return
        life.sources |= bit
        tally = self._execs.get(o.pid)
        if tally is None or tally[0] is not life:
            tally = self._execs[o.pid] = (life, {})
        counts = tally[1]
        before = max(counts.values(), default=0)
        n = counts[bit] = counts.get(bit, 0) + 1
        if n < before:
            self.counters["duplicates"] += 1  # an earlier exec, already told and superseded
            return
        self._exec_fields(life, o)
        if n == before or not life.alive:
            self.counters["duplicates"] += 1
            return
        self.registry.exec(life, bit, o.at)

    def _exec_fields(self, life: Life, o: Exec) -> None:
        if o.exe is None and o.argv is None:
            info = procfs.capture_closed(o.pid, self.proc) if life.alive else None
            if info is not None and life.matches(info.stat.start_ticks):
                life.exe, life.argv, life.comm = info.exe, info.argv, info.stat.comm
        else:
            life.exe = o.exe if o.exe is not None else life.exe
            life.argv = o.argv if o.argv is not None else life.argv
            life.comm = o.comm if o.comm is not None else life.comm
        if o.uid is not None:
            life.uid = o.uid

    # -- deaths ----------------------------------------------------------------------------
    def _exit(self, o: Exit) -> None:
        bit = source_bit(o.source)
        info = exit_of(o.code, o.signal, o.core_dumped)
        life = self.registry.alive.get(o.pid)
        if life is not None and self._fits(life, o):
            self._die(life, info, o)
            return
        recent = self._recent_dead.get(o.pid)
        if recent is not None and (o.start_ticks is None or recent.matches(o.start_ticks)):
            # The same death told by a second source: enrich, do not repeat. The connector
            # and pidfd report the kernel's wait status, which says which signal killed.
            recent.sources |= bit
            known = o.code is not None or o.signal is not None
            if known and (recent.exit is None or (o.signal and o.source in ("proc", "pidfd"))):
                recent.exit = info
                recent.cause = "signal" if o.signal else "exit"
            self.counters["duplicates"] += 1
            self._seen(recent, o.source, "died")
            return
        if life is not None:
            self.counters["stale_exits"] += 1  # an earlier holder of the pid: not this life
            return
        life = self._life_now(o.pid, bit, o.start_ticks)
        if life is not None and self._fits(life, o):
            self._die(life, info, o)
            return
        # Not known and not in /proc: the birth report may still come (audit order).
        self.counters["unidentified_exits"] += 1
        self._stash(o.pid).exit = o

    def _fits(self, life: Life, o: Exit) -> bool:
        """Can this exit be `life`'s? Not if it names another start, or happened before the
        life was born (a late report about the pid's previous holder)."""
        if o.start_ticks is not None:
            return life.matches(o.start_ticks)
        return life.born_at is None or o.at >= life.born_at - SAME_MOMENT

    def _die(self, life: Life, info: ExitInfo, o: Exit) -> None:
        known = o.code is not None or o.signal is not None
        cause = "signal" if o.signal else "exit"
        self.registry.died(life, info if known else None, o.at, cause, source_bit(o.source))
        self._remember_dead(life)
        self._seen(life, o.source, "died")

    def _remember_dead(self, life: Life) -> None:
        self._recent_dead[life.pid] = life
        self._recent_dead.move_to_end(life.pid)
        if len(self._recent_dead) > RECENT_DEAD:
            pid, _ = self._recent_dead.popitem(last=False)
            tally = self._execs.get(pid)
            if tally is not None and not tally[0].alive:
                del self._execs[pid]

    # -- loss and repair -------------------------------------------------------------------
    def _loss(self, o: Loss) -> None:
        self.registry.note(
            "gap",
            {"source": o.source, "reason": o.reason, "detail": o.detail,
             "since": iso(o.since), "until": iso(o.at)},
            o.at,
        )  # fmt: skip
        self.request_resync(f"gap in {o.source}: {o.reason}")

    def request_resync(self, why: str) -> None:
        """Reconcile with /proc soon, once however many gaps ask for it."""
        if self._resync_pending:
            return
        self._resync_pending = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.resync(why)
            return
        # Under a sustained overrun every read brings a new gap; a full /proc snapshot per
        # gap would starve the reader that is already behind. Gaps are journaled at once;
        # the repair runs at most every RESYNC_SPACING seconds.
        wait = self._last_resync + RESYNC_SPACING - time.monotonic()
        if wait > 0:
            loop.call_later(wait, self.resync, why)
        else:
            loop.call_soon(self.resync, why)

    def resync_wait(self) -> float:
        """Seconds until another repair may run (0 when one may run now)."""
        return max(0.0, self._last_resync + RESYNC_SPACING - time.monotonic())

    def resync(self, why: str = "requested") -> dict[str, int]:
        """Lives whose pid vanished or changed start are dead (`exit` unknown, cause
        `resync`); live processes the registry lacks are added."""
        self._resync_pending = False
        self._last_resync = time.monotonic()
        # After a gap the sources' exec counts no longer line up: start them again.
        self._execs = {pid: t for pid, t in self._execs.items() if not t[0].alive}
        started = self.clocks.wall()
        seen = {i.stat.pid: i for i in procfs.snapshot(self.proc)}
        reg = self.registry
        gone = 0
        for pid, life in list(reg.alive.items()):
            info = seen.get(pid)
            if info is None or not life.matches(info.stat.start_ticks):
                reg.died(life, None, started, "resync", SourceSet.RESYNC)
                self._remember_dead(life)  # a late exit report then enriches, not repeats
                gone += 1
        added = 0
        for pid, info in seen.items():
            if pid not in reg.alive:
                reg.learned(info, SourceSet.RESYNC)
                added += 1
        counts = {"dead": gone, "added": added, "alive": len(reg.alive)}
        reg.note("resync", {"reason": why, **counts}, started)
        for hook in self.on_resync:
            hook()
        return counts


def _close(life: Life, ticks: int, slack: int) -> bool:
    """Could a start estimated as `ticks` (+-`slack`) be `life`'s start?"""
    return abs(life.start_ticks - ticks) <= life.start_slack + slack


def _within(life: Life, at: float) -> bool:
    """Did a report at `at` happen during `life` (as far as coarse stamps can tell)?"""
    born = life.born_at if life.born_at is not None else float("-inf")
    died = life.died_at if life.died_at is not None else float("inf")
    return born - SAME_MOMENT <= at <= died + SAME_MOMENT
