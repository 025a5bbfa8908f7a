"""Deaths a lookup found before any source reported them, each awaiting its exit report.

A lookup that finds a life's pid gone from /proc (or held by another start) has evidence of
the death, so the life is `dead` at once. Usually this is no missed event: a parent reaped
its child a moment ago and the exit event is still queued in a source's socket. So the death
is provisional: when the exit report for that life comes within the grace window, it
completes the life (exit code, cause) and nothing was lost; only a death whose report never
comes is a missed death, reported as a gap.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from app.core.journal import Event
from app.core.life import Life
from app.core.registry import life_key

# s a vanished life waits for its exit report. Reports lag the kernel by milliseconds, by
# seconds under a fork storm with stream clients (design.md fact 13): 5 s covers both, and
# a death found missing is dead at once anyway; only its gap comes this much later.
VANISH_GRACE = 5.0


@dataclass(slots=True)
class Vanished:
    life: Life
    died: Event  # the `died` journaled when the pid was found gone, completed by the report
    due: float  # monotonic time after which the report is taken as missed


class Vanishings:
    """The vanished lives awaiting their exit report, oldest first."""

    def __init__(self, mono: Callable[[], float], grace: float = VANISH_GRACE) -> None:
        self._mono = mono
        self.grace = grace
        self._by_life: OrderedDict[int, Vanished] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_life)

    def add(self, life: Life, died: Event) -> None:
        key = life_key(life.pid, life.start_ticks)
        self._by_life[key] = Vanished(life, died, self._mono() + self.grace)
        self._by_life.move_to_end(key)

    def confirm(self, life: Life) -> Vanished | None:
        """The entry of `life`, removed: its exit report came."""
        return self._by_life.pop(life_key(life.pid, life.start_ticks), None)

    def expired(self) -> list[Vanished]:
        """Entries whose grace has run out, removed: their deaths were missed."""
        now = self._mono()
        out: list[Vanished] = []
        # One grace for all: entries fall due in the order they were added.
        while self._by_life:
            first = next(iter(self._by_life.values()))
            if first.due > now:
                break
            out.append(self._by_life.popitem(last=False)[1])
        return out

    def wait(self) -> float | None:
        """Seconds until the oldest entry falls due; None when none waits."""
        if not self._by_life:
            return None
        return max(0.0, next(iter(self._by_life.values())).due - self._mono())
