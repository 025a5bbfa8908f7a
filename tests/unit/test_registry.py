"""Registry and tracker driven by a scripted source: transitions, reuse, derived starts."""

from __future__ import annotations

import asyncio

from app.core.dating import DERIVED_SLACK
from app.core.life import ALIVE, DEAD, UNKNOWN
from app.core.service import Service
from app.sources.observations import Exec, Exit, Fork, Observation
from tests.helpers import make_config
from tests.scripted import ScriptedSource

# pids far above anything on the machine, so /proc never answers for them
P, Q = 4_000_001, 4_000_002


async def run(script: list[Observation], **cfg: object) -> Service:
    src = ScriptedSource("script", script)
    svc = Service(make_config(**cfg), sources=[src])
    await svc.start()
    for _ in range(len(script) + 2):
        await asyncio.sleep(0)
    return svc


def types(svc: Service) -> list[str]:
    return [e.type for e in svc.journal.since(0) or [] if e.life is not None]


async def test_birth_exec_death() -> None:
    svc = await run([
        Fork("script", P, 1, 10.0, start_ticks=500),
        Exec("script", P, 10.1, exe="/usr/bin/x", argv=("x", "-v"), comm="x", uid=7),
        Exit("script", P, 10.2, code=3),
    ])  # fmt: skip
    assert types(svc) == ["born", "exec", "died"]
    ans = svc.registry.answer(P, 500)
    assert ans.state == DEAD and ans.life is not None
    life = ans.life
    assert (life.exe, life.argv, life.uid, life.comm) == ("/usr/bin/x", ("x", "-v"), 7, "x")
    assert life.exit is not None and (life.exit.code, life.exit.signal) == (3, None)
    assert life.died_at == 10.2 and life.cause == "exit"
    assert svc.registry.answer(P, 501).state == UNKNOWN


async def test_pid_reuse_is_evidence_of_death() -> None:
    svc = await run([
        Fork("script", P, 1, 1.0, start_ticks=100),
        Fork("script", P, 1, 2.0, start_ticks=900),
    ])  # fmt: skip
    old, new = svc.registry.answer(P, 100), svc.registry.answer(P, 900)
    assert old.state == DEAD and old.life is not None and old.life.cause == "pid_reused"
    assert old.life.exit is None
    assert new.state == ALIVE


async def test_derived_start_accepts_its_slack_either_side_and_no_more() -> None:
    # A child gone before its stat could be read: start from the connector's timestamp.
    svc = await run([Fork("script", Q, 1, 1.0, mono_ns=5_000_000_000)])
    life = svc.registry.alive[Q]
    assert life.start_slack == DERIVED_SLACK == 3
    t = life.start_ticks
    assert [svc.registry.answer(Q, t + d).state for d in range(-4, 5)] == [
        UNKNOWN, ALIVE, ALIVE, ALIVE, ALIVE, ALIVE, ALIVE, ALIVE, UNKNOWN,
    ]  # fmt: skip


async def test_history_is_bounded() -> None:
    script: list[Observation] = []
    for i in range(5):
        script += [Fork("script", P + i, 1, 1.0, start_ticks=10 + i), Exit("script", P + i, 2.0)]
    svc = await run(script, history=3)
    states = [svc.registry.answer(P + i, 10 + i).state for i in range(5)]
    assert states == [UNKNOWN, UNKNOWN, DEAD, DEAD, DEAD]
    assert svc.registry.evicted == 2


async def test_a_second_report_of_a_death_is_not_a_second_death() -> None:
    svc = await run([
        Fork("script", P, 1, 1.0, start_ticks=100),
        Exit("script", P, 2.0, code=0),
        Exit("script", P, 2.0, code=0),
    ])  # fmt: skip
    assert types(svc) == ["born", "died"]
    assert svc.tracker.counters["duplicates"] == 1


async def test_alive_answer_is_confirmed_while_sources_look_healthy() -> None:
    import subprocess

    from app.core.lookup import lookup

    svc = await run([])
    assert svc.sources_ok()  # the scripted source reports ok: the cheap check is used
    p = subprocess.Popen(["sleep", "30"])
    svc.tracker.resync("learn the sleeper")
    ticks = svc.registry.alive[p.pid].start_ticks
    assert lookup(svc, p.pid, ticks).state == ALIVE
    p.kill()
    p.wait()  # reaped: the scripted source will never say so
    ans = lookup(svc, p.pid, ticks)
    assert ans.state == DEAD and ans.life is not None and ans.life.cause == "vanished"
