"""Following chosen lives with pidfds: their deaths are reported even when every event source
lost them, with the exit status the kernel gives a process that is not the parent.

A pidfd polls readable once its process has exited (design.md fact 9), so each followed life
costs one fd and one `loop.add_reader`; nothing polls. The exit status comes from
PIDFD_GET_INFO with PIDFD_INFO_EXIT (Linux 6.15+) once the child is reaped, or from field 52
of /proc/<pid>/stat while it is a zombie (readable by root; proc(5)); else it stays unknown
here and the event sources may still supply it (the tracker merges their reports).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app import procfs
from app.core.life import Life, SourceSet
from app.core.tracker import Tracker
from app.netlink.pidfd import pidfd_exit_status
from app.sources.observations import Exit, wait_status

FD_RESERVE = 32  # descriptors a follow leaves free (app/api/limits.py keeps its own)


class FollowError(Exception):
    """Why a life cannot be followed; `error` is the API's error code."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error, self.detail = error, detail


@dataclass(slots=True)
class _Followed:
    life: Life
    pidfd: int
    holders: int = 1


@dataclass(slots=True)
class FollowStats:
    followed: int = 0  # now
    started: int = 0
    deaths: int = 0
    status_from_pidfd: int = 0
    status_from_stat: int = 0
    status_unknown: int = 0
    refused: dict[str, int] = field(default_factory=dict)


class Follower:
    """Holds one pidfd per followed life, at most `limit` at once."""

    def __init__(
        self,
        tracker: Tracker,
        limit: int,
        proc: Path = procfs.PROC,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.tracker = tracker
        self.limit = limit
        self.proc = proc
        self._wall = wall
        self._by_pid: dict[int, _Followed] = {}
        self.stats = FollowStats()
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        # Descriptors are numbered lowest free first: a pidfd numbered this high means that
        # fewer than FD_RESERVE are left.
        self.fd_ceiling = soft - FD_RESERVE if soft != resource.RLIM_INFINITY else 1 << 30

    def __len__(self) -> int:
        return len(self._by_pid)

    def following(self, pid: int) -> Life | None:
        f = self._by_pid.get(pid)
        return None if f is None else f.life

    def follow(self, pid: int, start_ticks: int) -> Life:
        """Follow the life `pid`/`start_ticks` until it dies; returns it. A life already dead
        is returned as it is (nothing to follow). Raises FollowError otherwise."""
        reg = self.tracker.registry
        life = reg.find(pid, start_ticks)
        if life is not None and not life.alive:
            return life
        held = self._by_pid.get(pid)
        if held is not None and held.life.matches(start_ticks):
            held.holders += 1
            return held.life
        if len(self._by_pid) >= self.limit:
            self._refuse("follow_limit")
            raise FollowError(
                "follow_limit",
                f"already following {len(self._by_pid)} lives; the limit is {self.limit} "
                "(max_follow)",
            )
        try:
            got = procfs.capture(pid, self.proc, self.tracker.argv_max, strict=True)
        except OSError as e:
            self._refuse("no_descriptors")
            raise FollowError("no_descriptors", f"cannot follow now: {e.strerror}") from None
        if got is not None and got[1] >= self.fd_ceiling:
            os.close(got[1])  # the last descriptors are kept for the API and the sources
            self._refuse("no_descriptors")
            raise FollowError(
                "no_descriptors",
                f"cannot follow now: fewer than {FD_RESERVE} file descriptors left (ulimit -n)",
            )
        if got is None:
            self._refuse("not_found")
            raise FollowError("not_found", f"no process {pid} is running now")
        info, pidfd = got
        now = info.stat.start_ticks
        if life is not None and life.matches(now):
            pass  # the registry's life, alive in /proc (a derived start matches within its slack)
        elif now == start_ticks:
            life = self.tracker.found(info, SourceSet.PIDFD)  # alive, unknown to the registry
        else:
            os.close(pidfd)
            self._refuse("not_found")
            raise FollowError(
                "not_found", f"pid {pid} is held by another life now (start ticks {now})"
            )
        if life.pidfd_ino is None:
            life.pidfd_ino = info.pidfd_ino
        self._by_pid[pid] = _Followed(life, pidfd)
        asyncio.get_running_loop().add_reader(pidfd, self._exited, pid)
        self.stats.started += 1
        self.stats.followed = len(self._by_pid)
        return life

    def release(self, pid: int) -> None:
        """Drop one hold on a followed life (a WebSocket that followed it closed)."""
        f = self._by_pid.get(pid)
        if f is None:
            return
        f.holders -= 1
        if f.holders <= 0:
            self._drop(pid)

    def close(self) -> None:
        for pid in list(self._by_pid):
            self._drop(pid)

    def _refuse(self, why: str) -> None:
        self.stats.refused[why] = self.stats.refused.get(why, 0) + 1

    def _drop(self, pid: int) -> _Followed | None:
        f = self._by_pid.pop(pid, None)
        if f is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                asyncio.get_running_loop().remove_reader(f.pidfd)
            os.close(f.pidfd)
            self.stats.followed = len(self._by_pid)
        return f

    def _exited(self, pid: int) -> None:
        f = self._by_pid.get(pid)
        if f is None:
            return
        at = self._wall()
        status = self._status(f)
        self._drop(pid)
        self.stats.deaths += 1
        code, sig, core = (None, None, False) if status is None else wait_status(status)
        self.tracker.submit(Exit("pidfd", pid, at, code, sig, core, start_ticks=f.life.start_ticks))

    def _status(self, f: _Followed) -> int | None:
        """Reaped: the pidfd knows. A zombie: its stat's field 52 (a zombie's pid cannot be
        reused, and the start ticks confirm it is our life's). Reaped in between: ask again."""
        status = pidfd_exit_status(f.pidfd)
        if status is None:
            try:
                st: procfs.Stat | None = procfs.read_stat(f.life.pid, self.proc)
            except (OSError, procfs.StatError):
                st = None
            if st is not None and st.exit_code is not None and f.life.matches(st.start_ticks):
                self.stats.status_from_stat += 1
                return st.exit_code
            status = pidfd_exit_status(f.pidfd)
        if status is None:
            self.stats.status_unknown += 1
        else:
            self.stats.status_from_pidfd += 1
        return status
