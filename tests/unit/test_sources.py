"""The sources' timing and health rules with fake clocks: no kernel, no sleeping. The sources
are built but never started; their handlers are fed what the kernel would give them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app import procfs
from app.core.config import Config
from app.netlink.audit_proto import AUDIT_SYSCALL, AuditStatus
from app.netlink.audit_records import Record
from app.netlink.cn_proc import ExitEvent, ForkEvent, decode
from app.sources.audit import RECOVER_AFTER, AuditSource
from app.sources.base import DEGRADED, FAILED, OK
from app.sources.observations import Exit, Fork, Health, Loss, Observation
from app.sources.proc import HZ, ProcConnectorSource

DATA = Path(__file__).parent.parent / "data"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Collect:
    def __init__(self) -> None:
        self.got: list[Observation] = []

    def submit(self, obs: Observation) -> None:
        self.got.append(obs)


@pytest.fixture
def audit() -> tuple[AuditSource, Clock, Clock, Collect]:
    wall, mono = Clock(1_000_000.0), Clock(50.0)
    src = AuditSource(Config().audit_settings(), wall=wall, mono=mono)
    sink = Collect()
    src._sink = sink  # what start() would set; nothing is opened
    return src, wall, mono, sink


def status(lost: int) -> AuditStatus:
    return AuditStatus(enabled=1, lost=lost)


def test_audit_recovers_after_quiet_period(
    audit: tuple[AuditSource, Clock, Clock, Collect],
) -> None:
    src, wall, mono, sink = audit
    src._check_status(status(lost=3), since=wall.now - 1)  # the kernel lost 3 records
    assert src.health().state == DEGRADED
    loss = [o for o in sink.got if isinstance(o, Loss)]
    assert [(x.reason, x.at, x.since) for x in loss] == [("kernel_lost", wall.now, wall.now - 1)]

    mono.now += RECOVER_AFTER - 1
    src._check_status(status(lost=3), since=wall.now)
    assert src.health().state == DEGRADED  # not yet: the quiet period is not over

    mono.now += 2
    wall.now += 42.0
    src._check_status(status(lost=3), since=wall.now)
    health = src.health()
    assert (health.state, health.since) == (OK, wall.now)
    assert isinstance(sink.got[-1], Health) and sink.got[-1].state == OK
    assert sink.got[-1].at == wall.now  # dated by the injected wall clock


def test_a_new_loss_restarts_the_quiet_period(
    audit: tuple[AuditSource, Clock, Clock, Collect],
) -> None:
    src, wall, mono, _ = audit
    src._check_status(status(lost=1), since=wall.now)
    mono.now += RECOVER_AFTER - 5
    src._check_status(status(lost=2), since=wall.now)  # lost again
    mono.now += 10  # RECOVER_AFTER + 5 after the first loss, 10 s after the second
    src._check_status(status(lost=2), since=wall.now)
    assert src.health().state == DEGRADED
    mono.now += RECOVER_AFTER
    src._check_status(status(lost=2), since=wall.now)
    assert src.health().state == OK
    assert src.health().counters["losses"] == 2


def test_proc_events_are_dated_by_the_monotonic_offset() -> None:
    """The connector stamps events with CLOCK_MONOTONIC; the source turns them into wall
    time with wall - mono as it is at the read (one offset per read of the socket)."""
    datagrams = [bytes.fromhex(x) for x in (DATA / "cn_proc.hex").read_text().split()]
    events = [(d, decode(d)[0]) for d in datagrams]
    fork = next(d for d, e in events if isinstance(e, ForkEvent))
    # a leader's non-zero exit: the process's death, told without looking at /proc
    died = next(
        d
        for d, e in events
        if isinstance(e, ExitEvent) and e.exit_code and e.process_pid == e.process_tgid
    )
    wall, mono = Clock(1_000_000.0), Clock(900.0)
    src = ProcConnectorSource(Config().proc_settings(), wall=wall, mono=mono)
    sink = Collect()
    src._sink = sink
    src._clocks_now()  # what each read does (_read)
    src._deliver(fork)
    mono.now += 1.0  # the wall clock steps by a minute between the two reads
    wall.now += 61.0
    src._clocks_now()
    src._deliver(died)
    f, x = sink.got
    assert isinstance(f, Fork) and isinstance(x, Exit)
    assert f.mono_ns is not None and x.mono_ns is not None
    assert f.at == pytest.approx(f.mono_ns / 1e9 + 1_000_000.0 - 900.0)
    assert x.at == pytest.approx(x.mono_ns / 1e9 + 1_000_060.0 - 900.0)


def vfork(child: int, stamp: float, serial: int) -> list[Record]:
    body = (
        b"arch=c000003e syscall=58 success=yes exit=%d a0=0 a1=0 a2=0 a3=0 items=0 ppid=1 "
        b"pid=100 auid=0 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) "
        b'ses=1 comm="sh" exe="/bin/sh" key="lifewatch"' % child
    )
    return [Record(AUDIT_SYSCALL, stamp, serial, body)]


def test_audit_forks_stamped_before_a_resync_wait_for_evidence(tmp_path: Path) -> None:
    """`Source.resynced(at)`: a fork record read late, stamped before the resync, whose child
    /proc no longer has, is not a birth on its own (its exit record may have been lost)."""
    sink = Collect()
    src = AuditSource(Config().audit_settings(), proc=tmp_path, wall=Clock(0.0), mono=Clock(0))
    src._sink = sink
    src.resynced(100.0)
    src.event_complete(vfork(4242, stamp=99.5, serial=7))  # child 4242 gone from (tmp) /proc
    assert sink.got == [] and src.lives.counters["stale_forks"] == 1
    src.event_complete(vfork(4243, stamp=100.5, serial=8))  # after the resync: a birth
    assert [(o.pid, o.ppid) for o in sink.got if isinstance(o, Fork)] == [(4243, 100)]
    assert len(sink.got) == 1


class Events:
    """Stands in for the connector decoder: each delivery yields the next scripted event."""

    def __init__(self) -> None:
        self.seq = 0
        self.next: list[ForkEvent | ExitEvent] = []

    def fork(self, pid: int, tgid: int) -> ForkEvent:
        self.seq += 1
        return ForkEvent(0, self.seq, 10**9, 1, 1, pid, tgid)

    def exit(self, pid: int, tgid: int, status: int) -> ExitEvent:
        self.seq += 1
        return ExitEvent(0, self.seq, 2 * 10**9, pid, tgid, status, 17, 1, 1)

    def decode(self, _: bytes) -> list[ForkEvent | ExitEvent]:
        out, self.next = self.next, []
        return out


def test_a_zero_exit_needs_proc_only_for_processes_that_may_have_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A leader's exit 0 ends the process unless other threads live on (de_thread, a leader's
    pthread_exit): /proc is asked, except for a process born under watch that made no thread,
    which every short life of a fork storm is. A loss forgets what was known."""
    events, asked = Events(), list[int]()
    monkeypatch.setattr("app.sources.proc.decode", events.decode)

    def running(pid: int, born_by: int | None = None) -> bool:
        asked.append(pid)
        assert born_by == 2 * HZ  # the exit's own moment, in ticks since boot
        return True

    monkeypatch.setattr("app.sources.proc.procfs.process_running", running)
    src = ProcConnectorSource(
        Config().proc_settings(), wall=Clock(1e6), mono=Clock(900.0), boot_offset_ns=lambda: 0
    )
    sink = Collect()
    src._sink = sink

    def deliver(*evs: ForkEvent | ExitEvent) -> None:
        for ev in evs:
            events.next = [ev]
            src._deliver(b"")

    deliver(events.fork(100, 100), events.exit(100, 100, 0))  # alone: dead, /proc not asked
    deliver(events.fork(200, 200), events.fork(201, 200), events.exit(200, 200, 0))
    assert asked == [200]  # it made a thread: the leader's exit may not end it
    deliver(events.exit(300, 300, 0))  # born before we listened: /proc decides
    deliver(events.fork(400, 400))
    src._overrun()  # a loss: a thread FORK of 400 may be among the missed events
    deliver(events.exit(400, 400, 0))
    assert asked == [200, 300, 400]
    exits = [o.pid for o in sink.got if isinstance(o, Exit)]
    assert exits == [100]  # the others still "run" (process_running said so)


