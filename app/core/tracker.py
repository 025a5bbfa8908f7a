"""The tracker fuses what sources observe into life transitions: born, exec, died.

It is the registry's only writer: the sources report through `submit`, and the rest of the
daemon hands its evidence to the methods under "evidence" (a lookup that found a pid gone or
a process unknown, a pidfd follow, the start-up snapshot, node notes). Sources may report one
transition more than once (audit and the proc connector both see a fork) and in any order (a
child's exit can arrive before its parent's fork record): the tracker gives one life, one
event per transition, never a `died` before its `born`, and keeps the richer fields of each
source.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from app import procfs
from app.argv import ARGV_MAX
from app.core.dating import Clocks, audit_estimate, estimate, start_of
from app.core.life import Exit as ExitInfo
from app.core.life import Life, SourceSet, exit_of, iso, source_bit
from app.core.registry import MAX_SLACK, Registry
from app.core.vanish import Vanished, Vanishings
from app.netlink.audit_records import CONFIRMED_FORK, CONFIRMED_SOURCE, Confirmed
from app.sources.base import OK
from app.sources.observations import Exec, Exit, Fork, Health, Loss, Observation

log = logging.getLogger(__name__)

AUDIT = CONFIRMED_SOURCE  # the source whose reports the compiled reader confirms
AUDIT_BIT = source_bit(AUDIT)
# s between the stamp of audit's confirmed exit_group (its syscall entry) and the death as the
# connector dated it, for the confirmed report to be taken for that death's: a stale table
# entry (cleared at every loss) would need a pid reused as fast to mislead it.
CONFIRM_WINDOW = 1.0
RECENT_DEAD = 4096  # deaths remembered by pid, to merge a second source's report of one


PENDING = 4096  # pids with reports that came before the birth they belong to
PENDING_TTL = 10.0  # seconds such a report waits for its birth before it is dropped
RESYNC_SPACING = 0.5  # s between two repairs from /proc, however many gaps come
SAME_MOMENT = 0.02  # s: audit stamps are coarse wall clock, up to a tick or two early
PARK = 0.25  # s an exec the connector told waits for audit's report of it (its fields)
PARKED_MAX = 4096  # such execs waiting at once; past it the oldest reads /proc
# Ticks by which two reports of one fork may disagree beyond their slacks and still be one life
# (a pid is reused only after pid_max others: seconds even at the fastest fork rates). The
# life's slack then grows to take both in, up to registry.MAX_SLACK.
SAME_LIFE = 3


class _Parked(NamedTuple):
    """An exec told without fields, waiting for a report that has them (`park_execs_for`)."""

    since: float  # monotonic
    report: Exec
    life: Life


@dataclass(slots=True)
class _Early:
    """Reports about a pid whose life is not known yet: audit's records of a short child
    (exec, exit_group) can arrive before its parent's fork record, and the child may be
    reaped by then, so /proc cannot vouch for it."""

    at: float  # wall time when stashed
    execs: list[Exec]
    exit: Exit | None = None


class CanaryObserver(Protocol):
    """Told of every source's report of a canary life (app/core/canary.py)."""

    @property
    def parents(self) -> AbstractSet[int]:
        """Pids whose children are canaries."""
        ...

    def seen(self, source: str, what: str, life: Life) -> None:
        """`source` reported `what` ("born" or "died") of the canary `life`."""
        ...


ResyncListener = Callable[[float], None]  # called with the wall time of each repair


