"""The interface every event source implements, and its health report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from app.sources.observations import Observation

OK, DEGRADED, FAILED, STOPPED = "ok", "degraded", "failed", "stopped"


class Sink(Protocol):
    """Where a source delivers observations. `submit` never blocks and never awaits:
    a kernel reader must not wait on anything downstream."""

    def submit(self, obs: Observation) -> None: ...


@dataclass(slots=True)
class SourceHealth:
    state: str = STOPPED
    reason: str = "not started"
    since: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)


class Source(Protocol):
    """An async event source, started and stopped by the app."""

    name: str

    async def start(self, sink: Sink) -> None:
        """Open the kernel interface and begin delivering. Raises on a fatal setup error."""

    async def stop(self) -> None:
        """Stop delivering and leave the kernel as it was found."""

    def resynced(self, at: float) -> None:
        """The tracker repaired its state from /proc at wall time `at`."""

    def health(self) -> SourceHealth: ...