def test_a_pid_reused_since_the_exit_is_not_the_process_still_running(tmp_path: Path) -> None:
    """A reader seconds behind asks /proc about a pid that a younger process holds by now:
    that holder started after the exit, so the exited process is not "still running"."""
    (tmp_path / "42").mkdir()
    fields = ["S", "1"] + ["0"] * 15 + ["1"] + ["0"] * 1 + ["500"] + ["0"] * 30
    (tmp_path / "42" / "stat").write_bytes(b"42 (sleep) " + " ".join(fields).encode())
    assert procfs.process_running(42, tmp_path)
    assert procfs.process_running(42, tmp_path, born_by=500)  # same tick: the same process
    assert not procfs.process_running(42, tmp_path, born_by=499)  # younger than the exit


def test_a_task_released_while_read_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """de_thread: a thread that execs takes its leader's pid, and the old leader is released
    at once. A read of /proc/<pid>/stat that found the old leader and finished after its
    release shows it as X with 0 threads (do_task_stat counts them only while it can lock the
    task's signal handlers): not the pid's state. The next read finds the new leader."""

    def line(comm: str, state: str, threads: str) -> bytes:
        fields = [state, "0"] + ["0"] * 15 + [threads] + ["0"] + ["500"] + ["0"] * 30
        return f"42 ({comm}) ".encode() + " ".join(fields).encode()

    released, execd, zombie = line("python3", "X", "0"), line("sh", "R", "1"), line("sh", "Z", "1")
    cases = (([released, execd], True), ([released, released, zombie], False),
             ([released] * procfs.RELEASED_READS, False), ([execd], True))  # fmt: skip
    for lines, running in cases:
        reads = iter(lines)

        def read_stat(pid: int, proc: Path, reads: Iterator[bytes] = reads) -> procfs.Stat:
            return procfs.parse_stat(next(reads))

        monkeypatch.setattr(procfs, "read_stat", read_stat)
        assert procfs.process_running(42) is running, lines
        assert next(reads, None) is None  # read no more than needed


