"""The canary: a short life started on purpose, every `canary_interval`, that each enabled event
source must report (birth and death) within `canary_deadline`; a source that misses it is
`degraded`, one that sees it again is `ok`, and the round trip is measured.

The canary is forked by a small helper process, never by the daemon: the task registered as
the audit daemon is exempt from audit's syscall rules (design.md fact 3), so its own forks
would prove nothing about audit. The helper is a child started once; it forks one canary
per request on its stdin and answers `pid fork_time_ns` (CLOCK_MONOTONIC) on its stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.core.config import KNOWN_SOURCES
from app.core.life import Life
from app.core.tracker import Tracker
from app.sources.base import DEGRADED, OK, Source, SourceHealth
from app.sources.observations import Health

log = logging.getLogger(__name__)

# Runs with -I -S: no site, no user paths, ~15 ms to start. Reaps each canary at once.
HELPER = """
import os, sys, time
inp, out = sys.stdin.buffer, sys.stdout.buffer
while inp.readline():
    t = time.monotonic_ns()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    out.write(b"%d %d\\n" % (pid, t))
    out.flush()
"""

LATENCIES_KEPT = 256


@dataclass(slots=True)
class SourceVerdict:
    """What the canary concluded about one source."""

    state: str = OK
    reason: str = "no canary round yet"
    since: float = 0.0
    passes: int = 0
    misses: int = 0
    last_latency: float | None = None  # s from the canary's fork to this source's death report
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCIES_KEPT))

    def percentile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]


@dataclass(slots=True)
class CanaryStats:
    rounds: int = 0
    helper_failures: int = 0
    last_pid: int | None = None
    verdicts: dict[str, SourceVerdict] = field(default_factory=dict)


@dataclass(slots=True)
class _Round:
    pid: int | None = None
    born: dict[str, float] = field(default_factory=dict)
    died: dict[str, float] = field(default_factory=dict)


class Canary:
    def __init__(
        self,
        tracker: Tracker,
        sources: Sequence[Source],
        interval: float,
        deadline: float,
        checked: Callable[[Source], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.tracker = tracker
        self.sources = sources
        self.interval = interval
        self.deadline = deadline
        self._checked = checked or (lambda s: s.name in KNOWN_SOURCES)
        self._clock = clock
        self._wall = wall
        self.stats = CanaryStats()
        self._helper: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._seen: dict[int, _Round] = {}  # canary pid -> reports, kept for one round
        self._complete = asyncio.Event()
        self._want: frozenset[str] = frozenset()
        self._pid: int | None = None
        self._stopping = False
        self.parents: set[int] = set()  # the helper's pid: its children are canaries
        self._lock = asyncio.Lock()  # one round at a time (the periodic task, a test, an API)

    # -- life cycle ------------------------------------------------------------------------
    async def start(self, run: bool = True) -> None:
        """Start the helper and, with `run`, the periodic rounds."""
        await self._spawn()
        self.tracker.observe_canaries(self)
        if run:
            self._task = asyncio.create_task(self._rounds(), name="canary")

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            # Python 3.11's wait_for can swallow a cancel that lands as its inner future
            # completes (cpython#86296): the flag ends the loop whatever happens to the cancel.
            for _ in range(3):
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=1.0)
                if done:
                    break
        await self._kill_helper()
        self.tracker.observe_canaries(None)

    async def _spawn(self) -> None:
        self._helper = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", "-c", HELPER,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self.parents.add(self._helper.pid)

    async def _kill_helper(self) -> None:
        helper, self._helper = self._helper, None
        if helper is None:
            return
        self.parents.discard(helper.pid)
        if helper.stdin is not None:
            helper.stdin.close()
        try:
            await asyncio.wait_for(helper.wait(), 1.0)
        except TimeoutError:
            helper.kill()
            await helper.wait()

    async def _rounds(self) -> None:
        while not self._stopping:
            started = self._clock()
            try:
                await self.check_once()
            except Exception:
                log.exception("canary round failed")
            await asyncio.sleep(max(0.0, self.interval - (self._clock() - started)))

    # -- one round ---------------------------------------------------------------------------
    async def check_once(self) -> dict[str, bool]:
        """Start one canary and judge each checked source; returns {source: seen}."""
        async with self._lock:
            return await self._check()

    async def _check(self) -> dict[str, bool]:
        want = frozenset(
            s.name for s in self.sources
            if self._checked(s) and s.health().state in (OK, DEGRADED)
        )  # fmt: skip
        if not want:
            return {}
        self._want = want
        self._complete.clear()
        t0 = self._clock()
        fork_time = await self._fork_canary()
        if fork_time is None:
            return {}
        pid = self._pid
        assert pid is not None
        with contextlib.suppress(TimeoutError):
            left = self.deadline - (self._clock() - t0)
            if not self._is_complete(pid):
                await asyncio.wait_for(self._complete.wait(), max(0.0, left))
        seen = self._seen.pop(pid, _Round())
        self._pid = None
        self._seen.clear()  # reports of older canaries that came too late
        self.stats.rounds += 1
        return {name: self._judge(name, pid, seen, fork_time) for name in sorted(want)}

    async def _fork_canary(self) -> float | None:
        """Ask the helper for a canary; its fork time (monotonic seconds), or None when the
        helper is broken (restarted for the next round; no source is blamed for it)."""
        if self._helper is None or self._helper.returncode is not None:
            await self._kill_helper()
            await self._spawn()
        helper = self._helper
        assert helper is not None and helper.stdin is not None and helper.stdout is not None
        try:
            helper.stdin.write(b"\n")
            await helper.stdin.drain()
            line = await asyncio.wait_for(helper.stdout.readline(), self.deadline)
            pid_text, ns_text = line.split()
            pid, fork_ns = int(pid_text), int(ns_text)
        except (OSError, ValueError, TimeoutError) as e:
            self.stats.helper_failures += 1
            log.warning("canary helper failed (%s); restarting it", e)
            await self._kill_helper()
            return None
        self._pid = pid
        self.stats.last_pid = pid
        self._seen.setdefault(pid, _Round(pid))
        return fork_ns / 1e9

    def seen(self, source: str, what: str, life: Life) -> None:
        """CanaryObserver: the tracker tells each source's report of a canary's birth or
        death (possibly before the helper has told us the pid)."""
        r = self._seen.setdefault(life.pid, _Round(life.pid))
        (r.born if what == "born" else r.died).setdefault(source, self._clock())
        if self._pid == life.pid and self._is_complete(life.pid):
            self._complete.set()

    def _is_complete(self, pid: int) -> bool:
        r = self._seen.get(pid)
        return r is not None and self._want <= r.born.keys() and self._want <= r.died.keys()

    def _judge(self, name: str, pid: int, seen: _Round, fork_time: float) -> bool:
        v = self.stats.verdicts.setdefault(name, SourceVerdict(since=self._wall()))
        ok = name in seen.born and name in seen.died
        if ok:
            v.passes += 1
            v.last_latency = seen.died[name] - fork_time
            v.latencies.append(v.last_latency)
            self._set(name, v, OK, f"canary pid {pid} seen in {v.last_latency * 1e3:.1f} ms")
        else:
            v.misses += 1
            missed = [w for w, d in (("birth", seen.born), ("death", seen.died)) if name not in d]
            self._set(name, v, DEGRADED, f"canary pid {pid}: {' and '.join(missed)} not "
                      f"reported within {self.deadline:g} s")  # fmt: skip
        return ok

    def _set(self, name: str, v: SourceVerdict, state: str, reason: str) -> None:
        v.reason = reason
        if state == v.state:
            return
        v.state, v.since = state, self._wall()
        log.log(logging.WARNING if state != OK else logging.INFO, "source %s: %s", name, reason)
        self.tracker.submit(Health(name, state, reason, v.since))

    # -- what /v1/node and the metrics show -------------------------------------------------
    def overlay(self, name: str, health: SourceHealth) -> SourceHealth:
        """The source's own health, made `degraded` when the canary says so, with the
        canary's counters and latency added."""
        v = self.stats.verdicts.get(name)
        if v is None:
            return health
        out = SourceHealth(health.state, health.reason, health.since,
                           dict(health.counters), dict(health.info))  # fmt: skip
        if v.state == DEGRADED and health.state == OK:
            out.state, out.reason, out.since = DEGRADED, v.reason, v.since
        out.counters["canary_passes"] = v.passes
        out.counters["canary_misses"] = v.misses
        for label, value in (("last", v.last_latency), ("p50", v.percentile(50)),
                             ("p99", v.percentile(99))):  # fmt: skip
            if value is not None:
                out.counters[f"canary_latency_{label}_us"] = round(value * 1e6)
        out.info["canary"] = v.reason
        return out
