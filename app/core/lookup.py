"""Answers "is this life alive?": the registry first, /proc as evidence, never a guess."""

from __future__ import annotations

import os
import time
from json.encoder import encode_basestring_ascii as _quote

from app import procfs
from app.core.identity import LifeId
from app.core.life import ALIVE, DEAD, UNKNOWN, Life, SourceSet, iso
from app.core.registry import Answer, LifeText
from app.core.service import Service


def lookup(service: Service, pid: int, ticks: int) -> Answer:
    """The registry's answer, checked against /proc for the pid now.

    An `alive` answer is confirmed: while every event source is `ok`, by checking that the
    pid exists (one kill(pid, 0)); otherwise by reading its `stat` and comparing the start.
    If the pid is gone or held by another start, the sources missed a death: the life
    becomes `dead` (exit unknown, cause `vanished`), a gap is journaled and a resync
    requested. A life the registry does not know but /proc shows is learned, `alive`.
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
        {"source": "lookup", "reason": "missed_death", "since": None, "until": iso(now),
         "detail": f"pid {life.pid} vanished without an exit event"},
        now,
    )  # fmt: skip
    service.tracker.request_resync("a lookup found a missed death")


def answer_text(service: Service, lid: LifeId, asked: str) -> str:
    """The JSON text of a lookup's answer (openapi.yaml `LifeAnswer`).

    Written as text around the life's cached JSON: a repeated lookup of an unchanged life
    encodes nothing but the small envelope (bench/lookup_wrk.py: the hot path of the API).
    """
    node = service.node
    clock = node.clock
    if lid.host != node.hostname:
        reason = f"{lid.host} is another host; no cluster peer is configured"
        return _envelope(asked, UNKNOWN, reason, None)
    ticks = lid.ticks(clock)
    ans = lookup(service, lid.pid, ticks)
    life = None if ans.life is None else service.registry.life_text(ans.life)
    ident = f"{lid.host}/{lid.pid}/{clock.date_of(ticks)}"
    return _envelope(ident, ans.state, ans.reason, life)


def _envelope(ident: str, state: str, reason: str, life: LifeText | None) -> str:
    # encode_basestring_ascii is json's own C string encoder: a third of json.dumps's time.
    head = f'{{"id":{_quote(ident)},"state":"{state}","reason":{_quote(reason)}'

    if life is None:
        return head + ',"died_at":null,"exit":null,"life":null}'
    return f'{head},"died_at":{life.died_at},"exit":{life.exit},"life":{life.text}}}'