async def test_a_datagram_that_cannot_be_handled_is_a_loss_and_the_batch_goes_on() -> None:
    """A bug downstream of the reader (here the sink raising on one fork) loses at most that
    datagram's event, says so as a loss (a gap, then a resync), and the rest of the batch
    read with it is still delivered: nothing is dropped silently."""
    import socket

    from app.netlink.batch import ProcBatchReader
    from app.sources.pacing import Pacer

    datagrams = [bytes.fromhex(x) for x in (DATA / "cn_proc.hex").read_text().split()]
    forks = [d for d in datagrams if isinstance(decode(d)[0], ForkEvent)][:3]
    assert len(forks) == 3

    class Flaky(Collect):
        raised = False

        def submit(self, obs: Observation) -> None:
            if isinstance(obs, Fork) and not self.raised:  # the first fork only
                self.raised = True
                raise RuntimeError("a bug")
            super().submit(obs)

    rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.setblocking(False)
    src = ProcConnectorSource(Config().proc_settings())
    sink = Flaky()
    src._sink = sink
    src._reader = ProcBatchReader(rx, 256)
    src._pacer = Pacer(rx.fileno(), src._on_readable, hold=0)
    try:
        for d in forks:
            tx.send(d)
        src._on_readable()
    finally:
        rx.close()
        tx.close()
    assert src.health().counters["delivery_errors"] == 1
    losses = [o for o in sink.got if isinstance(o, Loss) and o.reason == "internal_error"]
    assert len(losses) == 1 and losses[0].source == "proc"
    assert sum(isinstance(o, Fork) for o in sink.got) == 2  # the two after it


def test_forks_whose_exit_the_same_read_holds() -> None:
    """The connector's batch under a fork+exit storm holds most lives whole: a FORK whose
    process's (leader's) EXIT comes later in the same read is handled knowing it ended."""
    from app.sources.proc import ended_forks

    def fork(pid: int, tgid: int | None = None) -> ForkEvent:
        return ForkEvent(0, 0, 0, 1, 1, pid, pid if tgid is None else tgid)

    def exit_(pid: int, tgid: int | None = None) -> ExitEvent:
        return ExitEvent(0, 0, 0, pid, pid if tgid is None else tgid, 0, 17, 1, 1)

    items: list[Any] = [
        fork(10),  # 0: ends at 3
        fork(11),  # 1: still running (only a thread of it exits)
        fork(12, 11),  # 2: a thread
        exit_(10),
        exit_(12, 11),
        exit_(20),  # 5: an earlier holder of pid 20 ends...
        fork(20),  # 6: ...and the pid's next process is still running
        b"\x00" * 60,  # 7: bytes the compiled reader handed back
        fork(30),  # 8: ends at 9
        exit_(30),
        fork(40),  # 10: a thread (11) execs, the kernel kills the leader (12, status 0)
        fork(41, 40),  # and takes its pid: the process lives on
        exit_(40),
        fork(50),  # 13: its leader pthread_exits, its thread (14) runs on
        fork(51, 50),
        exit_(50),
    ]
    assert ended_forks(items) == {items[0], items[8]}
    assert ended_forks([]) == set()


def test_a_fork_known_to_have_ended_is_dated_without_reading_proc(tmp_path: Path) -> None:
    from app.core.dating import DERIVED_SLACK, start_of
    from app.sources.observations import Fork

    (tmp_path / "42").mkdir()
    fields = ["Z", "7"] + ["0"] * 15 + ["1"] + ["0"] + ["500"] + ["0"] * 30
    (tmp_path / "42" / "stat").write_bytes(b"42 (sleep) " + " ".join(fields).encode())
    est = (499, DERIVED_SLACK)
    # Its zombie is still there: read, the start is exact.
    assert start_of(Fork("proc", 42, 7, 0.0, mono_ns=1), est, tmp_path) == (500, 0, "sleep")
    # Told it ended with its fork: not read, dated from the stamp with its slack.
    ended = Fork("proc", 42, 7, 0.0, mono_ns=1, ended=True)
    assert start_of(ended, est, tmp_path) == (499, DERIVED_SLACK, None)


