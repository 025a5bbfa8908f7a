"""Answers "is this life alive?": the registry first, /proc as evidence, never a guess."""

from __future__ import annotations

import time
from typing import Any

from app import procfs
from app.identity import LifeId
from app.life import ALIVE, DEAD, UNKNOWN, Life, SourceSet
from app.registry import Answer
from app.service import Service


def lookup(service: Service, pid: int, ticks: int) -> Answer:
    """The registry's answer, checked against /proc for the pid now.

    An `alive` answer is confirmed by reading the pid's `stat` (a few microseconds): if the
    pid is gone or held by another start, the sources missed a death; the life becomes
    `dead` (exit unknown, cause `vanished`), a gap is journaled and a resync requested.
    A life the registry does not know but /proc shows is learned and answered `alive`.
    """
    reg = service.registry
    ans = reg.answer(pid, ticks)
    if ans.state == DEAD:
        return ans
    try:
        stat: procfs.Stat | None = procfs.read_stat(pid, service.proc)
    except (OSError, procfs.StatError):
        stat = None
    if ans.state == ALIVE:
        assert ans.life is not None
        if stat is not None and ans.life.matches(stat.start_ticks):
            return ans
        _vanished(service, ans.life)
        return Answer(DEAD, ans.life, "pid vanished without an exit event")
    if stat is not None and stat.start_ticks == ticks:
        info = procfs.capture_closed(pid, service.proc)
        if info is not None and info.stat.start_ticks == ticks:
            life = reg.learned(info, SourceSet.LOOKUP)
            return Answer(ALIVE, life, "found in /proc")
    return ans


def _vanished(service: Service, life: Life) -> None:
    now = time.time()
    service.registry.died(life, None, now, "vanished", SourceSet.LOOKUP)
    service.registry.note(
        "gap",
        {"source": "lookup", "reason": "missed_death",
         "detail": f"pid {life.pid} vanished without an exit event", "since": None, "until": now},
        now,
    )  # fmt: skip
    service.tracker.request_resync("a lookup found a missed death")


def answer_json(service: Service, lid: LifeId, asked: str) -> dict[str, Any]:
    """The response object of a lookup (openapi.yaml `LifeAnswer`)."""
    node = service.node
    clock = node.clock
    if lid.host != node.hostname:
        return _unknown(asked, f"{lid.host} is another host; no cluster peer is configured")
    ticks = lid.ticks(clock)
    ident = f"{lid.host}/{lid.pid}/{clock.date_of(ticks)}"
    ans = lookup(service, lid.pid, ticks)
    life = None if ans.life is None else service.registry.life_dict(ans.life)
    return {
        "id": ident,
        "state": ans.state,
        "reason": ans.reason,
        "died_at": life["died_at"] if life else None,
        "exit": life["exit"] if life else None,
        "life": life,
    }


def _unknown(asked: str, reason: str) -> dict[str, Any]:
    return {"id": asked, "state": UNKNOWN, "reason": reason,
            "died_at": None, "exit": None, "life": None}  # fmt: skip
