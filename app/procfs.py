"""Every read of /proc in lifewatch: pure parsers of its files, race-free capture, liveness, the
snapshot, and the node's boot facts. Nothing else in the daemon opens a /proc path."""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from app.argv import ARGV_MAX, split_cmdline

PROC = Path("/proc")


class StatError(ValueError):
    """A /proc/<pid>/stat line that does not have the kernel's shape."""


class Stat(NamedTuple):
    """The fields of /proc/<pid>/stat that lifewatch uses (proc(5) numbering). A NamedTuple
    rather than a frozen dataclass: made once per fork under a storm, 3.5 -> 2.2 us a
    parse here (docs/performance.md, round 5)."""

    pid: int  # field 1
    comm: str  # field 2, without its parentheses
    state: str  # field 3
    ppid: int  # field 4
    num_threads: int  # field 20; a zombie leader still counts itself
    start_ticks: int  # field 22, clock ticks after boot
    # Field 52 (Linux 3.5+): the wait(2) status the task exited with, as waitpid would
    # report it (0x300 for exit(3), 9 for SIGKILL); meaningful once the task is a zombie.
    # None when the kernel's line is shorter.
    exit_code: int | None = None


_new = tuple.__new__


def parse_stat(data: bytes) -> Stat:
    """Parse one `stat` line. `comm` may hold spaces, parentheses and newlines, so the
    fields are split at the *last* `)` (as procps and psutil do)."""
    open_ = data.find(b"(")
    close = data.rfind(b")")
    if open_ < 1 or close < open_:
        raise StatError(f"no (comm) in stat line {data[:64]!r}")
    rest = data[close + 2 :].split()  # fields 3.. : rest[i] is field i + 3
    if len(rest) < 20:
        raise StatError(f"stat line has {len(rest) + 2} fields, expected at least 22")
    try:
        # tuple.__new__ skips NamedTuple's Python-level __new__ (as audit_records does).
        return _new(Stat, (
            int(data[: open_ - 1]),  # pid
            data[open_ + 1 : close].decode("utf-8", "surrogateescape"),  # comm
            rest[0].decode("ascii"),  # state
            int(rest[1]),  # ppid
            int(rest[17]),  # num_threads
            int(rest[19]),  # start_ticks
            int(rest[49]) if len(rest) >= 50 else None,  # exit_code
        ))  # fmt: skip
    except (ValueError, UnicodeDecodeError) as e:
        raise StatError(f"malformed stat line: {e}") from None


def is_running(stat: Stat) -> bool:
    """A process is still running while it is not a zombie (Z, or X on its way out), or
    while it is a zombie leader whose other threads still run (it counts itself)."""
    return stat.state not in ("Z", "X") or stat.num_threads > 1


def parse_cmdline(data: bytes, argv_max: int = ARGV_MAX) -> tuple[str, ...]:
    """argv from /proc/<pid>/cmdline (NUL-separated, usually NUL-terminated), cut at
    `argv_max` bytes (app/argv.py): a CutArgv when the data held more."""
    return split_cmdline(data, argv_max)


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """What /proc tells about one process at one moment."""

    stat: Stat
    exe: str | None  # None for kernel threads or when the link is unreadable
    argv: tuple[str, ...]
    uid: int | None
    pidfd_ino: int | None = None  # pidfs inode (Linux 6.9+), a per-boot unique id


