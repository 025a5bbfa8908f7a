"""A source that replays a scripted sequence of observations: drives the tracker in tests.

Test-only: it stands in for the kernel sources (app/sources/audit.py, proc.py) behind the
same `Source` interface, so the tracker, registry, journal and API run for real without root.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING

from app.sources.base import OK, STOPPED, Sink, SourceHealth
from app.sources.observations import Observation

if TYPE_CHECKING:
    from app.sources.base import Source


class ScriptedSource:
    """An event source whose observations come from the test, not the kernel.

    `start` replays `script` into the sink, one observation per event-loop turn; `push`
    delivers one more at any time (after `start`). Its health is `ok` while started, with one
    counter, `delivered`: every observation handed to the sink so far.
    """

    def __init__(self, name: str = "script", script: Iterable[Observation] = ()) -> None:
        self.name = name
        self._script = list(script)
        self._sink: Sink | None = None
        self._health = SourceHealth()
        self._task: asyncio.Task[None] | None = None

    async def start(self, sink: Sink) -> None:
        self._sink = sink
        self._health = SourceHealth(OK, "replaying", 0.0, {"delivered": 0})
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        for obs in self._script:
            self.push(obs)
            await asyncio.sleep(0)

    def push(self, obs: Observation) -> None:
        """Deliver `obs` to the sink now, as a kernel reader's callback would."""
        assert self._sink is not None, "start() first"
        self._sink.submit(obs)
        self._health.counters["delivered"] += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._health.state, self._health.reason = STOPPED, "stopped"

    def resynced(self, at: float) -> None:
        pass

    def health(self) -> SourceHealth:
        return self._health


if TYPE_CHECKING:
    _is_a_source: type[Source] = ScriptedSource  # mypy checks it implements the interface
