"""The service: one node's identity, journal, registry, tracker and event sources, wired."""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from pathlib import Path

from app import __version__, procfs
from app.core.canary import Canary
from app.core.config import KNOWN_SOURCES, Config
from app.core.dating import Clocks
from app.core.follow import Follower
from app.core.identity import load_node_identity
from app.core.journal import Journal
from app.core.looplag import LoopLag
from app.core.partners import Bounds, Resolver
from app.core.registry import Registry
from app.core.restart import reconcile
from app.core.storeopen import attach_store, open_store
from app.core.tracker import Tracker
from app.core.watches import WatchEngine
from app.core.watchstore import WatchStore
from app.netlink.batch import confirmations
from app.sources.base import FAILED, OK, Sink, Source, SourceHealth

log = logging.getLogger(__name__)


# Each source's module is imported only when configured (a missing kernel feature then
# fails that source alone, with its own message). Each is given its own settings, not Config.
SOURCE_CLASSES = {
    "audit": ("app.sources.audit:AuditSource", Config.audit_settings),
    "proc": ("app.sources.proc:ProcConnectorSource", Config.proc_settings),
}


def build_sources(config: Config) -> list[Source]:
    """The configured kernel sources, in the order they start."""
    out: list[Source] = []
    for name in config.sources:
        where, settings_of = SOURCE_CLASSES[name]
        module, _, cls = where.partition(":")
        try:
            factory = getattr(importlib.import_module(module), cls)
            out.append(factory(settings_of(config)))
        except Exception as e:  # reported on /v1/node and /healthz, not fatal to the rest
            log.error("source %s cannot be built: %s", name, e)
            out.append(FailedSource(name, f"cannot be built: {e}"))
    return out


