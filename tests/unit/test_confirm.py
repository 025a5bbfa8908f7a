"""Audit's reports of forks and exits confirmed against the connector's (app/netlink/_batch.c,
"confirmations"): what the compiled readers match, what they leave to the full path, and
that a confirmed report leaves the tracker where the full path would."""

from __future__ import annotations

import random
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from app.core.service import Service
from app.netlink import _batch
from app.netlink.audit_proto import AUDIT_EOE, AUDIT_SYSCALL
from app.netlink.audit_records import (
    CONFIRMED_EXIT,
    CONFIRMED_FORK,
    Confirmed,
    Record,
    parse_datagram,
)
from app.netlink.batch import confirmations
from app.netlink.cn_proc import ExitEvent, ForkEvent, decode
from app.sources.audit_assembler import Assembler
from app.sources.audit_lives import UNUSED, LifeEvents
from app.sources.observations import Exec, Exit, Fork, Observation
from tests.helpers import make_config
from tests.unit.test_batch import PROC_RECORDED, datagram
from tests.unit.test_fusion import Child, free_pid

if TYPE_CHECKING:
    from app.netlink._batch import Confirmations

CLONE = 56
CONF_RING = 64  # _batch.c: confirmed serials whose EOE is remembered
STAMP = b"1795654632.816"
SYSCALL_TEXT = (
    b"audit(%s:%d): arch=c000003e syscall=%d %sa0=%s a1=0 a2=0 a3=7f2feac3be50 items=0 "
    b"ppid=1 pid=%d auid=4294967295 uid=%d gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 "
    b'tty=(none) ses=4294967295 comm="forker" exe="/usr/bin/forker" key="lifewatch"'
)


def fork_record(child: int, pid: int, uid: int = 1000, a0: bytes = b"1200011",
                nr: int = CLONE, success: bytes = b"yes", serial: int = 431) -> bytes:  # fmt: skip
    returned = b"success=%s exit=%d " % (success, child)
    return datagram(SYSCALL_TEXT % (STAMP, serial, nr, returned, a0, pid, uid))


def exit_record(pid: int, code: int, uid: int = 1000, serial: int = 534) -> bytes:
    return datagram(SYSCALL_TEXT % (STAMP, serial, 231, b"", b"%x" % code, pid, uid))


def recorded(kind: type) -> bytes:
    return next(d for d in PROC_RECORDED if isinstance(decode(d)[0], kind))


def connector_fork(parent: int, child: int, child_tgid: int | None = None) -> bytes:
    d = bytearray(recorded(ForkEvent))
    d[52:68] = struct.pack(
        "=4I", parent, parent, child, child if child_tgid is None else child_tgid
    )
    return bytes(d)


def connector_exit(pid: int, status: int, tgid: int | None = None) -> bytes:
    d = bytearray(recorded(ExitEvent))
    d[52:64] = struct.pack("=3I", pid, pid if tgid is None else tgid, status)
    return bytes(d)


def audit(data: bytes, table: Confirmations) -> list[Record | Confirmed | bytes]:
    return _batch.parse_audit(data, UNUSED, table)


def the_record(data: bytes) -> list[Record]:
    return parse_datagram(data, UNUSED)


def table() -> Confirmations:
    t = confirmations()
    assert t is not None, "the compiled module is built by `make test`"
    return t


def test_a_fork_the_connector_told_is_confirmed_once() -> None:
    t = table()
    assert _batch.parse_proc(connector_fork(100, 4_000_200), t) == decode(
        connector_fork(100, 4_000_200)
    )
    got = audit(fork_record(4_000_200, 100, uid=1000), t)
    stamp = the_record(fork_record(4_000_200, 100))[0].stamp
    assert got == [Confirmed(CONFIRMED_FORK, 4_000_200, 100, 1000, 0, stamp, 431)]
    assert type(got[0]) is Confirmed and type(got[0].stamp) is float
    # Used up: the same record again (or a copy) takes the full path.
    assert audit(fork_record(4_000_200, 100), t) == the_record(fork_record(4_000_200, 100))
    c = t.counters()
    assert (c["recorded_forks"], c["confirmed_forks"], c["unmatched"]) == (1, 1, 1)


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (fork_record(4_000_300, 101), "another parent"),
        (fork_record(4_000_300, 100, a0=b"10000"), "CLONE_THREAD"),
        (fork_record(4_000_300, 100, a0=b"8000"), "CLONE_PARENT"),
        (fork_record(4_000_300, 100, success=b"no"), "a failed call"),
        (fork_record(4_000_301, 100), "a child the connector did not tell"),
        (fork_record(4_000_300, 100, nr=59), "execve, not a fork"),
        (exit_record(4_000_300, 0), "an exit the connector did not tell"),
    ],
)
def test_what_is_not_confirmed_goes_the_full_path(record: bytes, why: str) -> None:
    t = table()
    _batch.parse_proc(connector_fork(100, 4_000_300), t)
    assert audit(record, t) == the_record(record), why
    assert all(type(r) is Record for r in audit(record, t))


