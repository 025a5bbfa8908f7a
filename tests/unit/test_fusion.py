"""Fusion of audit and proc connector reports into one life and one event per transition,
driven by scripted sources in every order the two streams can interleave."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app import procfs
from app.core.dating import DERIVED_SLACK
from app.core.journal import Event
from app.core.service import Service
from app.sources.observations import Exec, Exit, Fork, Observation
from tests.helpers import make_config
from tests.scripted import ScriptedSource


def free_pid(skip: int = 0) -> int:
    """A pid no process holds now, so /proc cannot answer for it and starts are derived."""
    pid = 4_100_000 + skip
    while os.path.exists(f"/proc/{pid}"):
        pid += 1
    return pid


class Child:
    """One short child's reports, as each source would give them."""

    def __init__(self, pid: int, ppid: int = 1, signal: int | None = None) -> None:
        now, mono = time.time(), time.monotonic_ns()
        self.pid, self.born, self.died = pid, now - 0.004, now - 0.001
        self.f_p = Fork("proc", pid, ppid, self.born, mono_ns=mono - 4_000_000)
        self.x_p = Exec("proc", pid, self.born + 0.001)
        code = None if signal else 3
        self.e_p = Exit("proc", pid, self.died, code, signal, mono_ns=mono - 1_000_000)
        self.f_a = Fork("audit", pid, ppid, self.born, audit_stamp=self.born, uid=1000)
        self.x_a = Exec("audit", pid, self.born + 0.001, exe="/usr/bin/true",
                        argv=("true", "--audit"), uid=1000)  # fmt: skip
        self.e_a = None if signal else Exit("audit", pid, self.died, 3)

    @property
    def exit_a(self) -> Exit:
        """Audit's exit record, for a child that has one (one killed by a signal has none)."""
        assert self.e_a is not None, "killed by a signal: audit has no exit record"
        return self.e_a

    def proc(self) -> list[Observation]:
        return [self.f_p, self.x_p, self.e_p]

    def audit(self) -> list[Observation]:
        return [o for o in (self.f_a, self.x_a, self.e_a) if o is not None]


def interleavings(a: list[Observation], b: list[Observation]) -> Iterator[list[Observation]]:
    """Every merge of two streams that keeps each stream's own order."""
    n = len(a) + len(b)
    for slots in itertools.combinations(range(n), len(a)):
        ia, ib = iter(a), iter(b)
        yield [next(ia) if i in slots else next(ib) for i in range(n)]


def audit_orders(c: Child) -> Iterator[list[Observation]]:
    """Audit's fork record is the parent's syscall exit: it may come after the child's exec
    and exit records. Its exec record always precedes its exit record."""
    rest = [o for o in (c.x_a, c.e_a) if o is not None]
    for i in range(len(rest) + 1):
        yield [*rest[:i], c.f_a, *rest[i:]]


async def run(
    tmp_path: Path, script: list[Observation], park: bool = False
) -> tuple[Service, list[Event]]:
    """Replay `script` through a service's tracker. With `park`, as when audit and the
    connector both run: an exec the connector tells first waits for audit's."""
    svc = Service(make_config(state_dir=tmp_path, canary_interval=0))
    await svc.start()
    first = svc.journal.last_cursor
    names = {o.source for o in script}
    sources = {n: ScriptedSource(n) for n in names}
    for src in sources.values():
        await src.start(svc.tracker)
    if park:
        svc.tracker.park_execs_for("audit")
    for o in script:
        sources[o.source].push(o)
    await svc.stop()  # releases what is still parked
    events = svc.journal.since(first) or []
    return svc, [e for e in events if e.life is not None]