@pytest.mark.parametrize("native", [True, False])
def test_the_connector_tells_which_forks_ended_in_the_same_read(native: bool) -> None:
    """Recorded datagrams read in one batch: 9075's fork, exec and exit, then 9078's fork and
    exec. The compiled reader's events mark 9075 as ended; 9078 is still running. The pure
    path (no compiled module) hands back bytes and marks none: /proc is read as before."""
    import socket

    from app.netlink.batch import ProcBatchReader
    from app.sources.pacing import Pacer

    datagrams = [bytes.fromhex(x) for x in (DATA / "cn_proc.hex").read_text().split()]
    rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.setblocking(False)
    src = ProcConnectorSource(Config().proc_settings())
    sink = Collect()
    src._sink = sink
    src._reader = ProcBatchReader(rx, 256, native=native)
    src._pacer = Pacer(rx.fileno(), src._on_readable, hold=0)
    try:
        for i in (0, 1, 2, 9, 10):
            tx.send(datagrams[i])
        src._on_readable()
    finally:
        rx.close()
        tx.close()
    forks = {o.pid: o.ended for o in sink.got if isinstance(o, Fork)}
    assert forks == {9075: native, 9078: False}


def test_a_failed_connector_read_stops_its_reads_also_those_audit_asks_for() -> None:
    """After a read fails the connector's reader is FAILED and reads no more: audit's reader,
    which asks it to read first, must not bring it back to half a life."""
    import socket

    from app.netlink.batch import ProcBatchReader
    from app.sources.pacing import Pacer

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    src = ProcConnectorSource(Config().proc_settings())
    src._sink = Collect()
    src._reader = ProcBatchReader(a, 256)
    src._pacer = Pacer(a.fileno(), src._on_readable, hold=0)
    b.close()
    os.close(a.detach())  # the descriptor is gone under the reader: EBADF
    src._on_readable()
    assert src.health().state == FAILED
    src.read_now()
    src._on_readable()
    c = src.health().counters
    assert (c["wakeups"], c["reads_for_audit"]) == (1, 0)


def test_audit_reads_on_when_the_connector_read_before_it_fails(
    audit: tuple[AuditSource, Clock, Clock, Collect],
) -> None:
    """One source's trouble never stops the other's reading: audit's reader goes on to its
    own socket when the connector's read it asks for first raises."""
    import socket

    from app.netlink.batch import AuditBatchReader
    from app.sources.pacing import Pacer

    src, _, _, _ = audit
    rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.setblocking(False)
    src._reader = AuditBatchReader(rx, 1 << 14)
    src._pacer = Pacer(rx.fileno(), src._on_readable, hold=0)

    def broken() -> bool:
        raise MemoryError("the connector's read")

    src.first = broken
    try:
        tx.send(b"x" * 40)  # any datagram: audit reads it
        src._on_readable()
        src._on_readable()
    finally:
        rx.close()
        tx.close()
    c = src.health().counters
    assert c["connector_read_errors"] == 2 and c["datagrams"] == 1


def test_audit_reads_the_connector_again_while_it_says_so_at_most_three_times(
    audit: tuple[AuditSource, Clock, Clock, Collect],
) -> None:
    """Forks made while the connector's last read was handled are read too, before audit's
    reports of them (their confirmation needs the connector's report first)."""
    import socket

    from app.netlink.batch import AuditBatchReader
    from app.sources.pacing import Pacer

    src, _, _, _ = audit
    rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.setblocking(False)
    src._reader = AuditBatchReader(rx, 1 << 14)
    src._pacer = Pacer(rx.fileno(), src._on_readable, hold=0)
    answers: list[bool | Exception] = []
    calls: list[int] = []

    def connector() -> bool:
        calls.append(1)
        answer = answers.pop(0) if answers else False
        if isinstance(answer, Exception):
            raise answer
        return answer

    src.first = connector
    try:
        for said, reads in (([True, False, True], 2), ([True] * 5, 3), ([False], 1)):
            answers[:], calls[:] = said, []
            src._on_readable()
            assert len(calls) == reads, said
        answers[:], calls[:] = [True, OSError("the 2nd read"), True], []
        tx.send(b"x" * 40)  # audit's own datagram: still read after the connector's raised
        src._on_readable()
        assert len(calls) == 2
    finally:
        rx.close()
        tx.close()
    c = src.health().counters
    assert c["connector_read_errors"] == 1 and c["datagrams"] == 1
