"""The audit source: lifewatch reads the kernel's audit stream itself, with its own rules.

Modes (docs/audit.md): `unicast` registers this process as the audit daemon (lossless: the
kernel queues and, when full, throttles the tasks that make records); `multicast` listens on
the read-only log group next to a running auditd (lossy under overload: an overrun shows as
ENOBUFS). `auto` picks unicast when no live daemon holds the audit pid, else multicast.

Loss is detected three ways, because each alone misses some (design.md fact 7): serial gaps
(assembler), the kernel's `lost` counter (AUDIT_GET every `status_interval`), and
ENOBUFS on our socket. Each produces a `Loss`, which makes the tracker journal a `gap` and
resync the registry against /proc.

Kernel state is shared: what this run changes (rules, `enabled`, backlog, the audit pid) is
made and undone by `audit_rules.KernelChanges`; this module is the reader and loss detection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from app import procfs
from app.argv import ARGV_MAX
from app.netlink.audit_control import AuditControl
from app.netlink.audit_proto import ARCH_NAMES, AuditStatus
from app.netlink.audit_reader import RECV_SIZE, RecordSocket
from app.netlink.audit_records import Confirmed, Record, parse_datagram
from app.netlink.batch import AuditBatchReader
from app.sources.audit_assembler import Assembler
from app.sources.audit_lives import UNUSED, LifeEvents
from app.sources.audit_rules import KernelChanges, pid_alive
from app.sources.base import DEGRADED, FAILED, OK, STOPPED, Sink, SourceHealth
from app.sources.observations import Health, Loss, Observation
from app.sources.pacing import Pacer, hold_for, pacer_counters
from app.sources.privilege import MissingCapability, refused

if TYPE_CHECKING:
    from app.netlink._batch import Confirmations

log = logging.getLogger(__name__)

# Datagrams read per wakeup before yielding to the loop, where the connector's reader (the
# deaths) waits its turn. 1024 let one wakeup run for tens of ms under a storm: a victim's
# death then reached a `life=` client in p99 68-128 ms; 256: 17-25 ms, with the storm's
# lives/s unchanged (bench.death_latency --load c --streamers 1 --by-life; bench.storm).
BATCH = 256
FLUSH_EVERY = 0.1  # seconds between assembler flushes while something is pending
FIRST_READS = 3  # reads of the connector's socket before each read of audit's, at most
RECOVER_AFTER = 30.0  # seconds without new loss before `degraded` returns to `ok`
AUDIT_LOCKED = 2  # `enabled` after `auditctl -e 2`: no rule or setting changes until reboot


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """What the audit source needs to know (built by `Config.audit_settings`)."""

    mode: Literal["auto", "unicast", "multicast"]
    backlog_limit: int  # kernel queue length set in unicast mode (auditctl -b)
    backlog_wait_time: int  # jiffies a task waits for room in a full queue (unicast mode)
    rcvbuf: int  # record socket receive buffer, bytes
    status_interval: float  # seconds between AUDIT_GETs (lost counter, backlog)
    key: str  # rules are tagged `<key>:<pid>`
    argv_max: int = ARGV_MAX  # bytes of argv kept per exec (app/argv.py)


class AuditSource:
    name = "audit"

    def __init__(
        self,
        settings: AuditSettings,
        proc: Path = procfs.PROC,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        control: AuditControl | None = None,
        open_socket: Callable[[bool, int], RecordSocket] = RecordSocket,
    ) -> None:
        """`wall` dates observations and health; `mono` times the waits (assembler reorder
        window, held records, RECOVER_AFTER). Tests pass fakes to drive them without sleeping,
        and may pass the control plane and the record socket's opener (multicast, rcvbuf)."""
        self.settings = settings
        self.proc = proc
        self._wall, self._mono = wall, mono
        self._sink: Sink | None = None
        self._control = control if control is not None else AuditControl()
        self._open_socket = open_socket
        self.locked = False  # audit locked (enabled 2): no rules of ours, multicast only
        self._kernel = KernelChanges(self._control, settings.key, os.getpid())
        self.key = self._kernel.key
        self._sock: RecordSocket | None = None
        self._reader: AuditBatchReader | None = None
        self._pacer: Pacer | None = None
        self._health = SourceHealth()
        self._tasks: list[asyncio.Task[None]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._last_loss = 0.0
        self._last_datagram = wall()
        self._lost_seen = 0
        self._lost_at_start = 0
        # A raw-bytes tap (every datagram as read): used to record kernel output for tests.
        self.tap: Callable[[bytes], None] | None = None
        # Another source's reader, run before each read of this one (the Service sets the
        # connector's: app/core/service.py, `_read_proc_first`).
        self.first: Callable[[], bool] | None = None
        # The connector's forks and exits, for this reader to confirm its own reports of
        # them cheaply (the Service shares one table with the connector's reader).
        self.confirm: Confirmations | None = None
        self.asm = Assembler(self, clock=mono)
        self.lives = LifeEvents(self._emit, proc, clock=mono, argv_max=settings.argv_max)
        self.counters: dict[str, int] = {
            "datagrams": 0, "enobufs": 0, "kernel_lost": 0, "kernel_lost_since_start": 0,
            "backlog": 0, "backlog_max": 0, "losses": 0, "full_reads": 0, "wakeups": 0,
            "connector_read_errors": 0,
        }  # fmt: skip

    # -- Source ------------------------------------------------------------------------------
    async def start(self, sink: Sink) -> None:
        self._sink = sink
        try:
            await self._start()
        except BaseException as e:
            await self._teardown()
            self._set_health(FAILED, f"start failed: {e}")
            raise

    async def _start(self) -> None:
        try:
            await self._control.open()
            found = await self._kernel.read_found()
        except OSError as e:
            if refused(e):
                raise MissingCapability("CAP_AUDIT_CONTROL", "read the audit status") from e
            raise
        self.locked = found.enabled == AUDIT_LOCKED
        self.lives.already_running(procfs.list_pids(self.proc))
        mode, why = await self._choose_and_open(found)
        await self._kernel.enable()
        arches: list[int] = []
        if not self.locked:
            try:
                arches = await self._kernel.install_rules(multicast=mode == "multicast")
            except OSError as e:
                if refused(e):
                    raise MissingCapability("CAP_AUDIT_CONTROL", "add its audit rules") from e
                raise
        status = await self._control.get_status()
        self._lost_seen = status.lost
        # Locked: only the node's own rules make records; lifewatch reads what they give.
        state = DEGRADED if self.locked else OK
        self._health = SourceHealth(state, f"{mode}: {why}", self._wall())
        self._health.info.update(
            mode=mode, mode_reason=why, key=self.key,
            arches=",".join(ARCH_NAMES[a] for a in arches),
            audit_pid=str(status.pid), backlog_limit=str(status.backlog_limit),
            backlog_wait_time=str(status.backlog_wait_time),
            rcvbuf=str(self._sock.rcvbuf if self._sock else 0),
        )  # fmt: skip
        self.counters["kernel_lost"] = status.lost
        self._lost_at_start = status.lost
        assert self._sock is not None
        self._reader = AuditBatchReader(self._sock.sock, RECV_SIZE)
        self._health.info["reader"] = self._reader.kind
        self._pacer = Pacer(
            self._sock.fileno(), self._on_readable, hold=hold_for(self._sock.rcvbuf)
        )
        self._pacer.start()
        self._tasks.append(asyncio.create_task(self._watch_status()))
        self._emit(Health(self.name, state, self._health.reason, self._wall()))
        level = logging.WARNING if self.locked else logging.INFO
        log.log(level, "audit source: %s (%s)", mode, why)

    async def _choose_and_open(self, found: AuditStatus) -> tuple[str, str]:
        holder = found.pid if found.pid and pid_alive(found.pid) else 0
        mode = self.settings.mode
        if self.locked:
            # `auditctl -e 2` forbids rule changes until reboot (kernel/audit.c: EPERM on
            # AUDIT_ADD_RULE while locked): listen next to whoever holds the audit pid.
            return self._open_multicast(
                "audit is locked (enabled 2, auditctl -e 2): lifewatch's rules cannot be "
                "added until reboot; reading only the records of the node's own rules"
            )
        if mode == "auto":
            if holder:
                return self._open_multicast(f"audit pid held by pid {holder} (an audit daemon)")
            try:
                return await self._open_unicast("no audit daemon registered")
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
                self._close_socket()
                return self._open_multicast("another audit daemon registered while starting")
        if mode == "multicast":
            return self._open_multicast("configured")
        return await self._open_unicast("configured")

    async def _open_unicast(self, why: str) -> tuple[str, str]:
        self._sock = self._open_socket(False, self.settings.rcvbuf)
        try:
            self._sock.register(os.getpid())  # EEXIST if another daemon holds it: never forced
        except OSError as e:
            if refused(e):
                raise MissingCapability("CAP_AUDIT_CONTROL", "become the audit pid") from e
            raise
        self._kernel.registered = True
        await self._kernel.set_backlog(self.settings.backlog_limit, self.settings.backlog_wait_time)
        return "unicast", why

    def _open_multicast(self, why: str) -> tuple[str, str]:
        try:
            self._sock = self._open_socket(True, self.settings.rcvbuf)
        except OSError as e:
            if refused(e):
                raise MissingCapability(
                    "CAP_AUDIT_READ", f"read the audit multicast group ({why})"
                ) from e
            raise
        return "multicast", why

    def resynced(self, at: float) -> None:
        # Records can come seconds late (the kernel's retry queue): a fork read after the
        # resync but stamped before it must not bring back a life /proc showed gone.
        self.lives.stale_before = at

    async def stop(self) -> None:
        await self._teardown()
        self._set_health(STOPPED, "stopped")

    async def _teardown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._pacer is not None:
            self._pacer.stop()
        if self._sock is not None:
            self._drain()
        self.asm.flush(force=True)
        self.lives.tick(force=True)
        await self._kernel.restore()
        self._close_socket()
        self._control.close()

    def _close_socket(self) -> None:
        self._reader = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def health(self) -> SourceHealth:
        h = self._health
        h.counters = {
            **self.counters, **self.asm.counters, **self.lives.counters,
            "pending_events": self.asm.pending,
            **pacer_counters(self._pacer),
            **(self.confirm.counters() if self.confirm is not None else {}),
        }  # fmt: skip
        if self._sock is not None:
            queued = procfs.netlink_queued(self._sock.fileno())
            if queued is not None:
                h.counters["socket_queue_bytes"] = queued
        return h

    # -- the record stream (hot path) ------------------------------------------------------
    def _on_readable(self) -> None:
        reader, pacer = self._reader, self._pacer
        if reader is None or pacer is None:
            return
        if self.first is not None:
            try:
                # Again while it says more may have come (at most FIRST_READS times): forks
                # and exits made while the previous read's events were handled are read too,
                # so audit's reports of them find them (confirm); one read left about a
                # tenth of a storm's unmatched (docs/performance.md, round 7).
                for _ in range(FIRST_READS):
                    if not self.first():
                        break
            except Exception:  # the other source's trouble never stops this one's reading
                self.counters["connector_read_errors"] += 1
                k = self.counters["connector_read_errors"]
                if k & (k - 1) == 0:  # the 1st, 2nd, 4th...
                    log.exception("reading the proc connector before audit failed (%d)", k)
        parse, confirm = self.tap is None, self.confirm  # a tap records every datagram as read
        n, status = pacer.drain(lambda k: reader.records(k, UNUSED, parse, confirm), BATCH,
                                self._take, self._enobufs, self._delivery_failed)  # fmt: skip
        if status > 0:
            self._set_health(FAILED, f"reading the audit socket: {os.strerror(status)}")
            return
        self.counters["datagrams"] += n
        self.counters["wakeups"] += 1
        if n == BATCH:  # the budget ran out with datagrams left: the reader is behind
            self.counters["full_reads"] += 1
        if n:
            self._last_datagram = self._wall()
        busy = self.asm.pending or self.lives.waiting or self.asm.holes
        if busy and self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_EVERY, self._flush)

    def _take(self, item: Record | Confirmed | bytes) -> None:
        """One datagram as read: a Record parsed by _batch.c, a SYSCALL record it confirmed
        against the connector's report, or bytes to parse here."""
        if isinstance(item, bytes):
            if self.tap is not None:
                self.tap(item)
            for rec in parse_datagram(item, UNUSED):
                self.asm.push(rec)
        elif type(item) is Confirmed:
            self.lives.confirmed(item)
            self.asm.seen(item.serial)  # its EOE does not come: _batch.c drops it
        else:
            self.asm.push(item)  # type: ignore[arg-type]

    def _drain(self) -> None:
        """Read what is queued (on stop), so the last events are not thrown away."""
        sock = self._sock
        assert sock is not None
        while True:
            try:
                data = sock.recv()
            except BlockingIOError:
                return
            except OSError:
                return
            for rec in parse_datagram(data, UNUSED):
                self.asm.push(rec)

    def _flush(self) -> None:
        self._flush_handle = None
        self.asm.flush()
        self.lives.tick()
        if self.asm.pending or self.lives.waiting or self.asm.holes:
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_EVERY, self._flush)

    # -- AssemblerSink -------------------------------------------------------------------------
    def event_complete(self, records: list[Record]) -> None:
        self.lives.event(records)

    def events_lost(self, first_serial: int, count: int) -> None:
        last = (first_serial + count - 1) & 0xFFFFFFFF
        self._loss("serial_gap", f"audit serials {first_serial}..{last} never arrived")

    # -- loss and health -------------------------------------------------------------------
    def _delivery_failed(self) -> None:
        """A datagram read could not be handled (a bug, logged by the pacer): its events
        may be missing, so it is a loss like any other: a gap, then a resync."""
        self._loss("internal_error", "a datagram could not be handled: see the daemon's log")

    def _enobufs(self) -> None:
        self.counters["enobufs"] += 1
        self._loss("enobufs", "the audit socket's receive buffer overran", self._last_datagram)

    def _loss(self, reason: str, detail: str, since: float | None = None) -> None:
        if self.confirm is not None:
            self.confirm.clear()  # an entry may stand for a fork or exit audit lost
        now = self._wall()
        self.counters["losses"] += 1
        self._last_loss = self._mono()
        self._emit(Loss(self.name, reason, now, detail, since))
        self._set_health(DEGRADED, f"{reason}: {detail}")

    def _set_health(self, state: str, reason: str) -> None:
        h = self._health
        if h.state == state and h.reason == reason:
            return
        h.state, h.reason, h.since = state, reason, self._wall()
        if self._sink is not None and state != STOPPED:
            self._emit(Health(self.name, state, reason, h.since))

    def _emit(self, obs: Observation) -> None:
        if self._sink is not None:
            self._sink.submit(obs)

    async def _watch_status(self) -> None:
        """Every interval: the kernel's lost counter and backlog (one AUDIT_GET, cheap)."""
        interval = self.settings.status_interval
        last = self._wall()
        while True:
            await asyncio.sleep(interval)
            try:
                status = await self._control.get_status()
            except OSError as e:
                self._set_health(DEGRADED, f"AUDIT_GET failed: {e}")
                continue
            now = self._wall()
            self._check_status(status, last)
            last = now

    def _check_status(self, status: AuditStatus, since: float) -> None:
        self.counters["backlog"] = status.backlog
        self.counters["backlog_max"] = max(self.counters["backlog_max"], status.backlog)
        self.counters["kernel_lost"] = status.lost
        self.counters["kernel_lost_since_start"] = max(0, status.lost - self._lost_at_start)
        self._health.info["audit_pid"] = str(status.pid)
        if status.lost > self._lost_seen:
            detail = f"kernel lost counter rose {self._lost_seen} -> {status.lost}"
            self._lost_seen = status.lost
            self._loss("kernel_lost", detail, since)
            return
        self._lost_seen = status.lost  # a reset (auditctl --reset-lost) lowers it
        if self._kernel.registered and status.pid != self._kernel.pid:
            self._set_health(FAILED, f"audit pid is now {status.pid}: no longer receiving")
            return
        if not status.enabled:
            self._set_health(DEGRADED, "audit was disabled by someone else")
            return
        if self.locked:  # degraded for as long as the lock holds (until reboot)
            return
        if self._health.state == DEGRADED and self._mono() - self._last_loss > RECOVER_AFTER:
            self._set_health(OK, f"no loss for {RECOVER_AFTER:.0f} s")