def count_image_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids whose exec image is read from /proc from now on (procfs.read_image)."""
    reads: list[int] = []
    real = procfs.read_image

    def counted(pid: int, *args: Any, **kw: Any) -> Any:
        reads.append(pid)
        return real(pid, *args, **kw)

    monkeypatch.setattr(procfs, "read_image", counted)
    return reads


def transitions(events: list[Event], pid: int) -> list[str]:
    return [e.type for e in events if e.life is not None and e.life.pid == pid]


@pytest.mark.parametrize("park", [False, True])
@pytest.mark.parametrize("signal", [None, 9])
async def test_every_interleaving_gives_one_life_and_one_event_per_transition(
    tmp_path: Path, signal: int | None, park: bool
) -> None:
    pid = free_pid()
    checked = 0
    for audit in audit_orders(Child(pid, signal=signal)):
        for script in interleavings(Child(pid, signal=signal).proc(), audit):
            c = Child(pid, signal=signal)  # fresh timestamps, same shape
            script = [_renew(o, c) for o in script]
            svc, events = await run(tmp_path, script, park)
            assert transitions(events, pid) == ["born", "exec", "died"], script
            life = events[-1].life
            assert life is not None
            dead = svc.registry.find(pid, life.start_ticks)
            assert dead is not None and dead.sources & 6 == 6  # audit and proc both
            assert dead.argv == ("true", "--audit") and dead.exe == "/usr/bin/true"
            assert dead.uid == 1000
            assert dead.exit is not None
            if signal:
                assert (dead.exit.signal, dead.cause) == (9, "signal")
            else:
                assert (dead.exit.code, dead.cause) == (3, "exit")
            checked += 1
    assert checked == (60 if signal is None else 20)


def _renew(o: Observation, c: Child) -> Observation:
    table: dict[tuple[type[Observation], str], Observation] = {
        (type(x), x.source): x for x in (c.f_p, c.x_p, c.e_p, c.f_a, c.x_a, c.e_a) if x
    }
    return table[(type(o), o.source)]


async def test_died_event_lists_the_source_that_told_first_and_life_lists_both(
    tmp_path: Path,
) -> None:
    c = Child(free_pid())
    svc, events = await run(tmp_path, [c.f_p, c.e_p, c.f_a, c.exit_a])
    died = [e for e in events if e.type == "died"]
    assert len(died) == 1 and died[0].sources == 4  # the connector saw it first
    life = died[0].life
    assert life is not None
    dead = svc.registry.find(c.pid, life.start_ticks)
    assert dead is not None and dead.sources & 6 == 6


async def test_a_late_exit_of_a_pids_previous_holder_does_not_kill_the_new_one(
    tmp_path: Path,
) -> None:
    pid = free_pid()
    old = Child(pid)
    await asyncio.sleep(0.15)  # the pid is reused 15 ticks later (past SAME_LIFE and slack)
    new = Child(pid)
    script: list[Observation] = [old.f_p, old.e_p, new.f_p, old.exit_a]
    svc, events = await run(tmp_path, script)
    assert transitions(events, pid) == ["born", "died", "born"]
    assert svc.registry.alive[pid].born_at == new.born
    # ... and is recognised as the previous holder's death told again.
    first = events[1].life
    assert first is not None
    dead = svc.registry.find(pid, first.start_ticks)
    assert dead is not None and dead.sources & 6 == 6


async def test_exec_chains_are_counted_per_source(tmp_path: Path) -> None:
    c = Child(free_pid())
    x2_p = Exec("proc", c.pid, c.born + 0.002)
    x2_a = Exec("audit", c.pid, c.born + 0.002, exe="/usr/bin/env", argv=("env",))
    script: list[Observation] = [c.f_p, c.x_p, x2_p, c.x_a, x2_a]
    svc, events = await run(tmp_path, script)
    assert transitions(events, c.pid) == ["born", "exec", "exec"]
    life = svc.registry.alive[c.pid]
    assert life.exe == "/usr/bin/env" and life.argv == ("env",)  # audit's, of the last exec


async def test_an_exec_told_by_audit_first_is_not_read_again_from_proc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = count_image_reads(monkeypatch)
    a, b = Child(free_pid()), Child(free_pid(1))
    script: list[Observation] = [a.f_p, a.x_a, a.x_p, b.f_p, b.x_p, b.x_a]
    svc, events = await run(tmp_path, script)
    assert transitions(events, a.pid) == ["born", "exec"]
    assert transitions(events, b.pid) == ["born", "exec"]
    assert reads == [b.pid]  # the connector first: /proc asked once; audit first: never
    for c in (a, b):  # audit's fields, the exec's own, kept either way
        life = svc.registry.alive[c.pid]
        assert life.exe == "/usr/bin/true" and life.argv == ("true", "--audit")


async def test_audit_alone_still_works_with_its_fork_record_last(tmp_path: Path) -> None:
    c = Child(free_pid())
    script: list[Observation] = [c.x_a, c.exit_a, c.f_a]
    _svc, events = await run(tmp_path, script)
    assert transitions(events, c.pid) == ["born", "exec", "died"]
    life = events[-1].life
    assert life is not None and life.start_slack == DERIVED_SLACK and life.exit is not None
    assert life.exit.code == 3


async def test_proc_alone_derives_the_start_of_a_reaped_child(tmp_path: Path) -> None:
    c = Child(free_pid(), signal=9)
    svc, events = await run(tmp_path, c.proc())
    assert transitions(events, c.pid) == ["born", "exec", "died"]
    life = events[-1].life
    assert life is not None and life.start_slack == DERIVED_SLACK
    # A lookup accepts the derived start give or take its slack, never more.
    assert svc.registry.find(c.pid, life.start_ticks + DERIVED_SLACK) is not None
    assert svc.registry.find(c.pid, life.start_ticks - DERIVED_SLACK) is not None
    assert svc.registry.find(c.pid, life.start_ticks + DERIVED_SLACK + 1) is None


async def test_resync_death_is_enriched_not_repeated_by_a_late_exit(tmp_path: Path) -> None:
    c = Child(free_pid(), signal=9)
    svc = Service(make_config(state_dir=tmp_path, canary_interval=0))
    await svc.start()
    src = ScriptedSource("proc")
    await src.start(svc.tracker)
    src.push(c.f_p)
    svc.tracker.resync("test")  # the pid is not in /proc: dead, exit unknown
    src.push(c.e_p)
    died = [e for e in svc.journal.since(0) or [] if e.type == "died" and e.life and
            e.life.pid == c.pid]  # fmt: skip
    assert len(died) == 1 and died[0].life is not None and died[0].life.cause == "resync"
    life = svc.registry.find(c.pid, died[0].life.start_ticks)
    assert life is not None and life.exit is not None and life.exit.signal == 9
    await svc.stop()


async def test_gaps_are_journaled_at_once_and_repairs_are_spaced(tmp_path: Path) -> None:
    from app.sources.observations import Loss

    svc = Service(make_config(state_dir=tmp_path, canary_interval=0))
    await svc.start()
    try:
        sub = svc.journal.subscribe(lambda e: e.type in ("gap", "resync"), 100)
        t0 = time.monotonic()
        for _ in range(3):  # a burst of gaps: one repair
            svc.tracker.submit(Loss("proc", "enobufs", time.time()))
        await asyncio.sleep(0.05)
        assert [e.type for e in sub.take()] == ["gap", "gap", "gap", "resync"]
        svc.tracker.submit(Loss("proc", "enobufs", time.time()))
        assert [e.type for e in sub.take()] == ["gap"]  # told now, repaired later
        while not any(e.type == "resync" for e in sub.take()):
            await asyncio.sleep(0.02)
        assert time.monotonic() - t0 >= 0.45
    finally:
        await svc.stop()


async def test_a_fork_dated_before_the_alive_life_does_not_replace_it(tmp_path: Path) -> None:
    """Audit dates a child by its parent's syscall entry: a fork slowed under a storm dates it
    ticks early. Such a report is the same life (or an older holder's), never a rebirth that
    kills the life /proc shows (bench.storm saw one `pid_reused` death of a live process)."""
    hz = os.sysconf("SC_CLK_TCK")
    real_minus_boot = time.clock_gettime(time.CLOCK_REALTIME) - time.clock_gettime(
        time.CLOCK_BOOTTIME
    )
    child = subprocess.Popen(["sleep", "30"])
    try:
        st = procfs.read_stat(child.pid)
        gone = free_pid()
        now = time.time()
        script: list[Observation] = []
        for pid, ticks in ((child.pid, st.start_ticks), (gone, st.start_ticks)):
            early = (ticks - 12) / hz + real_minus_boot  # the parent's entry, 12 ticks before
            script += [
                Fork("proc", pid, os.getpid(), now, start_ticks=ticks),
                Fork("audit", pid, os.getpid(), early, audit_stamp=early, uid=0),
            ]
        svc, events = await run(tmp_path, script)
        # the sleep was in the start-up snapshot already: no event at all; the other is born
        assert transitions(events, child.pid) == [] and transitions(events, gone) == ["born"]
        for pid in (child.pid, gone):
            life = svc.registry.alive[pid]
            assert life.start_ticks == st.start_ticks and life.start_slack == 0
        assert svc.registry.alive[child.pid].sources & 6 == 6  # /proc showed it: the same life
        assert svc.tracker.counters["early_forks"] == 2
    finally:
        child.kill()
        child.wait()


async def test_a_parked_exec_waits_for_audits_fields_and_never_follows_the_death(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = count_image_reads(monkeypatch)
    svc = Service(make_config(state_dir=tmp_path, canary_interval=0))
    await svc.start()
    first = svc.journal.last_cursor
    proc, audit = ScriptedSource("proc"), ScriptedSource("audit")
    for src in (proc, audit):
        await src.start(svc.tracker)
    svc.tracker.park_execs_for("audit")
    told, dies, waits = Child(free_pid()), Child(free_pid(1)), Child(free_pid(2))
    for o in (told.f_p, told.x_p, dies.f_p, dies.x_p, waits.f_p, waits.x_p):
        proc.push(o)
    assert svc.tracker.counters["parked_execs"] == 3
    audit.push(told.x_a)  # audit's report of the first: journaled with its fields
    proc.push(dies.e_p)  # the second dies before audit tells its exec
    events = svc.journal.since(first) or []
    assert transitions(events, told.pid) == ["born", "exec"]
    assert transitions(events, dies.pid) == ["born", "exec", "died"]
    assert transitions(events, waits.pid) == ["born"]  # still waiting
    exec_ev = next(e for e in events if e.type == "exec" and e.life and e.life.pid == told.pid)
    assert exec_ev.life is not None and exec_ev.life.exe == "/usr/bin/true"
    assert exec_ev.sources == 6  # the connector told it first, audit gave its fields
    # Neither read /proc's image: the told had audit's fields, and the dying one's process
    # has ended (a zombie has no exe link and an empty cmdline: only its stat is read).
    assert reads == []
    audit.push(dies.x_a)  # audit's report of its exec, after the death: the life learns it
    died = next(e for e in events if e.type == "died" and e.life and e.life.pid == dies.pid)
    assert died.life is not None
    life = svc.registry.find(dies.pid, died.life.start_ticks)
    assert life is not None and life.exe == "/usr/bin/true" and not life.alive
    assert transitions(svc.journal.since(first) or [], dies.pid) == ["born", "exec", "died"]
    await asyncio.sleep(0.4)  # PARK passes: the third reads /proc and is journaled
    events = svc.journal.since(first) or []
    assert transitions(events, waits.pid) == ["born", "exec"]
    assert reads == [waits.pid]
    await svc.stop()


async def test_two_derived_starts_that_disagree_are_one_life_found_by_either(
    tmp_path: Path,
) -> None:
    """A child reaped before either report is read: audit dates it from its parent's syscall
    entry (here 5 ticks early, past its slack, as under heavy load), the connector from its
    own timestamp (exact). One life, whose slack grows to take both in: a lookup by the true
    start finds it, alive and dead (bench.storm saw 23 such lives missed in one run before)."""
    from app.sources.clockoffset import BOOT_MINUS_MONO, REAL_MINUS_BOOT

    hz = os.sysconf("SC_CLK_TCK")
    pid = free_pid()
    now_ticks = time.clock_gettime_ns(time.CLOCK_BOOTTIME) * hz // 1_000_000_000
    true = now_ticks - 10
    stamp = (true - 5) / hz + REAL_MINUS_BOOT.seconds() - 0.001  # dated 5 ticks early
    mono_ns = true * (1_000_000_000 // hz) + 5_000_000 - BOOT_MINUS_MONO()
    at = time.time() - 0.05
    script: list[Observation] = [
        Fork("audit", pid, 1, stamp, audit_stamp=stamp, uid=0),
        Fork("proc", pid, 1, at, mono_ns=mono_ns),
    ]
    svc, events = await run(tmp_path, script)
    assert transitions(events, pid) == ["born"]
    life = svc.registry.alive[pid]
    assert life.start_ticks == true - 5 and life.start_slack == 5  # its id as first sent
    assert svc.registry.find(pid, true) is life
    assert svc.tracker.counters["slack_widened"] == 1
    svc.tracker.submit(Exit("proc", pid, at + 0.01, 0, None, mono_ns=mono_ns + 1_000_000))
    dead = svc.registry.find(pid, true)
    assert dead is life and not life.alive
    assert svc.registry.find(pid, true + 1) is None  # past its slack: another life
    # The widened slack is on disk too: a restart (the pid is gone by then) finds the life
    # by its true start, dead while the daemon was down.
    again = Service(make_config(state_dir=tmp_path, canary_interval=0))
    await again.start()
    try:
        back = again.registry.find(pid, true)
        assert back is not None and back.start_slack == 5 and back.start_ticks == true - 5
    finally:
        await again.stop()


async def test_the_connector_is_read_before_each_audit_read(tmp_path: Path) -> None:
    """With both kernel sources the Service has audit read the connector's socket first
    (the order the kernel sends their reports in); with one of them, nothing is wired."""
    reads: list[str] = []

    class Audit(ScriptedSource):
        first: Any = None

    class Proc(ScriptedSource):
        def read_now(self) -> bool:
            reads.append("proc")
            return False

    audit, proc = Audit("audit"), Proc("proc")
    svc = Service(make_config(state_dir=tmp_path, canary_interval=0), sources=[audit, proc])
    await svc.start()
    try:
        assert audit.first is not None
        audit.first()
        assert reads == ["proc"]
    finally:
        await svc.stop()
    alone = Audit("audit")
    svc = Service(make_config(state_dir=tmp_path, canary_interval=0), sources=[alone])
    await svc.start()
    try:
        assert alone.first is None
    finally:
        await svc.stop()
