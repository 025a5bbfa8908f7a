"""How late the event loop runs: a timer that measures its own delay, for /metrics and /v1/node.

Every reader of the kernel shares one loop with the API; a late loop is a late reader. A timer
due every `interval` seconds records how much later than due it ran: zero on an idle loop,
the length of the longest stretch of work otherwise. It costs one callback per interval.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable

# Upper bounds (seconds) of the lag histogram: from "idle" to "the kernel is dropping".
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LoopLag:
    def __init__(
        self, interval: float = 0.1, window: int = 100, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self._clock = clock
        self.counts = [0] * (len(BUCKETS) + 1)  # per bucket; the last one is +Inf
        self.sum = 0.0
        self.last = 0.0
        self._recent: deque[float] = deque(maxlen=window)  # the last `window` samples
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        self._due = self._clock() + self.interval
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _tick(self) -> None:
        # uvloop's timers have a millisecond's resolution: lags below it are noise.
        self.observe(max(0.0, self._clock() - self._due))
        self._schedule()

    def observe(self, lag: float) -> None:
        self.last = lag
        self.sum += lag
        self.counts[bisect_left(BUCKETS, lag)] += 1
        self._recent.append(lag)

    @property
    def recent_max(self) -> float:
        """The largest lag of the last `window` samples (10 s at the default interval)."""
        return max(self._recent, default=0.0)

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus-style cumulative buckets, `+Inf` last."""
        out, total = [], 0
        for bound, n in zip([*map(str, BUCKETS), "+Inf"], self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out
