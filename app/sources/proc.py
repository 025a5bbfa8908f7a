"""The proc connector as an event source: FORK, EXEC and EXIT of every process, on the event loop.

One raw NETLINK_CONNECTOR socket joined to CN_IDX_PROC, read with `loop.add_reader` (pyroute2's
`ProcEventSocket` is synchronous). Threads are dropped here: a FORK whose child_pid differs from
child_tgid is a new thread, an EXIT whose process_pid differs from process_tgid is a thread's.
Loss shows three ways: ENOBUFS on the socket (our queue overflowed), a hole in a CPU's
sequence numbers (the kernel dropped a message, e.g. an skb allocation failure under
GFP_NOWAIT), and the canary (app/core/canary.py) for everything else.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app import procfs
from app.netlink.batch import ProcBatchReader
from app.netlink.cn_proc import (
    CN_IDX_PROC,
    NETLINK_CONNECTOR,
    PROC_CN_MCAST_IGNORE,
    PROC_CN_MCAST_LISTEN,
    Ack,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    ProcEvent,
    control_message,
    decode,
)
from app.netlink.socket import open_netlink, rcvbuf_of
from app.sources.base import FAILED, OK, STOPPED, Sink, SourceHealth
from app.sources.clockoffset import REAL_MINUS_MONO
from app.sources.observations import (
    Exec,
    Exit,
    Fork,
    Health,
    Loss,
    boot_minus_mono_ns,
    wait_status,
)
from app.sources.pacing import Pacer, hold_for, pacer_counters
from app.sources.privilege import MissingCapability

if TYPE_CHECKING:
    from app.netlink._batch import Confirmations

log = logging.getLogger(__name__)

DEFERRED_MAX = 4096
HZ = os.sysconf("SC_CLK_TCK")  # the unit of /proc's start ticks
SOLO_MAX = 65536  # processes remembered as born under watch with no thread (~60 B each)
READ_BUDGET = 512  # datagrams per wakeup before yielding to the rest of the loop
DATAGRAM_MAX = 256  # bytes read of a datagram: a proc event is 76 with its headers
# Datagrams within pacing.SOON (2 ms) that make a storm (app/sources/pacing.py): one event
# per datagram, so fewer than audit's; a process started and ended at rest is 2 or 3 (FORK,
# EXEC, EXIT).
PACE_AT = 8
ACK_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class ProcSettings:
    """What the proc connector source needs to know (built by `Config.proc_settings`)."""

    rcvbuf: int  # socket receive buffer, bytes


class ProcConnectorError(RuntimeError):
    """The proc connector could not be joined (no CAP_NET_ADMIN, no CONFIG_PROC_EVENTS...)."""


class ProcConnectorSource:
    name = "proc"

    def __init__(
        self,
        settings: ProcSettings,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        tap: Callable[[bytes], None] | None = None,
        boot_offset_ns: Callable[[], int] = boot_minus_mono_ns,
    ) -> None:
        self.rcvbuf = settings.rcvbuf
        # `mono` must read CLOCK_MONOTONIC: the connector's timestamps do (design.md fact 8).
        self._wall, self._mono = wall, mono
        # wall - mono, to date events by the kernel's own timestamps: with the real clocks, the
        # cached, preemption-proof reading (app/sources/clockoffset.py); with a test's, theirs.
        real = wall is time.time and mono is time.monotonic
        self._wall_minus_mono: Callable[[], float] = (
            REAL_MINUS_MONO.seconds if real else (lambda: wall() - mono())
        )
        self._boot_minus_mono_ns = boot_offset_ns
        self.tap = tap  # sees every raw datagram: records fixtures for the decoder tests
        self._sock: socket.socket | None = None
        self._reader: ProcBatchReader | None = None
        # Where the compiled reader notes each process FORK and leader EXIT for audit's
        # reader to confirm its own reports against (the Service shares one table).
        self.confirm: Confirmations | None = None
        self._pacer: Pacer | None = None
        self._sink: Sink | None = None
        self._listening = False
        self._last_seq: dict[int, int] = {}
        self._deferred: dict[int, None] = {}  # tgids whose leader exited before the group
        # tgids whose FORK we read and that made no thread since: their leader's exit is the
        # process's. Forgotten at any loss (a missed thread FORK would make it wrong).
        self._solo: dict[int, bool] = {}
        self._last_at = 0.0
        # The FORKs of the batch being delivered whose exit it holds too (`ended_forks`).
        self._ended: AbstractSet[ForkEvent] = frozenset()
        self._read_wall = 0.0  # the clocks at the last read (_clocks_now)
        self._read_offset = 0.0
        self._health = SourceHealth()
        self.counters: dict[str, int] = dict.fromkeys(
            ("datagrams", "forks", "threads", "execs", "exits", "thread_exits", "other",
             "enobufs", "seq_gaps", "seq_missing", "leader_exits_deferred", "full_reads",
             "wakeups", "reads_for_audit", "forks_ended"),
            0,
        )  # fmt: skip

    # -- life cycle ------------------------------------------------------------------------
    async def start(self, sink: Sink) -> None:
        self._sink = sink
        sock = open_netlink(NETLINK_CONNECTOR, CN_IDX_PROC, self.rcvbuf)
        try:
            self._sock = sock
            await self._listen(sock)
        except BaseException:
            self._sock = None
            sock.close()
            raise
        sock.setblocking(False)
        self._reader = ProcBatchReader(sock, DATAGRAM_MAX)
        self._pacer = Pacer(
            sock.fileno(), self._on_readable, at_least=PACE_AT, hold=hold_for(rcvbuf_of(sock))
        )
        self._pacer.start()
        self._last_at = self._wall()
        self._set_health(OK, "listening")
        self._health.info["rcvbuf"] = str(rcvbuf_of(sock))
        self._health.info["reader"] = self._reader.kind

    async def _listen(self, sock: socket.socket) -> None:
        """Send PROC_CN_MCAST_LISTEN and wait for the kernel's ack; events that arrive before
        it are delivered. Acks are multicast to every listener: ours is the one whose `ack`
        is the token we sent plus one (cn_proc.c cn_proc_ack)."""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        token = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        await loop.sock_sendall(sock, control_message(PROC_CN_MCAST_LISTEN, token))
        deadline = loop.time() + ACK_TIMEOUT
        while not self._listening:
            left = deadline - loop.time()
            if left <= 0:
                raise ProcConnectorError("no answer from the proc connector to LISTEN")
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 4096), left)
            except TimeoutError:
                continue
            for ev in decode(data):
                if isinstance(ev, Ack) and ev.ack == token + 1:
                    if ev.err == errno.EPERM:  # kernels before 6.6 (cn_proc_mcast_ctl)
                        raise MissingCapability("CAP_NET_ADMIN", "join the proc connector")
                    if ev.err:
                        raise ProcConnectorError(
                            f"proc connector refused LISTEN: {os.strerror(ev.err)}"
                        )
                    self._listening = True
            self._clocks_now()
            self._deliver(data)

    async def stop(self) -> None:
        sock, self._sock = self._sock, None
        self._reader = None
        self._forget_noted()
        if sock is None:
            return
        if self._pacer is not None:
            self._pacer.stop()
        if self._listening:
            # The kernel counts listeners globally; each LISTEN needs its IGNORE.
            try:
                sock.send(control_message(PROC_CN_MCAST_IGNORE))
            except OSError as e:
                log.warning("proc connector IGNORE failed: %s", e)
            self._listening = False
        sock.close()
        self._set_health(STOPPED, "stopped")

    def resynced(self, at: float) -> None:
        """Nothing to do: the kernel queues each event on our socket as it happens, so a
        fork read after a resync is followed by its process's exit, never left without it
        (audit's records, unlike these, can be retried and lost one by one)."""

    def health(self) -> SourceHealth:
        self._health.counters = dict(self.counters)
        self._health.counters.update(pacer_counters(self._pacer))
        if self._sock is not None:
            queued = procfs.netlink_queued(self._sock.fileno())
            if queued is not None:
                self._health.counters["socket_queue_bytes"] = queued
        return self._health

    def _set_health(self, state: str, reason: str) -> None:
        changed = state != self._health.state
        at = self._wall()
        self._health.state, self._health.reason, self._health.since = state, reason, at
        if changed and self._sink is not None and state != STOPPED:
            self._sink.submit(Health(self.name, state, reason, at))

    # -- the hot path ----------------------------------------------------------------------
    def read_now(self) -> bool:
        """Read what the socket holds now, whatever the pacing: audit's reader asks before
        each of its reads (counted in `reads_for_audit`, not `wakeups`). True when it is
        worth asking again: it read something and did not stop at its budget (when it did,
        this source's own pacer reads the rest, not audit's reader)."""
        if self._reader is None:
            return False
        self.counters["reads_for_audit"] += 1
        return 0 < self._read_all() < READ_BUDGET

    def _on_readable(self) -> None:
        if self._reader is not None:
            self.counters["wakeups"] += 1
            self._read_all()

    def _read_all(self) -> int:
        pacer = self._pacer
        if pacer is None:
            return 0
        n, status = pacer.drain(self._read, READ_BUDGET, self._deliver, self._overrun,
                                self._delivery_failed)  # fmt: skip
        if status > 0:
            log.error("proc connector read failed: %s", os.strerror(status))
            self._set_health(FAILED, f"read failed: {os.strerror(status)}")
            self._reader = None  # read no more (the pacer stopped watching): nor for audit
            self._forget_noted()
        elif n >= READ_BUDGET:  # the budget ran out with datagrams left: the reader is behind
            self.counters["full_reads"] += 1
        return n

    def _read(self, budget: int) -> tuple[list[ProcEvent | bytes], int, int]:
        assert self._reader is not None
        # A tap records the kernel's bytes (fixtures for the decoder tests): it gets them.
        items, n, status = self._reader.events(budget, self.tap is None, self.confirm)
        self._ended = ended_forks(items)
        # Forks dated without reading /proc: their exit came in the same read (dating.py).
        self.counters["forks_ended"] += len(self._ended)
        self._clocks_now()
        return items, n, status

    def _clocks_now(self) -> None:
        """The wall clock and its offset from the kernel's monotonic one, once per read
        rather than per datagram (two calls less per datagram; a batch is read within a
        millisecond, the offset moves only when the clock is set)."""
        self._read_wall = self._wall()
        self._read_offset = self._wall_minus_mono()

    def _forget_noted(self) -> None:
        """After a loss, or when this reader stops: what the table of forks and exits holds
        may no longer be the connector's last word on a pid (a reused pid's FORK lost), so
        audit's reports are not confirmed against it."""
        if self.confirm is not None:
            self.confirm.clear()

    def _delivery_failed(self) -> None:
        """A datagram read could not be handled (a bug, logged by the pacer): its event may
        be missing, so it is a loss like any other: a gap, then a resync."""
        assert self._sink is not None
        self._forget_noted()
        self._sink.submit(Loss(self.name, "internal_error", self._wall(),
                               "a datagram could not be handled: see the daemon's log",
                               self._last_at))  # fmt: skip

    def _overrun(self) -> None:
        """Our receive queue overflowed: some events are gone. Sequence holes after this are
        part of the same loss, so the per-CPU baselines restart."""
        now = self._wall()
        self.counters["enobufs"] += 1
        self._last_seq.clear()
        self._solo.clear()
        self._forget_noted()
        assert self._sink is not None
        self._sink.submit(
            Loss(self.name, "enobufs", now, "proc connector socket overrun", self._last_at)
        )

    def _deliver(self, item: ProcEvent | bytes) -> None:
        """One datagram: as bytes, or as the event the compiled reader decoded from it."""
        if isinstance(item, bytes):
            if self.tap is not None:
                self.tap(item)
            events: list[ProcEvent] | tuple[ProcEvent] = decode(item)
        else:
            events = (item,)
        sink = self._sink
        assert sink is not None
        c = self.counters
        c["datagrams"] += 1
        # Kernel timestamps are CLOCK_MONOTONIC; the offset turns them into wall-clock times
        # of the event itself rather than of our read.
        wall, offset = self._read_wall, self._read_offset
        for ev in events:
            self._check_seq(ev.cpu, ev.seq)  # a loss shows before the event that revealed it
            at = ev.timestamp_ns / 1e9 + offset
            # Deaths first: they are what clients wait for (bench/death_latency.py).
            if type(ev) is ExitEvent:
                status = self._group_exit(ev)
                if status is not None:
                    c["exits"] += 1
                    code, sig, core = wait_status(status)
                    sink.submit(Exit(self.name, ev.process_tgid, at, code, sig, core,
                                     mono_ns=ev.timestamp_ns))  # fmt: skip
            elif type(ev) is ForkEvent:
                if ev.child_pid != ev.child_tgid:
                    c["threads"] += 1
                    self._solo.pop(ev.child_tgid, None)
                else:
                    c["forks"] += 1
                    self._solo[ev.child_pid] = True
                    if len(self._solo) > SOLO_MAX:
                        del self._solo[next(iter(self._solo))]
                    sink.submit(Fork(self.name, ev.child_pid, ev.parent_tgid, at,
                                     mono_ns=ev.timestamp_ns,
                                     ended=ev in self._ended))  # fmt: skip
            elif type(ev) is ExecEvent:
                c["execs"] += 1
                sink.submit(Exec(self.name, ev.process_tgid, at))
            elif type(ev) is not Ack:
                c["other"] += 1
        self._last_at = wall

    def _group_exit(self, ev: ExitEvent) -> int | None:
        """The wait status if this EXIT ends the process, else None.

        The connector reports each task's exit. The leader's (process_pid == process_tgid)
        usually ends the process, but not when the leader leaves first: a non-leader thread
        that calls execve has the kernel kill the leader and take its pid (de_thread: an
        EXIT with status 0, then EXEC; Go programs exec from any thread), and a leader may
        pthread_exit while its threads run. Both give status 0, so only a 0 exit is checked
        against /proc (a signal or a non-zero exit_group ends every thread): a pid still
        running, or a zombie leader still counting live threads, is not dead yet. Its end is
        then the later leader EXIT (exec case) or its last thread's EXIT (checked again).
        """
        tgid = ev.process_tgid
        leader = ev.process_pid == tgid
        if not leader and tgid not in self._deferred:
            self.counters["thread_exits"] += 1
            return None
        # Born under watch and never gained a thread: no other task can outlive the leader,
        # so its exit ends the process and /proc need not be asked (every 0 exit would read
        # it: docs/performance.md).
        solo = leader and self._solo.pop(tgid, False)
        if leader and (ev.exit_code or solo) and tgid not in self._deferred:
            return ev.exit_code  # the usual death: a leader killed, exiting, or alone
        if ev.exit_code == 0 or not leader:
            alive = procfs.process_running(tgid, born_by=self._ticks_at(ev.timestamp_ns))
            if alive:
                self._deferred[tgid] = None
                while len(self._deferred) > DEFERRED_MAX:
                    del self._deferred[next(iter(self._deferred))]
                self.counters["leader_exits_deferred"] += 1
                return None
        self._deferred.pop(tgid, None)
        # The last thread's exit_code is the group's when it ended the group (exit_group).
        return ev.exit_code

    def _ticks_at(self, mono_ns: int) -> int:
        """Clock ticks since boot at a kernel CLOCK_MONOTONIC stamp (as /proc's start ticks
        count them: CLOCK_BOOTTIME). Off the hot path: only 0 exits of possibly threaded
        processes ask."""
        return (mono_ns + self._boot_minus_mono_ns()) * HZ // 1_000_000_000

    def _check_seq(self, cpu: int, seq: int) -> None:
        """Each CPU numbers its proc events (cn_proc.c send_msg: a per-CPU counter) and, with no
        event filter, every one of them is sent to us: a hole is a message the kernel dropped."""
        last = self._last_seq.get(cpu)
        self._last_seq[cpu] = seq
        if last is None:
            return
        missing = (seq - last - 1) & 0xFFFFFFFF
        if missing == 0 or missing >= 1 << 31:  # in order, or an old one (reordered)
            return
        self.counters["seq_gaps"] += 1
        self.counters["seq_missing"] += missing
        self._solo.clear()
        self._forget_noted()
        assert self._sink is not None
        detail = f"cpu {cpu}: {missing} proc event(s) missing"
        self._sink.submit(Loss(self.name, "seq_gap", self._wall(), detail, self._last_at))


def ended_forks(items: list[ProcEvent | bytes]) -> set[ForkEvent]:
    """The process FORKs among one read's `items` whose leader's EXIT comes later
    in them, with no thread made in between: the process has ended by the time the fork is
    handled (a zombie at best, most often reaped), so the tracker dates it from the fork's
    stamp without reading /proc (app/core/dating.py). Under a fork+exit storm a batch holds
    most lives whole."""
    exits: set[int] = set()
    out: set[ForkEvent] = set()
    for ev in reversed(items):
        if type(ev) is ExitEvent:
            if ev.process_pid == ev.process_tgid:
                exits.add(ev.process_tgid)
        elif type(ev) is ForkEvent and ev.child_tgid in exits:
            if ev.child_pid == ev.child_tgid:
                out.add(ev)
            else:
                # A thread made before its leader's exit: that exit may not end the process
                # (a thread that execs takes the pid, a leader may pthread_exit first). A
                # thread of a process forked in this batch was made after that fork, so it
                # is always seen here, between the two.
                exits.discard(ev.child_tgid)
    return out