def test_fork_vfork_and_clone3_are_confirmed_by_the_connector_word() -> None:
    t = table()
    for i, nr in enumerate((57, 58, 435)):  # fork, vfork, clone3: a0 is no flag word
        child = 4_000_400 + i
        _batch.parse_proc(connector_fork(100, child), t)
        assert [type(r) for r in audit(fork_record(child, 100, a0=b"7ffc93e84630", nr=nr), t)] == [
            Confirmed
        ]


def test_threads_and_unknown_exits_are_not_noted() -> None:
    t = table()
    _batch.parse_proc(connector_fork(100, 4_000_501, child_tgid=100), t)  # a thread
    assert audit(fork_record(4_000_501, 100, nr=435), t) == the_record(
        fork_record(4_000_501, 100, nr=435)
    )
    _batch.parse_proc(connector_exit(4_000_502, 0x300), t)  # no FORK noted for it
    assert type(audit(exit_record(4_000_502, 3), t)[0]) is Record
    c = t.counters()
    assert (c["recorded_forks"], c["recorded_exits"]) == (0, 0)


def test_an_exit_is_confirmed_only_with_the_same_status() -> None:
    t = table()
    _batch.parse_proc(connector_fork(100, 4_000_600), t)
    _batch.parse_proc(connector_exit(4_000_600, 0x300, tgid=4_000_601), t)  # a thread's
    assert type(audit(exit_record(4_000_600, 3), t)[0]) is Record
    _batch.parse_proc(connector_exit(4_000_600, 9), t)  # killed: exit_group(3) is not it
    assert type(audit(exit_record(4_000_600, 3), t)[0]) is Record
    _batch.parse_proc(connector_exit(4_000_600, 0x300), t)
    stamp = the_record(exit_record(4_000_600, 0x103))[0].stamp
    # a0 & 0xff is the status, as LifeEvents takes it.
    assert audit(exit_record(4_000_600, 0x103), t) == [
        Confirmed(CONFIRMED_EXIT, 4_000_600, 0, 1000, 3, stamp, 534)
    ]
    assert type(audit(exit_record(4_000_600, 3), t)[0]) is Record  # used up