class FailedSource:
    """Stands for a source that could not be built or started, so its failure stays visible."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self._health = SourceHealth(FAILED, reason, time.time())

    async def start(self, sink: Sink) -> None:
        return None

    async def stop(self) -> None:
        return None

    def resynced(self, at: float) -> None:
        return None

    def health(self) -> SourceHealth:
        return self._health


class Service:
    def __init__(
        self,
        config: Config,
        sources: list[Source] | None = None,
        clocks: Clocks | None = None,
        proc: Path = procfs.PROC,
    ) -> None:
        self.config = config
        self.version = __version__
        self.proc = proc
        self.node = load_node_identity(
            config.state_dir, proc, config.node_name, config.boot_id_file
        )
        self.store, self.restored = open_store(config, self.node)
        first = None if self.restored is None else self.restored.first_cursor
        memory = None if self.store is None else config.journal_memory
        self.journal = Journal(config.journal_size, first_cursor=first, memory=memory)
        self.registry = Registry(self.node, self.journal, config.history, config.history_bytes)
        self.tracker = Tracker(self.registry, clocks, proc, config.argv_max)
        self._restored_alive = attach_store(self.store, self.restored, self.tracker)
        self._mono = self.tracker.clocks.mono
        state = config.state_dir
        self.watch_store = WatchStore(state / "watches.json" if state else None, config.watches)
        self.watches = WatchEngine(self.registry, self.watch_store.watches())
        self.sources = build_sources(config) if sources is None else sources
        self._seen_btime = self.node.clock.btime
        self._ok, self._ok_until = False, 0.0
        self.tracker.add_resync_listener(self._resynced)
        self.follower = Follower(self.tracker, config.max_follow, proc)
        self.canary: Canary | None = None
        self.loop_lag = LoopLag()
        self.partners = Resolver(proc, Bounds(config.partners_max_fds, config.partners_budget))
        self.started_at = self.tracker.clocks.wall()
        self.started_mono = self._mono()

    def _resynced(self, at: float) -> None:
        """After each repair from /proc: the clock may have been stepped, and each source
        (the ones running now, failed ones included) is told when the repair happened."""
        self.check_clock()
        for source in self.sources:
            source.resynced(at)

    def check_clock(self) -> int | None:
        """The kernel's btime now; journals a `clock` event when it moved from the last seen.

        The kernel recomputes btime from the wall clock, so a step of the clock moves it;
        lifewatch keeps its pinned btime (dates never change) and says that the clock moved.
        Called when /v1/node is read and at every resync, not on a timer of its own.
        """
        try:
            now = procfs.read_btime(self.proc)
        except (OSError, RuntimeError):
            return None
        if now != self._seen_btime:
            self.tracker.note(
                "clock",
                {"btime_pinned": self.node.clock.btime, "btime_kernel": now,
                 "btime_before": self._seen_btime, "stepped": now != self.node.clock.btime},
            )  # fmt: skip
            self._seen_btime = now
        return now

    def sources_ok(self) -> bool:
        """True when at least one source runs and every source, canary verdict included,
        is `ok`. Lookups ask on every request: the answer is kept for 0.1 s (building every
        source's health costs more than the rest of a lookup)."""
        now = self._mono()
        if now >= self._ok_until:
            self._ok = bool(self.sources) and all(
                self.source_health(s).state == OK for s in self.sources
            )
            self._ok_until = now + 0.1
        return self._ok

    async def start(self) -> None:
        # Sources first, snapshot second: a process born while /proc is read is then either
        # in the snapshot or in an event queued behind it; none falls between the two.
        for i, source in enumerate(self.sources):
            try:
                await source.start(self.tracker)
            except Exception as e:
                # One source failing (no kernel support, no privilege) leaves the others
                # running; the failure is an event, a state on /v1/node and a 503 on /healthz.
                log.error("source %s failed to start: %s", source.name, e)
                self.sources[i] = FailedSource(source.name, f"failed to start: {e}")
                self.tracker.note(
                    "source", {"source": source.name, "state": FAILED, "reason": str(e)}
                )
        self._park_execs()
        self._read_proc_first()
        t0 = self._mono()
        infos = list(procfs.snapshot(self.proc, self.config.argv_max))
        if self.restored is not None:
            reconcile(self.tracker, self.restored, self._restored_alive, infos,
                      self.tracker.clocks.wall())  # fmt: skip
            self._restored_alive = []
        n = self.tracker.load_snapshot(infos)
        log.info("snapshot: %d lives in %.3f s", n, self._mono() - t0)
        self.watches.start()
        self.loop_lag.start()
        if self.config.canary_interval > 0 and any(s.name in KNOWN_SOURCES for s in self.sources):
            canary = Canary(
                self.tracker, self.sources, self.config.canary_interval,
                self.config.canary_deadline, clock=self._mono, wall=self.tracker.clocks.wall,
            )  # fmt: skip
            try:
                await canary.start()
                self.canary = canary
            except OSError as e:  # no helper: the sources run unproven, and say so
                log.error("canary helper cannot start: %s", e)
                self.tracker.note("source", {"source": "canary", "state": FAILED,
                                              "reason": f"helper cannot start: {e}"})  # fmt: skip

    def _park_execs(self) -> None:
        """With audit (its own rules in place) and the connector both running, an exec the
        connector tells first waits for audit's report of it, which carries exe and argv
        from the exec itself, rather than reading /proc (docs/performance.md: 71 % of the
        execs of a fork+exec storm read /proc before)."""
        running = {s.name: s for s in self.sources if not isinstance(s, FailedSource)}
        audit = running.get("audit")
        if audit is None or "proc" not in running or getattr(audit, "locked", False):
            return
        self.tracker.park_execs_for("audit", audit.health().state == OK)

    def _read_proc_first(self) -> None:
        """With both kernel sources, the connector's socket is read before each read of
        audit's. The forking or exiting task sends the connector's report itself; audit's
        comes later, through kauditd, after the syscall. Read in that order, the tracker
        meets a life first in the connector's report, which dates it from the kernel's clock
        and, under a storm, often holds its exit in the same read: then /proc is not read
        (app/core/dating.py). Read by two independent timers, audit told 54% of a fork+exit
        storm's births first, each a /proc read that nearly always found the pid reaped
        (docs/performance.md, round 6)."""
        running = {s.name: s for s in self.sources if not isinstance(s, FailedSource)}
        audit, proc = running.get("audit"), running.get("proc")
        if audit is not None and hasattr(audit, "first"):
            audit.first = getattr(proc, "read_now", None)
            # And the connector's reader notes each fork and exit it tells in a table that
            # audit's reader matches its own reports against: one it finds there is
            # confirmed in a few steps instead of being told to the tracker a second time
            # (round 7 of docs/performance.md).
            if audit.first is not None and hasattr(audit, "confirm") and hasattr(proc, "confirm"):
                audit.confirm = proc.confirm = confirmations()  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.canary is not None:
            await self.canary.stop()
        self.loop_lag.stop()
        await self.watches.stop()
        self.follower.close()
        self.tracker.close()
        for source in reversed(self.sources):
            try:
                await source.stop()
            except Exception:
                log.exception("stopping source %s", source.name)
        if self.store is not None:
            # Last: what the sources reported until they stopped is written, then `clean`.
            await asyncio.to_thread(self.store.close)

    def source_health(self, source: Source) -> SourceHealth:
        """A source's health as clients see it: its own, made `degraded` by a missed canary."""
        health = source.health()
        return health if self.canary is None else self.canary.overlay(source.name, health)
