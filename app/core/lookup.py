"""Answers "is this life alive?": the registry first, /proc as evidence, never a guess."""

from __future__ import annotations

import os

from app import procfs
from app.core.life import ALIVE, DEAD, SourceSet
from app.core.registry import Answer
from app.core.service import Service


def lookup(service: Service, pid: int, ticks: int) -> Answer:
    """The registry's answer, checked against /proc for the pid now.

    An `alive` answer is confirmed: while every event source is `ok`, by checking that the
    pid exists (one kill(pid, 0)); otherwise by reading its `stat` and comparing the start.
    If the pid is gone or held by another start, the life is `dead` at once and the tracker
    is told (`Tracker.vanished`): its exit report, usually still on its way, completes it; a
    gap and a resync follow only if none comes. A life the registry does not know but /proc
    shows is handed to the tracker as found, `alive`.
    """
    reg = service.registry
    ans = reg.answer(pid, ticks)
    if ans.state == DEAD:
        return ans
    if ans.state == ALIVE and service.sources_ok():
        try:
            os.kill(pid, 0)
            return ans
        except PermissionError:
            return ans  # it exists; we may not signal it
        except ProcessLookupError:
            pass  # fall through to the full check below
    try:
        stat: procfs.Stat | None = procfs.read_stat(pid, service.proc)
    except (OSError, procfs.StatError):
        stat = None
    tracker = service.tracker
    if ans.state == ALIVE:
        assert ans.life is not None
        if stat is not None and ans.life.matches(stat.start_ticks):
            return ans
        tracker.vanished(ans.life, tracker.clocks.wall(), SourceSet.LOOKUP)
        return Answer(DEAD, ans.life, "pid vanished from /proc")
    if stat is not None and stat.start_ticks == ticks:
        info = procfs.capture_closed(pid, service.proc, tracker.argv_max)
        if info is not None and info.stat.start_ticks == ticks:
            return Answer(ALIVE, tracker.found(info, SourceSet.LOOKUP), "found in /proc")
    return ans