def read_stat(pid: int, proc: Path = PROC) -> Stat:
    # os.open/os.read rather than open(): 3 syscalls and no buffered file object; measured
    # 50 -> 15 us per call here, and every `alive` answer reads one (bench/lookup_wrk.py).
    fd = os.open(f"{proc}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return parse_stat(os.read(fd, 4096))
    finally:
        os.close(fd)


def read_proc(
    pid: int, stat: Stat | None = None, proc: Path = PROC, argv_max: int = ARGV_MAX
) -> ProcInfo:
    """Read one process's facts; raises OSError (ENOENT/ESRCH) when it is gone. Of argv,
    `argv_max` + 1 bytes at most are read (one more than kept: to know it went on)."""
    # Plain os calls, no buffered files, and the uid from the directory's owner rather than
    # `status` (which the kernel formats in full at each read): 2.0 -> 0.5 s for a snapshot
    # of 10,000 processes here (bench/snapshot_10k.py).
    base = f"{proc}/{pid}"
    if stat is None:
        stat = read_stat(pid, proc)
    exe, argv = _program(base, argv_max)
    try:
        # The owner of /proc/<pid> is the process's effective uid (root for a process that
        # made itself non-dumpable, as setuid programs do): proc(5).
        uid: int | None = os.stat(base).st_uid
    except OSError:
        uid = None
    return ProcInfo(stat, exe, argv, uid)


def read_upto(fd: int, size: int) -> bytes:
    """At most `size` bytes of `fd`: a user can give a process megabytes of argv (design.md
    fact 14); what is past the cap is never read. One read is the usual case: the kernel
    hands cmdline out a page at a time, so a longer one takes several."""
    chunk = os.read(fd, size)
    if len(chunk) < 4096 or len(chunk) >= size:
        return chunk
    parts = [chunk]
    got = len(chunk)
    while got < size:
        chunk = os.read(fd, size - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_image(
    pid: int, proc: Path = PROC, argv_max: int = ARGV_MAX
) -> tuple[Stat, str | None, tuple[str, ...]] | None:
    """What a process runs after an exec: (stat, exe, argv), or None when it is gone.

    Cheaper than `capture` (no pidfd, no uid): exe and argv are read first and `stat` last,
    so a caller that finds the start ticks it expects in that stat knows the pid held its
    life during the reads (a pid is not reused while its process lives). Every exec event of
    the proc connector reads this (bench/storm.py, docs/performance.md).
    """
    exe, argv = _program(f"{proc}/{pid}", argv_max)
    try:
        return read_stat(pid, proc), exe, argv
    except (OSError, StatError):
        return None


def read_owner(pid: int, proc: Path = PROC) -> int | None:
    """The effective uid of `pid` (the owner of /proc/<pid>, proc(5)), None when gone. An
    exec may change it (a process forked by root that dropped to a user, then exec'd): the
    proc connector's EXEC event carries no uid (issue 10)."""
    try:
        return os.stat(f"{proc}/{pid}").st_uid
    except OSError:
        return None


def _program(base: str, argv_max: int) -> tuple[str | None, tuple[str, ...]]:
    """exe and argv of the process at /proc path `base` (None and () when unreadable)."""
    try:
        exe: str | None = os.readlink(f"{base}/exe")
    except OSError:
        exe = None
    try:
        fd = os.open(f"{base}/cmdline", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return exe, parse_cmdline(read_upto(fd, argv_max + 1), argv_max)
        finally:
            os.close(fd)
    except OSError:
        return exe, ()


# Out of descriptors or memory: not evidence that a process is gone (issue 10: a follow
# with one fd left answered 404 "no process running").
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def capture(
    pid: int, proc: Path = PROC, argv_max: int = ARGV_MAX, strict: bool = False
) -> tuple[ProcInfo, int] | None:
    """Capture one life race-free: open a pidfd, read `stat`, then check that the pidfd's
    process has not been reaped. Returns the facts and the open pidfd (the caller owns it),
    or None when the pid is gone or is not a process (a thread).

    A reaped pid may be reused; the pidfd pins the life it was opened on. If that life
    can still be signalled (signal 0) after the read, it was not reaped before the read,
    so the stat we read was its own. A zombie still answers, and still has its `stat`.
    With `strict`, running out of descriptors or memory raises (OSError) instead.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        if strict and e.errno in EXHAUSTED:
            raise
        return None
    try:
        info = read_proc(pid, proc=proc, argv_max=argv_max)
        signal.pidfd_send_signal(pidfd, 0)
        ino = os.fstat(pidfd).st_ino
    except (OSError, StatError) as e:
        os.close(pidfd)
        if strict and isinstance(e, OSError) and e.errno in EXHAUSTED:
            raise
        return None
    return ProcInfo(info.stat, info.exe, info.argv, info.uid, ino), pidfd


def capture_closed(pid: int, proc: Path = PROC, argv_max: int = ARGV_MAX) -> ProcInfo | None:
    """`capture` for callers that only want the facts."""
    got = capture(pid, proc, argv_max)
    if got is None:
        return None
    os.close(got[1])
    return got[0]


def list_pids(proc: Path = PROC) -> Iterator[int]:
    """The pids of processes (thread-group leaders) now in /proc."""
    for entry in os.scandir(proc):
        if entry.name.isdigit():
            yield int(entry.name)


# Reads of a pid whose task was released under the read before it is taken for gone: the
# next read finds the pid's new task or no entry.
RELEASED_READS = 3


def process_running(pid: int, proc: Path = PROC, born_by: int | None = None) -> bool:
    """Is process `pid` still running (see `is_running`)? False once /proc no longer has it,
    and False when the pid is held by a process that started after tick `born_by`.

    The one liveness check of the sources: an audit `exit` record or a connector EXIT of a
    leader ends one thread, not necessarily the process. A reader that is seconds behind
    (a fork storm) may ask after the pid was reused: a holder younger than the exit is not
    the process that exited (a pid is not reused within one tick).
    """
    for _ in range(RELEASED_READS):
        try:
            stat = read_stat(pid, proc)
        except (OSError, StatError):
            return False
        if stat.num_threads:
            return is_running(stat) and (born_by is None or stat.start_ticks <= born_by)
        # 0 threads: the task this read found was released while it was read (do_task_stat
        # counts threads only while it can lock the task's signal handlers). The pid may
        # name another task by now: a thread that exec'd takes its leader's pid (de_thread
        # releases the old leader right after), so this read proves nothing; read again. A
        # CI run once took a de_thread exec for a death with status 0 this way.
    return False


def thread_group_of(pid: int, proc: Path = PROC) -> int | None:
    """The tgid of task `pid` (its `Tgid:` in `status`; a thread's tid also has a /proc
    entry), or None when /proc no longer has it."""
    try:
        with open(f"{proc}/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def pid_exists(pid: int, proc: Path = PROC) -> bool:
    """Whether /proc has an entry for `pid` now (a process, a zombie or a thread's tid)."""
    return os.path.exists(f"{proc}/{pid}")


def read_boot_id(proc: Path = PROC) -> str:
    """The boot's random id (/proc/sys/kernel/random/boot_id): names this boot."""
    return (proc / "sys/kernel/random/boot_id").read_text().strip()


def read_btime(proc: Path = PROC) -> int:
    """The kernel's boot time in epoch seconds: realtime - boottime, recomputed at every read."""
    with open(proc / "stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return int(line.split()[1])
    raise RuntimeError(f"no btime line in {proc / 'stat'}")


def snapshot(proc: Path = PROC, argv_max: int = ARGV_MAX) -> list[ProcInfo]:
    """Every process now on the node; ones that exit while we read are skipped."""
    out: list[ProcInfo] = []
    for pid in list_pids(proc):
        try:
            out.append(read_proc(pid, proc=proc, argv_max=argv_max))
        except (OSError, StatError):
            continue
    return out


def netlink_queued(fd: int, proc: Path = PROC) -> int | None:
    """Bytes waiting in the receive queue of our netlink socket `fd`: how far a kernel reader
    is behind (read when health is asked for, never on the event path)."""
    return netlink_queues(proc).get(os.fstat(fd).st_ino)


def netlink_queues(proc: Path = PROC) -> dict[int, int]:
    """Bytes waiting in each netlink socket's receive queue (`Rmem` of /proc/net/netlink),
    by socket inode."""
    try:
        with open(f"{proc}/net/netlink", "rb") as f:
            head, *rows = f.read().splitlines()
    except OSError:
        return {}
    cols = head.split()
    try:
        rmem, inode = cols.index(b"Rmem"), cols.index(b"Inode")
    except ValueError:
        return {}
    out: dict[int, int] = {}
    for row in rows:
        fields = row.split()
        if len(fields) > max(rmem, inode):
            out[int(fields[inode])] = int(fields[rmem])
    return out


SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")


def socket_fds(pid: int, proc: Path = PROC) -> dict[int, int]:
    """The sockets process `pid` holds: {socket inode: fd}. Empty when it is gone or its
    fds cannot be read (another user's, without privilege)."""
    base = f"{proc}/{pid}/fd"
    out: dict[int, int] = {}
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in names:
        try:
            m = SOCKET_LINK.fullmatch(os.readlink(f"{base}/{name}"))
        except OSError:
            continue
        if m is not None:
            out.setdefault(int(m.group(1)), int(name))
    return out


@dataclass(slots=True)
class OwnerScan:
    """Which processes hold which socket inodes, and what finding out cost."""

    owners: dict[int, list[int]]  # inode -> pids holding it (a fork shares a socket)
    fds: int = 0  # descriptors read
    processes: int = 0
    complete: bool = True  # False: stopped at the fd or time bound before the end


def socket_owners(
    inodes: set[int],
    proc: Path = PROC,
    max_fds: int = 100_000,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> OwnerScan:
    """Scan /proc/*/fd for the holders of `inodes`. About 10 µs per descriptor on this
    project's VM (4 ms for 350 fds, 143-180 ms for 16,000), so it is bounded: at most
    `max_fds` descriptors and until `deadline` (of `clock`); `complete` says whether the
    scan saw every process. Every holder is listed, not only the first."""
    scan = OwnerScan({})
    if not inodes:
        return scan
    for pid in list_pids(proc):
        if scan.fds >= max_fds or (deadline is not None and clock() > deadline):
            scan.complete = False
            break
        base = f"{proc}/{pid}/fd"
        try:
            names = os.listdir(base)
        except OSError:
            continue
        scan.processes += 1
        scan.fds += len(names)
        for name in names:
            try:
                link = os.readlink(f"{base}/{name}")
            except OSError:
                continue
            m = SOCKET_LINK.fullmatch(link)
            if m is not None and (ino := int(m.group(1))) in inodes:
                holders = scan.owners.setdefault(ino, [])
                if pid not in holders:
                    holders.append(pid)
    return scan
