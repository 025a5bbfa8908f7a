"""Turns assembled audit events into observations of lives: born, exec, died.

Three things make this more than a field lookup:

- Threads are not lives. `clone` shows its flags in `a0` (CLONE_THREAD), but glibc makes
  threads with `clone3`, whose `a0` is a pointer (design.md fact 5), and a thread's `exit`
  record carries the *process's* pid (audit logs the tgid). So a `clone3` child and an `exit`
  are checked against /proc (`Tgid:` of the child; whether the process still runs). When
  /proc can no longer tell (the child is gone), the clone3 child is held until the child's
  own exec or exit_group proves it was a process; if none comes within `hold` seconds it is
  dropped and counted (`clone3_unresolved`): a process that short-lived and silent was
  killed by a signal, which audit cannot see anyway (fact 4; the proc connector does).
- Order. A child's exec or exit_group can reach us before its parent's clone record (the
  parent returns from clone after the child ran). Exec/Exit of a pid that was born recently
  enough to have no Fork yet would find no life. Such records are held until the Fork
  arrives or `hold` passes; pids that existed at start or whose Fork was seen pass through.
- Start ticks are captured by the tracker (pidfd, /proc) from the Fork; the Fork carries the
  audit stamp so the tracker can derive the start (+-1 tick) when the child is already gone.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

from app import procfs
from app.argv import ARGV_MAX
from app.netlink.audit_proto import (
    ARCH_SYSCALLS,
    AUDIT_CWD,
    AUDIT_EXECVE,
    AUDIT_PATH,
    AUDIT_PROCTITLE,
    AUDIT_SYSCALL,
    CLONE_PARENT,
    CLONE_THREAD,
)
from app.netlink.audit_records import (
    CONFIRMED_FORK,
    Confirmed,
    Record,
    Syscall,
    execve_argv,
    parse_syscall,
    raw_fields,
    untrusted,
)
from app.sources.observations import Exec, Exit, Fork, Observation

SOURCE = "audit"
# Record types this module never reads, so the reader need not parse them: PATH (the files
# an exec opened) and PROCTITLE (argv cut at 128 bytes; EXECVE has it whole). One in three of
# the records of a fork or an exit is a PROCTITLE (bench/audit_parser.py).
UNUSED = frozenset({AUDIT_PATH, AUDIT_PROCTITLE})
KNOWN_PIDS = 65536  # pids remembered as born-under-watch, to let their records pass at once
FORKS = {"clone", "fork", "vfork", "clone3"}
# The kernel writes at most PATH_MAX of a path and TASK_COMM_LEN - 1 of a comm; longer
# values can only come from a record that is not the kernel's: cut, not kept whole.
PATH_MAX = 4096
COMM_MAX = 64


class LifeEvents:
    """Event records in, observations out (through `emit`). Call `tick()` periodically."""

    def __init__(
        self,
        emit: Callable[[Observation], None],
        proc: Path = procfs.PROC,
        clock: Callable[[], float] = time.monotonic,
        hold: float = 0.25,
        known: Iterable[int] = (),
        argv_max: int = ARGV_MAX,
    ) -> None:
        self.emit = emit
        self.argv_max = argv_max  # bytes of argv kept per exec (app/argv.py)
        self.proc = proc
        self.clock = clock
        self.hold = hold
        # (arch, syscall) as the record writes them (hex arch, decimal nr) -> syscall name
        self._names: dict[tuple[bytes, bytes], str] = {
            (b"%x" % arch, b"%d" % nr): name
            for arch, table in ARCH_SYSCALLS.items()
            for name, nr in table.items()
        }
        # Wall time of the registry's last resync against /proc: a Fork stamped before it
        # whose child is gone was settled by that resync (see `_fork`).
        self.stale_before = 0.0
        # pids whose Fork we sent (or that were alive at start): their records pass at once
        self._known: OrderedDict[int, None] = OrderedDict((p, None) for p in known)
        # pid -> (since, [observations]) held until that pid's Fork
        self._held: dict[int, tuple[float, list[Observation]]] = {}
        # clone3 children /proc could not classify: child -> (since, Fork)
        self._unresolved: dict[int, tuple[float, Fork]] = {}
        # pids whose `exit` (not exit_group) record is waiting to be confirmed as a death
        self._exits: dict[int, tuple[float, Exit]] = {}
        self.counters = {
            "forks": 0, "execs": 0, "exits": 0, "threads": 0, "clone3_unresolved": 0,
            "held": 0, "thread_exits": 0, "failed_syscalls": 0, "stale_forks": 0,
        }  # fmt: skip

    def already_running(self, pids: Iterable[int]) -> None:
        """Processes alive when reading starts: their records need no Fork first."""
        self._known.update((p, None) for p in pids)

    # -- one event ---------------------------------------------------------------------------
    def event(self, records: list[Record]) -> None:
        syscall = records[0]  # the kernel writes SYSCALL first (audit_log_exit)
        if syscall.type != AUDIT_SYSCALL:
            for rec in records:
                if rec.type == AUDIT_SYSCALL:
                    syscall = rec
                    break
            else:
                return
        f = parse_syscall(syscall.body)
        if f is None:
            return
        name = self._names.get((f.arch, f.syscall))
        if name is None:
            return  # someone else's rule (auditd's) matched another syscall
        if f.success == b"no":
            self.counters["failed_syscalls"] += 1
            return
        if name in FORKS:
            self._fork(name, f, syscall.stamp)
        elif name in ("execve", "execveat"):
            self._exec(f, records, syscall.stamp)
        elif name == "exit_group":
            self._died(_exit_obs(f, syscall.stamp), thread_exit=False)
        elif name == "exit":
            self._died(_exit_obs(f, syscall.stamp), thread_exit=True)

    def _fork(self, name: str, f: Syscall, stamp: float) -> None:
        if f.exit is None:
            return
        try:  # one handler for both (hot path: bench/audit_parser.py)
            child, pid = int(f.exit), int(f.pid)
        except ValueError:
            return
        if child <= 0:
            return
        ppid = pid
        if name == "clone":
            flags = _int(f.a0, 16) or 0
            if flags & CLONE_THREAD:
                self.counters["threads"] += 1
                return
            if flags & CLONE_PARENT:
                ppid = _int(f.ppid) or pid
        obs = Fork(SOURCE, child, ppid, stamp, audit_stamp=stamp, uid=_int(f.uid))
        if name == "clone3":
            tgid = procfs.thread_group_of(child, self.proc)
            if tgid is None:
                self._wait_for_evidence(obs)
                return
            if tgid != child:
                self.counters["threads"] += 1
                return
        self._fork_told(obs)

    def _fork_told(self, obs: Fork) -> None:
        """A fork of a process (not a thread), unless it was read after a resync."""
        if obs.at < self.stale_before and not procfs.pid_exists(obs.pid, self.proc):
            # Read after a resync that already judged this pid from /proc (records can come
            # seconds late through the kernel's retry queue). Recreating the child on the
            # fork alone, its exit record maybe lost, could leave a dead life alive: it is
            # born only with its own exec or exit as evidence, like an unresolved clone3.
            self.counters["stale_forks"] += 1
            self._wait_for_evidence(obs)
            return
        self._born(obs)

    def _wait_for_evidence(self, obs: Fork) -> None:
        """Born only once the child's own records (exec, exit_group: they carry its pid,
        never a thread's) are seen: already held ones count."""
        if obs.pid in self._held:
            self._born(obs)
        else:
            self._unresolved[obs.pid] = (self.clock(), obs)

    def _born(self, obs: Fork) -> None:
        self.counters["forks"] += 1
        self._remember(obs.pid)
        self.emit(obs)
        self._release(obs.pid)

    def _exec(self, f: Syscall, records: list[Record], stamp: float) -> None:
        pid = _int(f.pid)
        if pid is None:
            return
        # argv from EXECVE alone: the kernel logs it for every successful execve
        # (kernel/auditsc.c audit_log_exit), and a record lost on the way is counted by the
        # kernel's `lost`, which makes a gap and a resync. PROCTITLE (the same argv cut at
        # 128 bytes) is not read at all: see UNUSED.
        execve = [r.body for r in records if r.type == AUDIT_EXECVE]
        argv = execve_argv(execve, self.argv_max) if execve else None
        cwd = None
        for r in records:
            if r.type == AUDIT_CWD:
                cwd = untrusted(raw_fields(r.body).get(b"cwd"))
        obs = Exec(
            SOURCE, pid, stamp, exe=_cut(untrusted(f.exe), PATH_MAX), argv=argv,
            comm=_cut(untrusted(f.comm), COMM_MAX), uid=_int(f.uid), cwd=cwd, ppid=_int(f.ppid),
        )  # fmt: skip
        self.counters["execs"] += 1
        self._deliver(pid, obs)

    def _died(self, obs: Exit, thread_exit: bool) -> None:
        if thread_exit:
            # `exit` ends one thread; it ends the process only if no thread is left.
            if procfs.process_running(obs.pid, self.proc):
                self.counters["thread_exits"] += 1
                return
            self._exits[obs.pid] = (self.clock(), obs)  # confirm after exit_group had a chance
            return
        self._exits.pop(obs.pid, None)
        self.counters["exits"] += 1
        self._deliver(obs.pid, obs)

    def confirmed(self, c: Confirmed) -> None:
        """A fork or exit_group record the compiled reader matched to the connector's report
        of it (app/netlink/batch.py `confirmations`): the connector told the tracker
        already, so it goes on as it is, without a Fork or Exit made for it or a hold."""
        pid = c.pid
        if c.kind == CONFIRMED_FORK:
            if c.stamp < self.stale_before:  # read after a resync: as the full path would
                self._fork_told(Fork(SOURCE, pid, c.ppid, c.stamp, audit_stamp=c.stamp,
                                     uid=c.uid))  # fmt: skip
                return
            self.counters["forks"] += 1
            self._remember(pid)
            self.emit(c)
            if self._held:
                self._release(pid)
            return
        self.counters["exits"] += 1
        if self._exits:
            self._exits.pop(pid, None)
        if self._unresolved:
            unresolved = self._unresolved.pop(pid, None)
            if unresolved is not None:
                self._born(unresolved[1])  # its exit_group proves it was a process
        self._known.pop(pid, None)
        self.emit(c)

    # -- ordering --------------------------------------------------------------------------
    def _deliver(self, pid: int, obs: Observation) -> None:
        unresolved = self._unresolved.pop(pid, None)
        if unresolved is not None:
            self._born(unresolved[1])  # its exec/exit_group proves it was a process
        if pid in self._known:
            self.emit(obs)
            if isinstance(obs, Exit):
                self._known.pop(pid, None)
            return
        self.counters["held"] += 1
        held = self._held.get(pid)
        if held is None:
            self._held[pid] = (self.clock(), [obs])
        else:
            held[1].append(obs)

    def _release(self, pid: int) -> None:
        held = self._held.pop(pid, None)
        if held is not None:
            for obs in held[1]:
                self.emit(obs)
                if isinstance(obs, Exit):
                    self._known.pop(pid, None)

    def _remember(self, pid: int) -> None:
        self._known[pid] = None
        if len(self._known) > KNOWN_PIDS:
            self._known.popitem(last=False)

    def tick(self, force: bool = False) -> None:
        """Release what waited longer than `hold` (all of it with `force`)."""
        now = self.clock()
        for pid in [p for p, (t, _) in self._held.items() if force or now - t >= self.hold]:
            self._release(pid)
        for pid in [p for p, (t, _) in self._unresolved.items() if force or now - t >= self.hold]:
            del self._unresolved[pid]
            self.counters["clone3_unresolved"] += 1
        for pid in [p for p, (t, _) in self._exits.items() if force or now - t >= self.hold]:
            obs = self._exits.pop(pid)[1]
            self.counters["exits"] += 1
            self._deliver(pid, obs)

    @property
    def waiting(self) -> int:
        return len(self._held) + len(self._unresolved) + len(self._exits)


def _exit_obs(f: Syscall, stamp: float) -> Exit:
    code = _int(f.a0, 16)
    return Exit(SOURCE, _int(f.pid) or 0, stamp, code=None if code is None else code & 0xFF)


def _cut(text: str | None, size: int) -> str | None:
    return text if text is None or len(text) <= size else text[:size]


def _int(text: bytes | None, base: int = 10) -> int | None:
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None