def test_without_a_table_nothing_changes() -> None:
    for record in (fork_record(4_000_700, 100), exit_record(4_000_700, 3)):
        assert _batch.parse_audit(record, UNUSED) == the_record(record)
        assert _batch.parse_audit(record, UNUSED, None) == the_record(record)
    with pytest.raises(TypeError):
        _batch.parse_audit(fork_record(1, 1), UNUSED, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _batch.parse_proc(connector_fork(1, 2), "table")  # type: ignore[arg-type]


def test_confirmed_fields_are_what_the_full_path_makes() -> None:
    """The same records through LifeEvents: the Fork and Exit it makes carry the values the
    Confirmed does."""
    t = table()
    made: list[Observation] = []
    lives = LifeEvents(made.append, known=[100])
    child = 4_000_800
    _batch.parse_proc(connector_fork(100, child), t)
    _batch.parse_proc(connector_exit(child, 0x500), t)
    confirmed: list[Record | Confirmed | bytes] = []
    for data in (fork_record(child, 100, uid=4321), exit_record(child, 5, uid=4321)):
        confirmed += audit(data, t)
        lives.event(the_record(data))
    fork, exit = made
    assert isinstance(fork, Fork) and isinstance(exit, Exit)
    cf, ce = confirmed
    assert isinstance(cf, Confirmed) and isinstance(ce, Confirmed)
    assert (cf.pid, cf.ppid, cf.uid, cf.stamp) == (fork.pid, fork.ppid, fork.uid, fork.at)
    assert (ce.pid, ce.code, ce.stamp) == (exit.pid, exit.code, exit.at)


def test_hostile_records_with_a_table_parse_as_without() -> None:
    rng = random.Random(7)
    t = table()
    base = [fork_record(4_000_900 + i, 100) for i in range(4)] + [exit_record(4_000_900, 3)]
    for i in range(4):
        _batch.parse_proc(connector_fork(100, 4_000_900 + i), t)
    _batch.parse_proc(connector_exit(4_000_900, 0x300), t)
    for _ in range(3000):
        d = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(16, len(d))
            d[at] = rng.choice(b"0123456789abcdefxyz =-\n\0\xff")
        if rng.random() < 0.2:
            d = d[: rng.randrange(16, len(d))]
            d[0:4] = struct.pack("=I", len(d) - 16)
        got = audit(bytes(d), t)
        full = [r for r in got if type(r) is not Confirmed]
        want = _batch.parse_audit(bytes(d), UNUSED)
        if full:
            assert full == want
        else:  # confirmed: the record had a fork's or exit's shape and a noted pid
            assert len(got) == 1 and len(want) == 1 and type(want[0]) is Record
            assert want[0].type == AUDIT_SYSCALL


def test_a_pid_of_the_same_slot_or_a_threads_tid_replaces_the_entry() -> None:
    t = table()
    p = 4_001_000
    _batch.parse_proc(connector_fork(100, p), t)
    _batch.parse_proc(connector_fork(100, p + 16384), t)  # the same slot: the newer holds it
    assert type(audit(fork_record(p, 100), t)[0]) is Record
    assert type(audit(fork_record(p + 16384, 100), t)[0]) is Confirmed
    _batch.parse_proc(connector_fork(100, p + 1), t)
    _batch.parse_proc(connector_fork(100, p + 1, child_tgid=100), t)  # a thread took the pid
    assert type(audit(fork_record(p + 1, 100, nr=435), t)[0]) is Record


def test_a_cleared_table_confirms_nothing() -> None:
    t = table()
    _batch.parse_proc(connector_fork(100, 4_001_100), t)
    _batch.parse_proc(connector_exit(4_001_100, 0x300), t)
    t.clear()
    assert type(audit(fork_record(4_001_100, 100), t)[0]) is Record
    assert type(audit(exit_record(4_001_100, 3), t)[0]) is Record
    assert t.counters()["clears"] == 1
    with pytest.raises(TypeError):
        _batch.raw_batch(0, bytearray(64), 64, 1, t)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _batch.Confirmations(Confirmed, [[b"c000003e", b"56", 1]])  # type: ignore[list-item]


def eoe(serial: int) -> bytes:
    return datagram(b"audit(%s:%d): " % (STAMP, serial), AUDIT_EOE)


def test_the_eoe_of_a_confirmed_record_is_dropped_and_only_it() -> None:
    t = table()
    _batch.parse_proc(connector_fork(100, 4_001_200), t)
    assert _batch.parse_audit(eoe(431), UNUSED, t) == the_record(eoe(431))  # none confirmed
    (c,) = audit(fork_record(4_001_200, 100, serial=431), t)
    assert type(c) is Confirmed and c.serial == 431
    assert _batch.parse_audit(eoe(432), UNUSED, t) == the_record(eoe(432))  # another event
    assert _batch.parse_audit(eoe(431), UNUSED, t) == []  # its end: dropped
    assert _batch.parse_audit(eoe(431), UNUSED, t) == the_record(eoe(431))  # once only
    assert t.counters()["confirmed_eoes"] == 1


def test_only_the_eoe_of_a_confirmed_event_is_dropped() -> None:
    t = table()
    for i in range(CONF_RING + 1):  # more in flight than the reader remembers
        _batch.parse_proc(connector_fork(100, 4_001_300 + i), t)
        assert type(audit(fork_record(4_001_300 + i, 100, serial=1000 + i), t)[0]) is Confirmed
    assert _batch.parse_audit(eoe(1000), UNUSED, t) == the_record(eoe(1000))  # forgotten
    assert _batch.parse_audit(eoe(1001), UNUSED, t) == []
    body = datagram(b"audit(%s:%d): x=1" % (STAMP, 1002), AUDIT_EOE)
    assert _batch.parse_audit(body, UNUSED, t) == the_record(body)  # an EOE has no body
    other = datagram(b"audit(1795654632.817:%d): " % 1003, AUDIT_EOE)
    assert _batch.parse_audit(other, UNUSED, t) == the_record(other)  # another stamp
    t.clear()  # the serials were counted already: their EOEs are still dropped
    assert _batch.parse_audit(eoe(1003), UNUSED, t) == []
    for junk in (b"audit(", b"audit(1.2:", b"xx", b"audit(9" * 20, b"\xff" * 30):
        d = datagram(junk, AUDIT_EOE)
        assert _batch.parse_audit(d, UNUSED, t) == _batch.parse_audit(d, UNUSED)


def test_a_confirmed_serial_completes_a_group_already_open() -> None:
    """Records logged during the syscall (an AVC, a SECCOMP) come before its SYSCALL record:
    the confirmed event's serial completes their group as its EOE would have."""
    done: list[list[Record]] = []

    class Sink:
        def event_complete(self, records: list[Record]) -> None:
            done.append(records)

        def events_lost(self, first_serial: int, count: int) -> None:
            raise AssertionError("no loss")

    asm = Assembler(Sink(), clock=lambda: 0.0)
    avc = Record(1400, 1.0, 50, b"avc: denied")
    asm.push(avc)
    asm.seen(50)
    assert done == [[avc]] and asm.pending == 0 and asm.counters["late"] == 0


def test_the_serial_of_a_confirmed_event_keeps_the_serials_whole() -> None:
    """The SYSCALL record comes as a Confirmed carrying its serial, its EOE not at all: the
    assembler counts the serial from the Confirmed: no hole, no gap, nothing late."""
    lost: list[tuple[int, int]] = []

    class Sink:
        def event_complete(self, records: list[Record]) -> None:
            pass

        def events_lost(self, first_serial: int, count: int) -> None:
            lost.append((first_serial, count))

    now = [0.0]
    asm = Assembler(Sink(), clock=lambda: now[0])
    for serial in range(100, 110):
        if serial % 2:
            asm.seen(serial)  # a confirmed event
        else:
            asm.push(Record(AUDIT_SYSCALL, 1.0, serial, b"arch=c000003e syscall=56"))
            asm.push(Record(AUDIT_EOE, 1.0, serial, b""))
    now[0] = 10.0
    asm.flush()
    assert lost == [] and asm.holes == 0 and asm.counters["late"] == 0
    assert asm.counters["records"] == 15
    asm.push(Record(AUDIT_EOE, 1.0, 111, b""))  # 110 never came: a hole, then a gap
    now[0] = 20.0
    asm.flush()
    assert lost == [(110, 1)]


# -- what the daemon does with one ------------------------------------------------------------


def fork_of(c: Child) -> Confirmed:
    return Confirmed(CONFIRMED_FORK, c.pid, 1, 1000, 0, c.born, 1)


def exit_of(c: Child) -> Confirmed:
    return Confirmed(CONFIRMED_EXIT, c.pid, 0, 1000, 3, c.died, 2)


async def tracked(tmp_path: Path, script: list[Observation]) -> Service:
    svc = Service(make_config(state_dir=tmp_path, canary_interval=0))
    await svc.start()
    for o in script:
        svc.tracker.submit(o)
    return svc


async def test_a_confirmed_life_ends_as_the_full_path_leaves_it(tmp_path: Path) -> None:
    a, b = Child(free_pid()), Child(free_pid(1))
    full = await tracked(tmp_path / "full", [a.f_p, a.e_p, a.f_a, a.exit_a])
    quick = await tracked(tmp_path / "quick", [b.f_p, b.e_p, fork_of(b), exit_of(b)])
    try:
        for svc, c in ((full, a), (quick, b)):
            dead = svc.tracker._recent_dead[c.pid]
            assert dead.sources & 6 == 6 and dead.uid == 1000
            assert dead.exit is not None and dead.exit.code == 3 and dead.cause == "exit"
            assert c.pid not in svc.registry.alive
        assert quick.tracker.counters["confirmed"] == 2
        assert full.tracker.counters["confirmed"] == 0
        assert quick.tracker.counters["duplicates"] == full.tracker.counters["duplicates"] == 2
    finally:
        await full.stop()
        await quick.stop()


async def test_a_confirmed_exit_of_a_life_still_alive_is_its_death(tmp_path: Path) -> None:
    """The connector's EXIT was not the process's end (a leader gone before its threads):
    audit's exit_group is the death, confirmed or not."""
    c = Child(free_pid())
    svc = await tracked(tmp_path, [c.f_p, exit_of(c)])
    try:
        assert c.pid not in svc.registry.alive
        dead = svc.tracker._recent_dead[c.pid]
        assert dead.exit is not None and dead.exit.code == 3 and dead.sources & 2
        assert svc.tracker.counters["confirmed"] == 0
    finally:
        await svc.stop()


async def test_a_confirmed_fork_of_an_unknown_life_is_a_birth(tmp_path: Path) -> None:
    c = Child(free_pid())
    old = Child(free_pid(1))
    far = Confirmed(CONFIRMED_FORK, old.pid, 1, 1000, 0, old.born + 30, 3)  # 30 s from its birth
    svc = await tracked(tmp_path, [fork_of(c), old.f_p, far])
    try:
        assert c.pid in svc.registry.alive and svc.registry.alive[c.pid].sources & 2
        assert svc.tracker.counters["confirmed"] == 0
    finally:
        await svc.stop()


def test_a_confirmed_fork_releases_what_waited_for_it() -> None:
    made: list[Observation] = []
    lives = LifeEvents(made.append, hold=60)
    child = free_pid()
    x = Exec("audit", child, time.time(), exe="/bin/true", argv=("true",))
    lives._deliver(child, x)  # the child's exec, read before its parent's clone record
    assert made == []
    c = Confirmed(CONFIRMED_FORK, child, 100, 0, 0, time.time(), 4)
    lives.confirmed(c)
    assert made == [c, x]
    e = Confirmed(CONFIRMED_EXIT, child, 0, 0, 0, time.time(), 5)
    lives.confirmed(e)
    assert made[-1] == e and child not in lives._known
    assert (lives.counters["forks"], lives.counters["exits"]) == (1, 1)


def test_a_confirmed_fork_read_after_a_resync_waits_for_evidence() -> None:
    """As LifeEvents._fork: a fork stamped before the last resync, its child gone, is born
    only with the child's own exec or exit as evidence."""
    made: list[Observation] = []
    lives = LifeEvents(made.append)
    lives.stale_before = time.time()
    child = free_pid()
    lives.confirmed(Confirmed(CONFIRMED_FORK, child, 100, 0, 0, lives.stale_before - 5, 6))
    assert made == [] and lives.counters["stale_forks"] == 1


async def test_a_confirmed_fork_widens_a_derived_start_as_the_full_path(tmp_path: Path) -> None:
    """Both starts derived (the connector's of a fork read with its exit, audit's from its
    stamp) five ticks apart: the slack grows the same way on either path."""
    slacks = []
    for quick in (False, True):
        c = Child(free_pid(int(quick)))
        f_p = Fork("proc", c.pid, 1, c.born, mono_ns=c.f_p.mono_ns, ended=True)
        at = c.born - 0.05  # audit's stamp five ticks before the connector's date
        f_a: Observation = (
            Confirmed(CONFIRMED_FORK, c.pid, 1, 1000, 0, at, 7)
            if quick
            else Fork("audit", c.pid, 1, at, audit_stamp=at, uid=1000)
        )
        svc = await tracked(tmp_path / str(quick), [f_p, f_a])
        try:
            life = svc.registry.alive[c.pid]
            assert life.sources & 6 == 6 and life.uid == 1000
            slacks.append((life.start_slack, svc.tracker.counters["slack_widened"]))
            assert svc.tracker.counters["confirmed"] == int(quick)
        finally:
            await svc.stop()
    assert slacks[0] == slacks[1] and slacks[0][0] > 3 and slacks[0][1] == 1, slacks


async def test_a_confirmed_exit_of_a_life_found_gone_takes_the_full_path(
    tmp_path: Path,
) -> None:
    c = Child(free_pid())
    svc = await tracked(tmp_path, [c.f_p])
    try:
        life = svc.registry.alive[c.pid]
        svc.tracker.vanished(life, c.died + 0.01, 4)
        svc.tracker.submit(exit_of(c))
        assert svc.tracker.counters["vanished_reported"] == 1
        assert svc.tracker.counters["confirmed"] == 0
        assert life.exit is not None and life.exit.code == 3
    finally:
        await svc.stop()


def test_no_table_without_the_compiled_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """LIFEWATCH_NATIVE=0 (or no compiled module): the pure-Python readers, no table, and
    audit's reports take the full path."""
    monkeypatch.setenv("LIFEWATCH_NATIVE", "0")
    assert confirmations() is None
    monkeypatch.setenv("LIFEWATCH_NATIVE", "1")
    assert confirmations() is not None
