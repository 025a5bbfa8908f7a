"""A lookup that finds a life's pid gone: dead at once, completed by the exit report that
follows, a gap only when none comes within the grace. Clocks are injected: nothing sleeps."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from app.core.dating import Clocks
from app.core.journal import Event
from app.core.life import DEAD, Life
from app.core.lookup import lookup
from app.core.service import Service
from app.core.tracker import RESYNC_SPACING, Tracker
from app.core.vanish import VANISH_GRACE
from app.sources.observations import Exit, Fork
from tests.helpers import make_config
from tests.scripted import ScriptedSource


@dataclass
class FakeClock:
    mono: float = 1000.0
    wall: float = 1795660000.0

    def clocks(self) -> Clocks:
        return Clocks(wall=lambda: self.wall, mono=lambda: self.mono)


@dataclass
class Rig:
    svc: Service
    clock: FakeClock
    src: ScriptedSource

    def events(self, type: str) -> list[Event]:
        return [e for e in self.svc.journal.since(0) or [] if e.type == type]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeClock()
    svc = Service(make_config(canary_interval=0), clocks=clock.clocks())
    await svc.start()
    src = ScriptedSource("proc")
    await src.start(svc.tracker)
    yield Rig(svc, clock, src)
    await svc.stop()


def vanish(rig: Rig) -> Life:
    """A real child, learned by a resync, reaped without any source telling: looked up."""
    p = subprocess.Popen(["sleep", "30"])
    rig.svc.tracker.resync("learn the child")
    life = rig.svc.registry.alive[p.pid]
    p.kill()
    p.wait()
    ans = lookup(rig.svc, p.pid, life.start_ticks)
    assert ans.state == DEAD and ans.life is life and life.cause == "vanished"
    return life


async def test_the_exit_report_completes_a_vanished_life_and_no_gap_is_told(rig: Rig) -> None:
    life = vanish(rig)
    tracker = rig.svc.tracker
    assert tracker.awaiting_exit == 1 and rig.events("gap") == []
    (died,) = [e for e in rig.events("died") if e.life and e.life.pid == life.pid]
    assert died.life is not None and died.life.exit is None  # journaled at once
    # The connector's report of the exit, dated by the kernel before the lookup.
    rig.src.push(Exit("proc", life.pid, rig.clock.wall - 0.001, code=7))
    assert life.exit is not None and life.exit.code == 7 and life.cause == "exit"
    assert died.life.exit == life.exit and died.life.cause == "exit"  # the same event, completed
    assert len([e for e in rig.events("died") if e.life and e.life.pid == life.pid]) == 1
    again = lookup(rig.svc, life.pid, life.start_ticks)
    assert again.life is life and again.life.exit == life.exit
    rig.clock.mono += VANISH_GRACE + 1
    assert tracker.settle_vanished() == 0 and rig.events("gap") == []
    c = tracker.counters
    assert (c["vanished"], c["vanished_reported"], c["missed_deaths"]) == (1, 1, 0)
    assert c["unidentified_exits"] == 0


async def test_without_a_report_the_death_is_missed_after_the_grace(rig: Rig) -> None:
    life = vanish(rig)
    tracker = rig.svc.tracker
    rig.clock.mono += VANISH_GRACE - 0.01
    assert tracker.settle_vanished() == 0 and rig.events("gap") == []
    rig.clock.mono += 0.01
    resyncs = len(rig.events("resync"))
    assert tracker.settle_vanished() == 1
    (gap,) = rig.events("gap")
    assert gap.fields is not None and gap.fields["reason"] == "missed_death"
    assert str(life.pid) in gap.fields["detail"]
    await asyncio.sleep(0)  # the resync it asked for (spacing: the last was long ago)
    assert len(rig.events("resync")) == resyncs + 1
    assert tracker.counters["missed_deaths"] == 1 and tracker.awaiting_exit == 0


async def test_an_exit_after_the_lookup_belongs_to_a_later_holder(rig: Rig) -> None:
    life = vanish(rig)
    rig.src.push(Exit("proc", life.pid, rig.clock.wall + 1.0, code=7))
    assert life.exit is None and life.cause == "vanished"
    assert rig.svc.tracker.counters["unidentified_exits"] == 1
    assert rig.svc.tracker.awaiting_exit == 1


async def test_repairs_are_spaced_by_the_injected_clock(rig: Rig) -> None:
    tracker = rig.svc.tracker
    tracker.resync("first")
    assert tracker.resync_wait() == RESYNC_SPACING
    rig.clock.mono += 0.2
    assert tracker.resync_wait() == pytest.approx(RESYNC_SPACING - 0.2)
    n = len(rig.events("resync"))
    tracker.request_resync("too soon")
    await asyncio.sleep(0)
    assert len(rig.events("resync")) == n  # held off: the loop runs it later
    rig.clock.mono += RESYNC_SPACING
    assert tracker.resync_wait() == 0.0


def test_resync_listeners_hear_the_wall_time_even_if_one_fails() -> None:
    clock = FakeClock()
    tracker = Service(make_config(), clocks=clock.clocks()).tracker
    heard: list[float] = []

    def broken(at: float) -> None:
        raise RuntimeError("listener bug")

    tracker.add_resync_listener(broken)
    tracker.add_resync_listener(heard.append)
    tracker.resync("test")
    assert heard == [clock.wall]


@dataclass
class Observer:
    parents: set[int] = field(default_factory=set)
    reports: list[tuple[str, str, int]] = field(default_factory=list)

    def seen(self, source: str, what: str, life: Life) -> None:
        self.reports.append((source, what, life.pid))


def test_children_of_an_observers_parents_are_canaries() -> None:
    tracker: Tracker = Service(make_config()).tracker
    obs = Observer({4_000_100})
    tracker.observe_canaries(obs)
    tracker.submit(Fork("proc", 4_000_101, 4_000_100, 10.0, start_ticks=500))
    tracker.submit(Fork("proc", 4_000_102, 1, 10.0, start_ticks=500))
    tracker.submit(Exit("proc", 4_000_101, 10.1, code=0))
    assert tracker.registry.alive[4_000_102].canary is False
    assert obs.reports == [("proc", "born", 4_000_101), ("proc", "died", 4_000_101)]
    tracker.observe_canaries(None)
    tracker.submit(Exit("proc", 4_000_102, 10.2, code=0))
    assert len(obs.reports) == 2
