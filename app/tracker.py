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
from app.life import Life, SourceSet, exit_of, iso, source_bit
from app.observations import Exec, Exit, Fork, Health, Loss, Observation
from app.registry import Registry

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


class Tracker:
    def __init__(
        self, registry: Registry, clocks: Clocks | None = None, proc: Path = procfs.PROC
    ) -> None:
        self.registry = registry
        self.clocks = clocks or Clocks()
        self.proc = proc
        self.hz = registry.node.clock.hz
        self._recent_dead: OrderedDict[int, Life] = OrderedDict()
        self._resync_pending = False
        self.counters: dict[str, int] = {
            "duplicates": 0,
            "unidentified_exits": 0,
            "undated_forks": 0,
        }
        self.on_resync: list[Callable[[], object]] = []

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
        known = self._known(o.pid, o.start_ticks)
        if known is not None:
            known.sources |= bit
            self.counters["duplicates"] += 1
            return
        start = self._start_of(o)
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
        if parent is not None:
            life.canary = parent.canary
        self.registry.born(life, bit)

    def _known(self, pid: int, start_ticks: int | None) -> Life | None:
        """The life a second report of a fork or exit refers to, if already recorded."""
        life = self.registry.alive.get(pid) or self._recent_dead.get(pid)
        if life is None:
            return None
        if start_ticks is not None and not life.matches(start_ticks):
            return None
        return life

    def _start_of(self, o: Fork) -> tuple[int, int, str | None] | None:
        """(start ticks, slack, comm): read from /proc while the child is there (exact),
        else derived from the kernel's timestamp (+-1 tick, design.md fact 11)."""
        if o.start_ticks is not None:
            return o.start_ticks, 0, None
        got = procfs.capture(o.pid, self.proc) if o.pid else None
        if got is not None:
            info, pidfd = got
            os.close(pidfd)
            if info.stat.ppid == o.ppid or o.ppid == 0:
                return info.stat.start_ticks, 0, info.stat.comm
        if o.mono_ns is not None:
            boot_ns = o.mono_ns + self.clocks.boot_minus_mono_ns()
            return boot_ns * self.hz // 1_000_000_000, 1, None
        if o.audit_stamp is not None:
            # Audit's stamp is coarse wall clock at the parent's syscall entry: one tick
            # early in about a third of cases, never late (design.md fact 11).
            # It is a lower bound: the start is set at the end of copy_process, after the
            # parent's mm was copied, which takes ticks when fork is slow (measured with
            # bench/audit_forks.py: stamp 0-2 ticks early). So the window is centred one
            # tick later: stamp+1 +-1 covers 0, 1 and 2 ticks early.
            since_boot = o.audit_stamp - self.clocks.real_minus_boot()
            return int(since_boot * self.hz) + 1, 1, None
        return None

    def _life_now(self, pid: int, source: SourceSet, start_ticks: int | None) -> Life | None:
        """The alive life of `pid`, learning it from /proc if the birth was missed."""
        life = self.registry.alive.get(pid)
        if life is not None and (start_ticks is None or life.matches(start_ticks)):
            return life
        info = procfs.capture_closed(pid, self.proc)
        if info is None or (start_ticks is not None and info.stat.start_ticks != start_ticks):
            return None
        return self.registry.learned(info, source)

    # -- exec ------------------------------------------------------------------------------
    def _exec(self, o: Exec) -> None:
        bit = source_bit(o.source)
        life = self._life_now(o.pid, bit, None)
        if life is None:
            return
        life.sources |= bit
        if o.exe is None and o.argv is None:
            info = procfs.capture_closed(o.pid, self.proc)
            if info is not None and life.matches(info.stat.start_ticks):
                life.exe, life.argv, life.comm = info.exe, info.argv, info.stat.comm
        else:
            life.exe = o.exe if o.exe is not None else life.exe
            life.argv = o.argv if o.argv is not None else life.argv
            life.comm = o.comm if o.comm is not None else life.comm
        if o.uid is not None:
            life.uid = o.uid
        self.registry.exec(life, bit, o.at)

    # -- deaths ----------------------------------------------------------------------------
    def _exit(self, o: Exit) -> None:
        bit = source_bit(o.source)
        info = exit_of(o.code, o.signal, o.core_dumped)
        recent = self._recent_dead.get(o.pid)
        if recent is not None and (o.start_ticks is None or recent.matches(o.start_ticks)):
            # The same death told by a second source: enrich, do not repeat.
            recent.sources |= bit
            if recent.exit is None or (recent.exit.code is None and recent.exit.signal is None):
                recent.exit = info
            self.counters["duplicates"] += 1
            return
        life = self._life_now(o.pid, bit, o.start_ticks)
        if life is None:
            self.counters["unidentified_exits"] += 1
            return
        self.registry.died(life, info, o.at, "signal" if o.signal else "exit", bit)
        self._recent_dead[o.pid] = life
        if len(self._recent_dead) > RECENT_DEAD:
            self._recent_dead.popitem(last=False)

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
            asyncio.get_running_loop().call_soon(self.resync, why)
        except RuntimeError:
            self.resync(why)

    def resync(self, why: str = "requested") -> dict[str, int]:
        """Lives whose pid vanished or changed start are dead (`exit` unknown, cause
        `resync`); live processes the registry lacks are added."""
        self._resync_pending = False
        started = self.clocks.wall()
        seen = {i.stat.pid: i for i in procfs.snapshot(self.proc)}
        reg = self.registry
        gone = 0
        for pid, life in list(reg.alive.items()):
            info = seen.get(pid)
            if info is None or not life.matches(info.stat.start_ticks):
                reg.died(life, None, started, "resync", SourceSet.RESYNC)
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