class Tracker:
    def __init__(
        self,
        registry: Registry,
        clocks: Clocks | None = None,
        proc: Path = procfs.PROC,
        argv_max: int = ARGV_MAX,
    ) -> None:
        self.registry = registry
        self.clocks = clocks or Clocks()
        self.proc = proc
        self.argv_max = argv_max  # bytes of argv kept per life (Config.argv_max, app/argv.py)
        self.hz = registry.node.clock.hz
        self._recent_dead: OrderedDict[int, Life] = OrderedDict()
        self._early: OrderedDict[int, _Early] = OrderedDict()
        self._resync_pending = False
        self._last_resync = float("-inf")
        self._vanished = Vanishings(self.clocks.mono)
        self._settle: asyncio.TimerHandle | None = None
        self.counters: dict[str, int] = {
            "duplicates": 0,
            "confirmed": 0,
            "unidentified_exits": 0,
            "undated_forks": 0,
            "early_reports": 0,
            "early_applied": 0,
            "stale_exits": 0,
            "vanished": 0,  # lives a lookup found gone before any exit report
            "vanished_reported": 0,  # ... whose exit report then came: nothing was lost
            "missed_deaths": 0,  # ... whose report never came: a gap
            "exec_reads": 0,  # execs whose exe and argv were read from /proc (no audit first)
            "early_forks": 0,  # fork reports dated before the pid's alive life: not a rebirth
            "parked_execs": 0,  # execs that waited for audit's fields rather than read /proc
            "slack_widened": 0,  # derived starts whose two reports disagreed by over a tick
            "parked_execs_dropped": 0,  # ... whose life died before they could be journaled
        }
        self._resync_listeners: list[ResyncListener] = []
        self._canary: CanaryObserver | None = None
        # Execs told without exe and argv (the connector), waiting for the report of a
        # source that gives them (audit: the exec's own, no /proc read), by pid. Only while
        # that source is healthy (`park_execs_for`).
        self._parked: dict[int, _Parked] = {}
        self._park_source: str | None = None
        self._park_ok = False
        self._park_timer: asyncio.TimerHandle | None = None

    # -- the Sink interface ------------------------------------------------------------
    def submit(self, obs: Observation) -> None:
        if type(obs) is Confirmed:
            self._confirmed(obs)
        elif isinstance(obs, Fork):
            self._fork(obs)
        elif isinstance(obs, Exit):
            self._exit(obs)
        elif isinstance(obs, Exec):
            self._exec(obs)
        elif isinstance(obs, Loss):
            self._loss(obs)
        elif isinstance(obs, Health):
            if obs.source == self._park_source:
                self._park_ok = obs.state == OK
                if not self._park_ok:
                    self.release_parked()
            self.note(
                "source", {"source": obs.source, "state": obs.state, "reason": obs.reason}, obs.at
            )

    # -- evidence from outside the event stream ---------------------------------------------
    def found(self, info: procfs.ProcInfo, by: int) -> Life:
        """A live process the registry lacks, found in /proc by `by` (lookup, follow)."""
        return self.registry.learned(info, by)

    def vanished(self, life: Life, at: float, by: int) -> None:
        """`life`'s pid was found gone from /proc, or held by another start, at `at`.

        Evidence of the death, so `life` is dead from now on (exit unknown, cause `vanished`),
        but provisional: a parent may have just reaped it, its exit event still on the way.
        That report, when it comes, completes the life and its `died` event; only when none
        comes within the grace (app/core/vanish.py) is the death missed: a gap and a resync.
        """
        if not life.alive:
            return
        if self._parked:
            self.release_parked(life.pid)
        died = self.registry.died(life, None, at, "vanished", by)
        self._remember_dead(life)
        self._vanished.add(life, died)
        self.counters["vanished"] += 1
        self._arm_settle()

    def load_snapshot(self, infos: Iterable[procfs.ProcInfo]) -> int:
        """Learn the processes alive at start-up, without birth events; journals `snapshot`."""
        t0 = self.clocks.mono()
        n = self.registry.load(infos, SourceSet.SNAPSHOT)
        self.note("snapshot", {"lives": n, "seconds": round(self.clocks.mono() - t0, 6)})
        return n

    def note(self, type: str, fields: dict[str, Any], at: float | None = None) -> None:
        """A journal event about the node rather than a life (gap, clock, source...)."""
        self.registry.note(type, fields, at)

    # -- parked execs ----------------------------------------------------------------------
    def park_execs_for(self, source: str, healthy: bool = True) -> None:
        """From now on, an exec reported without exe and argv waits up to PARK seconds for
        `source`'s report of the same exec, which carries them (audit: read from the exec
        itself), instead of reading /proc at once; while `source` is healthy. Released early
        by that report, by the life's death (told after its exec), by a loss, or at stop."""
        self._park_source = source
        self._park_ok = healthy

    def release_parked(
        self, pid: int | None = None, older_than: float | None = None, ended: bool = False
    ) -> None:
        """Journal parked execs now, their fields read from /proc: one pid's, those parked
        before `older_than` (monotonic), or all. `ended`: that pid's process has ended."""
        if pid is not None:
            got = self._parked.pop(pid, None)
            if got is not None:
                self._publish_parked(got, read=True, ended=ended)
            return
        for p, parked in list(self._parked.items()):
            if older_than is None or parked.since <= older_than:
                del self._parked[p]
                self._publish_parked(parked, read=True)

    def _publish_parked(self, parked: _Parked, read: bool, ended: bool = False) -> None:
        life, o = parked.life, parked.report
        if not life.alive:
            self.counters["parked_execs_dropped"] += 1  # died by a path that did not ask
            return
        if read and ended:
            self._ended_exec_fields(life)
        elif read:
            self._exec_fields(life, o)
        self.registry.exec(life, source_bit(o.source), o.at)

    def _park(self, o: Exec, life: Life) -> bool:
        """Park `o` (see park_execs_for); False when it cannot wait."""
        if not self._park_ok or o.pid in self._parked:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if len(self._parked) >= PARKED_MAX:
            oldest = next(iter(self._parked))
            self.release_parked(oldest)
        self._parked[o.pid] = _Parked(self.clocks.mono(), o, life)
        self.counters["parked_execs"] += 1
        if self._park_timer is None:
            self._park_timer = loop.call_later(PARK, self._expire_parked)
        return True

    def _expire_parked(self) -> None:
        self._park_timer = None
        now = self.clocks.mono()
        self.release_parked(older_than=now - PARK)
        if self._parked:
            first = next(iter(self._parked.values())).since
            wait = max(0.0, first + PARK - now)
            self._park_timer = asyncio.get_running_loop().call_later(wait, self._expire_parked)

    # -- listeners -----------------------------------------------------------------------
    def add_resync_listener(self, listener: ResyncListener) -> None:
        """Call `listener(wall time)` after each repair from /proc."""
        self._resync_listeners.append(listener)

    def observe_canaries(self, observer: CanaryObserver | None) -> None:
        """Mark children of `observer.parents` as canaries and tell it their reports."""
        self._canary = observer

    def _is_canary_child(self, ppid: int) -> bool:
        return self._canary is not None and ppid in self._canary.parents

    # -- births --------------------------------------------------------------------------
    def _fork(self, o: Fork) -> None:
        bit = source_bit(o.source)
        est = estimate(o, self.hz, self.clocks)
        known = self._known(o.pid, est)
        if known is not None:
            self._born_again(known, est, bit, o.uid, o.source)
            return
        alive = self.registry.alive.get(o.pid)
        if alive is not None and est is not None and _dated_before(alive, *est):
            start = self._newer_holder(alive, o, bit)
            if start is None:
                return
        else:
            start = start_of(o, est, self.proc)
        if start is None:
            self.counters["undated_forks"] += 1  # gone, and no kernel timestamp to date it
            return
        ticks, slack, comm = start
        parent = self.registry.alive.get(o.ppid)
        life = Life(
            # ppid: the parent's own int object, one int less per life (~28 B).
            o.pid, ticks, parent.pid if parent else o.ppid,
            comm or (parent.comm if parent else None), bit,
            exe=parent.exe if parent else None,
            argv=parent.argv if parent else (),
            uid=o.uid if o.uid is not None else (parent.uid if parent else None),
            born_at=o.at, start_slack=slack,
        )  # fmt: skip
        life.canary = self._is_canary_child(o.ppid) or (parent is not None and parent.canary)
        if self._parked and o.pid in self._parked:
            self.release_parked(o.pid)  # the pid's old life's exec, before it is replaced
        self.registry.born(life, bit)
        self._seen(life, o.source, "born")
        early = self._early.pop(o.pid, None)
        if early is not None and self.clocks.wall() - early.at <= PENDING_TTL:
            self.counters["early_applied"] += 1
            for ex in early.execs:
                self._exec(ex)
            if early.exit is not None and early.exit.at >= o.at - SAME_MOMENT:
                self._exit(early.exit)

    def _born_again(
        self, known: Life, est: tuple[int, int] | None, bit: int, uid: int | None, source: str
    ) -> None:
        """The same birth told by a second source: one life, one event; keep its fields."""
        if est is not None and known.start_slack and est[1] <= known.start_slack:
            # Both starts were derived (audit's from below, the connector's from above, each
            # can be ticks off under load): the life's start, already sent, stays, and its
            # slack grows to take in the other estimate too.
            slack = min(abs(est[0] - known.start_ticks), MAX_SLACK)
            if slack > known.start_slack:
                known.start_slack = slack
                self.counters["slack_widened"] += 1
                self.registry.touched(known)  # a restart finds it by either start too
        known.sources |= bit
        if uid is not None:
            known.uid = uid
        self.counters["duplicates"] += 1
        self._seen(known, source, "born")

    def _confirmed(self, c: Confirmed) -> None:
        """Audit's report of a fork or exit_group that the compiled reader matched to the
        connector's report of it (the pid, and the parent or the status: app/netlink/
        _batch.c, "confirmations"). That report made the birth or the death already, so
        this one does what the duplicate paths do, without the Fork or Exit made to get
        there: the life learns that audit saw it, its uid, its slack, the canary its tally.
        When the life is not where the connector's report left it (its EXIT was not the
        process's end, a death found by a lookup, dates that do not fit), the report takes
        the full path, as if it had not been matched."""
        pid = c.pid
        if c.kind == CONFIRMED_FORK:
            est = audit_estimate(c.stamp, self.hz, self.clocks)
            known = self._known(pid, est)
            if known is None:
                self._fork(Fork(AUDIT, pid, c.ppid, c.stamp, audit_stamp=c.stamp, uid=c.uid))
                return
            self._born_again(known, est, AUDIT_BIT, c.uid, AUDIT)
            self.counters["confirmed"] += 1
            return
        recent = None if pid in self.registry.alive else self._recent_dead.get(pid)
        if (
            recent is None
            or recent.exit is None
            or recent.cause == "vanished"
            or recent.died_at is None
            or abs(recent.died_at - c.stamp) > CONFIRM_WINDOW
        ):
            self._exit(Exit(AUDIT, pid, c.stamp, code=c.code))
            return
        # As _told_again with a status known already (audit's is never the better one)
        # and no lookup's death awaiting a report (cause "vanished" took the full path).
        recent.sources |= AUDIT_BIT
        self.counters["duplicates"] += 1
        self.counters["confirmed"] += 1
        self._seen(recent, AUDIT, "died")

    def _newer_holder(self, alive: Life, o: Fork, bit: int) -> tuple[int, int, str | None] | None:
        """A fork report dated before the start of the pid's alive life. Audit dates a child
        by its parent's syscall entry, a lower bound that a slow fork (preempted, under a
        storm) puts ticks early: such a report is most likely `alive`'s own birth, or an
        older holder's told late. Neither is evidence that `alive` is gone, so it is not
        replaced on the report's word: only /proc showing a later start is (a newer holder,
        dated exactly). Returns that start, or None when the report changes nothing."""
        try:
            st: procfs.Stat | None = procfs.read_stat(o.pid, self.proc)
        except (OSError, procfs.StatError):
            st = None
        if st is not None and st.start_ticks > alive.start_ticks + alive.start_slack:
            return st.start_ticks, 0, st.comm
        if st is not None and alive.matches(st.start_ticks):
            alive.sources |= bit  # /proc says: the same life, dated early
            self._seen(alive, o.source, "born")
        self.counters["early_forks"] += 1
        return None

    def _known(self, pid: int, est: tuple[int, int] | None) -> Life | None:
        """The life a second report of a birth refers to, if already recorded."""
        for life in (self.registry.alive.get(pid), self._recent_dead.get(pid)):
            if life is not None and (est is None or _close(life, *est)):
                return life
        return None

    def _life_now(self, pid: int, source: int, start_ticks: int | None) -> Life | None:
        """The alive life of `pid`, learning it from /proc if the birth was missed."""
        life = self.registry.alive.get(pid)
        if life is not None and (start_ticks is None or life.matches(start_ticks)):
            return life
        info = procfs.capture_closed(pid, self.proc, self.argv_max)
        if info is None or (start_ticks is not None and info.stat.start_ticks != start_ticks):
            return None
        st = info.stat
        life = Life(
            st.pid, st.start_ticks, st.ppid, st.comm, source,
            exe=info.exe, argv=info.argv, uid=info.uid,
        )  # fmt: skip
        life.pidfd_ino = info.pidfd_ino
        life.canary = self._is_canary_child(st.ppid)
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
        if life.canary and self._canary is not None:
            self._canary.seen(source, what, life)

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
        n, before = life.count_exec(bit)
        if n < before:
            self.counters["duplicates"] += 1  # an earlier exec, already told and superseded
            return
        bare = o.exe is None and o.argv is None
        if n == before and bare:
            # Told again without fields (the connector, after audit): the first report set
            # them, from the exec itself or from /proc. No second read of /proc for it.
            self.counters["duplicates"] += 1
            return
        parked = self._parked.pop(o.pid, None) if self._parked else None
        if parked is not None and (parked.life is not life or n > before):
            # Not the exec this report tells (another life, a later exec): out first, as is.
            self._publish_parked(parked, read=False)
            parked = None
        if parked is not None:
            # The parked exec, told now with the exec's own fields: journaled with them.
            self._exec_fields(life, o)
            self.registry.exec(life, source_bit(parked.report.source) | bit, parked.report.at)
            return
        if n > before and bare and life.alive and self._park(o, life):
            return
        self._exec_fields(life, o)
        if n == before or not life.alive:
            self.counters["duplicates"] += 1
            return
        self.registry.exec(life, bit, o.at)

    def _ended_exec_fields(self, life: Life) -> None:
        """A parked exec whose process has ended: of /proc only `stat` still tells what
        it ran (the exec's comm; a zombie has no exe link and an empty cmdline), so only
        that is read. Audit's report, still on its way, brings the exe, argv and uid. In
        a fork+exec storm the connector's EXIT usually comes before audit's exec: this
        was half of the lives' /proc image reads (bench.profile --mode exec)."""
        self.counters["exec_reads"] += 1
        try:
            st = procfs.read_stat(life.pid, self.proc)
        except (OSError, procfs.StatError):
            return
        if life.matches(st.start_ticks):
            life.set_program(st.comm, None, ())
            # The zombie's euid (the owner of /proc/<pid>): an exec may have changed it, and
            # the uid decides who may read the life's argv (docs/security.md).
            uid = procfs.read_owner(life.pid, self.proc)
            if uid is not None:
                life.uid = uid

    def _exec_fields(self, life: Life, o: Exec) -> None:
        if o.exe is None and o.argv is None:
            image = None
            if life.alive:
                self.counters["exec_reads"] += 1
                image = procfs.read_image(o.pid, self.proc, self.argv_max)
            if image is not None and life.matches(image[0].start_ticks):
                life.set_program(image[0].comm, image[1], image[2])
                # Read after the stat that proved the pid still held this life.
                uid = procfs.read_owner(o.pid, self.proc)
                if uid is not None and o.uid is None:
                    life.uid = uid
        else:
            life.set_program(
                o.comm if o.comm is not None else life.comm,
                o.exe if o.exe is not None else life.exe,
                o.argv if o.argv is not None else life.argv,
            )
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
        if recent is not None and _same_death(recent, o):
            self._told_again(recent, info, o)
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

    def _told_again(self, recent: Life, info: ExitInfo, o: Exit) -> None:
        """A death already recorded, reported (again): enrich, do not repeat. The connector
        and pidfd report the kernel's wait status, which says which signal killed."""
        bit = source_bit(o.source)
        recent.sources |= bit
        known = o.code is not None or o.signal is not None
        better = recent.exit is None or (o.signal and o.source in ("proc", "pidfd"))
        if known and better and recent.exit != info:
            recent.exit = info
            recent.cause = "signal" if o.signal else "exit"
            self.registry.touched(recent)
        vanished = self._vanished.confirm(recent)
        if vanished is None:
            self.counters["duplicates"] += 1
        else:  # the report a lookup's death awaited: nothing was missed
            self.counters["vanished_reported"] += 1
            self.registry.completed(vanished.died, recent, bit)
        self._seen(recent, o.source, "died")

    def _die(self, life: Life, info: ExitInfo, o: Exit) -> None:
        if self._parked:
            self.release_parked(life.pid, ended=True)  # its exec before its death
        known = o.code is not None or o.signal is not None
        cause = "signal" if o.signal else "exit"
        self.registry.died(life, info if known else None, o.at, cause, source_bit(o.source))
        self._remember_dead(life)
        self._seen(life, o.source, "died")

    def _remember_dead(self, life: Life) -> None:
        self._recent_dead[life.pid] = life
        self._recent_dead.move_to_end(life.pid)
        if len(self._recent_dead) > RECENT_DEAD:
            self._recent_dead.popitem(last=False)

    # -- loss and repair -------------------------------------------------------------------
    def _loss(self, o: Loss) -> None:
        if o.source == self._park_source:
            self.release_parked()  # its reports of them may be among the lost
        self.note(
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
        wait = self.resync_wait()
        if wait > 0:
            loop.call_later(wait, self.resync, why)
        else:
            loop.call_soon(self.resync, why)

    def resync_wait(self) -> float:
        """Seconds until another repair may run (0 when one may run now)."""
        return max(0.0, self._last_resync + RESYNC_SPACING - self.clocks.mono())

    def resync(self, why: str = "requested") -> dict[str, int]:
        """Lives whose pid vanished or changed start are dead (`exit` unknown, cause
        `resync`); live processes the registry lacks are added."""
        self._resync_pending = False
        self._last_resync = self.clocks.mono()
        self.release_parked()  # before any life it settles dies
        # After a gap the sources' exec counts no longer line up: start them again.
        reg = self.registry
        for life in reg.alive.values():
            life.execs = 0
        started = self.clocks.wall()
        seen = {i.stat.pid: i for i in procfs.snapshot(self.proc, self.argv_max)}
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
        self.note("resync", {"reason": why, **counts}, started)
        for listener in self._resync_listeners:
            try:
                listener(started)
            except Exception:  # one listener's fault must not keep the others uninformed
                log.exception("resync listener %r failed", listener)
        return counts

    # -- vanished lives whose exit report never came -----------------------------------------
    def settle_vanished(self) -> int:
        """Report, as gaps, the vanished lives whose grace ran out without an exit report;
        then one resync. Runs on a timer; returns how many were missed."""
        missed = self._vanished.expired()
        for v in missed:
            self._missed_death(v)
        if missed:
            self.request_resync("a lookup found a missed death")
        return len(missed)

    def _missed_death(self, v: Vanished) -> None:
        self.counters["missed_deaths"] += 1
        until = v.life.died_at
        self.note(
            "gap",
            {"source": "lookup", "reason": "missed_death", "since": None, "until": iso(until),
             "detail": f"pid {v.life.pid} vanished and no source reported its exit within "
                       f"{self._vanished.grace:g} s"},
            self.clocks.wall(),
        )  # fmt: skip

    def _arm_settle(self) -> None:
        """One timer for the oldest vanished life's grace (none without a running loop: a
        test then calls settle_vanished itself)."""
        wait = self._vanished.wait()
        if self._settle is not None or wait is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._settle = loop.call_later(wait, self._on_settle)

    def _on_settle(self) -> None:
        self._settle = None
        self.settle_vanished()
        self._arm_settle()

    @property
    def awaiting_exit(self) -> int:
        """Vanished lives still awaiting their exit report."""
        return len(self._vanished)

    def close(self) -> None:
        """Stop the timers and journal the execs still parked (the service stops); what the
        sources report while they stop reads /proc as it comes."""
        if self._settle is not None:
            self._settle.cancel()
            self._settle = None
        self._park_ok = False
        if self._park_timer is not None:
            self._park_timer.cancel()
            self._park_timer = None
        self.release_parked()


def _dated_before(life: Life, ticks: int, slack: int) -> bool:
    """Does a start estimated as `ticks` (+-`slack`) lie wholly before `life`'s start?"""
    return ticks + slack < life.start_ticks - life.start_slack


def _close(life: Life, ticks: int, slack: int) -> bool:
    """Could a start estimated as `ticks` (+-`slack`) be `life`'s start? A report's estimate
    can be off by more than its slack under load (audit's ticks early, the connector's ticks
    late: docs/performance.md, "Round 3"); a pid is never reused within SAME_LIFE ticks, so a
    report that close is about the same life."""
    return abs(life.start_ticks - ticks) <= life.start_slack + slack + SAME_LIFE


def _same_death(recent: Life, o: Exit) -> bool:
    """Is the exit report `o` about `recent`, dead already? A start in the report decides;
    else a life found gone by a lookup takes only a report of an exit before that moment:
    a later one belongs to a later holder of the pid."""
    if o.start_ticks is not None:
        return recent.matches(o.start_ticks)
    if recent.cause != "vanished" or recent.died_at is None:
        return True
    return o.at <= recent.died_at + SAME_MOMENT


def _within(life: Life, at: float) -> bool:
    """Did a report at `at` happen during `life` (as far as coarse stamps can tell)?"""
    born = life.born_at if life.born_at is not None else float("-inf")
    died = life.died_at if life.died_at is not None else float("inf")
    return born - SAME_MOMENT <= at <= died + SAME_MOMENT
