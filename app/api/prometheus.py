"""Prometheus metrics, read from the service at scrape time: no cost on the event path.

Everything here is computed when `/metrics` is scraped, from state the service keeps anyway
(registry sizes, journal counts, source health, watch states), except two things that need
counting as they happen: events by source (counted by the journal as it appends them, named
by `EventCounter`) and latencies (`LatencyHistogram`, observed by whoever measures them).

The canary interface, read duck-typed so that either side can change alone:
- `service.canary.stats.verdicts`: a mapping `source name -> verdict` where a verdict has
  `passes` (int, +1 per measured round) and `latencies` (the most recent round trips in
  seconds, newest last; a bounded deque). At each scrape the samples added since the last
  scrape (`passes` grew by n: the last n of `latencies`) are observed into a cumulative
  histogram, so nothing is counted twice and scrapes further apart than the deque's length
  lose only the oldest samples (counted in `lifewatch_canary_samples_missed_total`);
- or, on `service.canary` or any source: `latencies`, a mapping `path -> LatencyHistogram`,
  or `latency`, one `LatencyHistogram` (observe into it directly).
Each path becomes `lifewatch_canary_latency_seconds{path=...}`.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from app.api.storemetrics import store_metrics
from app.core.journal import Journal
from app.core.life import source_names
from app.sources.base import DEGRADED, FAILED, OK, STOPPED, SourceHealth

if TYPE_CHECKING:
    from app.core.service import Service

log = logging.getLogger(__name__)

# From 0.1 ms (a pidfd wakeup) to 5 s (a canary that is about to be declared lost).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
)  # fmt: skip
SOURCE_STATES = (OK, DEGRADED, FAILED, STOPPED)
# Source "counters" that are levels, not counts: exported as gauges, not as *_total.
# (The audit source's: app/sources/audit.py. A canary overlay's latencies are levels too.)
LEVELS = frozenset({"backlog", "backlog_max", "pending_events", "socket_queue_bytes"})


def is_level(name: str) -> bool:
    return name in LEVELS or "latency" in name


class LatencyHistogram:
    """A fixed-bucket histogram any part of the daemon can observe into without knowing
    Prometheus; `recent` keeps the last samples for the dashboard's chart."""

    __slots__ = ("buckets", "count", "counts", "recent", "sum")

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS, recent: int = 256) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # the last is +Inf
        self.count = 0
        self.sum = 0.0
        self.recent: deque[tuple[float, float]] = deque(maxlen=recent)  # (epoch, seconds)

    def observe(self, seconds: float, at: float | None = None) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.count += 1
        self.sum += seconds
        self.recent.append((time.time() if at is None else at, seconds))

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out


class VerdictFeed:
    """Turns the canary's per-source verdicts (a count and a window of recent latencies)
    into cumulative histograms, at scrape time."""

    def __init__(self) -> None:
        self.histograms: dict[str, LatencyHistogram] = {}
        self._seen: dict[str, int] = {}
        self.missed = 0

    def update(self, canary: Any) -> dict[str, LatencyHistogram]:
        verdicts = getattr(getattr(canary, "stats", None), "verdicts", None)
        if not isinstance(verdicts, Mapping):
            return self.histograms
        for name, v in list(verdicts.items()):
            passes, window = getattr(v, "passes", None), getattr(v, "latencies", None)
            if not isinstance(passes, int) or window is None:
                continue
            hist = self.histograms.setdefault(str(name), LatencyHistogram(recent=1))
            new = passes - self._seen.get(str(name), 0)
            self._seen[str(name)] = passes
            samples = list(window)[-new:] if new > 0 else []
            self.missed += max(0, new - len(samples))
            for seconds in samples:
                hist.observe(float(seconds))
        return self.histograms


def canary_latencies(
    service: Service, feed: VerdictFeed | None = None
) -> dict[str, LatencyHistogram]:
    """Every latency histogram the canary interface (module docstring) offers."""
    canary = getattr(service, "canary", None)
    out: dict[str, LatencyHistogram] = {}
    if feed is not None and canary is not None:
        out.update(feed.update(canary))
    holders: list[Any] = [canary, *service.sources]
    for obj in holders:
        if obj is None:
            continue
        many = getattr(obj, "latencies", None)
        if isinstance(many, Mapping):
            out.update({str(k): v for k, v in many.items() if isinstance(v, LatencyHistogram)})
        one = getattr(obj, "latency", None)
        if isinstance(one, LatencyHistogram):
            out[getattr(obj, "name", "canary")] = one
    return out


class EventCounter:
    """Journal events by (type, source) and gaps by (source, reason), named at scrape time
    from the journal's own counts (Journal.by_sources, Journal.gaps: one dict update per
    event as it is appended). It used to be a journal subscriber counting in its own task;
    waking that task cost the fork storm more than counting inline (docs/performance.md)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    @property
    def gaps(self) -> dict[tuple[str, str], int]:
        return dict(self.journal.gaps)

    @property
    def by_source(self) -> dict[tuple[str, str], int]:
        """(type, source name) -> events; an event seen by two sources counts for each."""
        out: dict[tuple[str, str], int] = {}
        for (kind, bits), n in list(self.journal.by_sources.items()):
            if not bits:
                continue  # node events (gap, resync, source...) have no source bits
            for name in source_names(bits):
                out[(kind, name)] = out.get((kind, name), 0) + n
        return out


def _number(d: Mapping[str, Any], key: str) -> float | None:
    try:
        return float(d[key])
    except (KeyError, TypeError, ValueError):
        return None


class LifewatchCollector(Collector):
    """Reads the service when Prometheus scrapes."""

    def __init__(
        self,
        service: Service,
        counter: EventCounter | None = None,
        websockets: Callable[[], int] | None = None,
    ) -> None:
        self.service = service
        self.counter = counter
        self.websockets = websockets
        self.verdicts = VerdictFeed()

    def collect(self) -> Iterator[Metric]:
        yield from self._node()
        yield from self._journal()
        yield from self._sources()
        yield from self._watches()
        yield from self._canary()
        yield from self._loop()
        yield from store_metrics(self.service)

    def _loop(self) -> Iterator[Metric]:
        """How late the event loop (kernel readers and API alike) runs its timers."""
        lag = self.service.loop_lag
        h = HistogramMetricFamily(
            "lifewatch_event_loop_lag_seconds",
            "How much later than due a timer on the daemon's event loop ran",
        )
        h.add_metric([], [(b, float(n)) for b, n in lag.cumulative()], lag.sum)
        yield h
        g = GaugeMetricFamily(
            "lifewatch_event_loop_lag_max_seconds", "The largest event loop lag of the last 10 s"
        )
        g.add_metric([], lag.recent_max)
        yield g

    def _node(self) -> Iterator[Metric]:
        s = self.service
        info = InfoMetricFamily("lifewatch_build", "The daemon and the node it watches")
        info.add_metric([], {"version": s.version, "host": s.node.hostname,
                             "boot_id": s.node.boot_id})  # fmt: skip
        yield info
        g = GaugeMetricFamily("lifewatch_start_time_seconds", "When this daemon run started")
        g.add_metric([], s.started_at)
        yield g
        lives = GaugeMetricFamily(
            "lifewatch_lives", "Lives held by the registry (dead: kept for lookups)",
            labels=["state"],
        )  # fmt: skip
        lives.add_metric(["alive"], len(s.registry.alive))
        lives.add_metric(["dead"], len(s.registry.dead))
        yield lives
        yield CounterMetricFamily(
            "lifewatch_lives_evicted", "Dead lives dropped from the bounded history",
            value=s.registry.evicted,
        )  # fmt: skip
        tr = CounterMetricFamily(
            "lifewatch_tracker_anomalies", "Source reports the tracker merged or could not use",
            labels=["kind"],
        )  # fmt: skip
        for kind, n in sorted(s.tracker.counters.items()):
            tr.add_metric([kind], n)
        yield tr

    def _journal(self) -> Iterator[Metric]:
        j = self.service.journal
        ev = CounterMetricFamily(
            "lifewatch_events", "Events journaled since start, by type", labels=["type"]
        )
        for t, n in sorted(j.counts.items()):
            ev.add_metric([t], n)
        yield ev
        c = self.counter
        if c is not None:
            yield from self._by_source(c)
        g = GaugeMetricFamily("lifewatch_journal_cursor", "Cursor of the newest event")
        g.add_metric([], j.last_cursor)
        yield g
        g = GaugeMetricFamily("lifewatch_journal_window_events", "Events held in memory for replay")
        g.add_metric([], j.held)
        yield g
        yield CounterMetricFamily(
            "lifewatch_journal_disk_reads",
            "Pages of events read back from the durable journal (older than memory holds)",
            value=j.disk_reads,
        )
        yield CounterMetricFamily(
            "lifewatch_journal_disk_events",
            "Events read back from the durable journal",
            value=j.disk_events,
        )
        internal = self.service.watches.subscribed
        ws = self.websockets() if self.websockets else max(0, j.subscribers - internal)
        g = GaugeMetricFamily("lifewatch_stream_subscribers", "WebSocket stream clients")
        g.add_metric([], ws)
        yield g
        yield CounterMetricFamily(
            "lifewatch_subscriber_overflows",
            "Times a subscriber's queue filled and it had to catch up (or reset)",
            value=j.overflows,
        )

    def _by_source(self, c: EventCounter) -> Iterator[Metric]:
        bs = CounterMetricFamily(
            "lifewatch_source_events",
            "Journaled events by type and by the event source that reported them",
            labels=["type", "source"],
        )
        for (t, src), n in sorted(c.by_source.items()):
            bs.add_metric([t, src], n)
        yield bs
        gaps = CounterMetricFamily(
            "lifewatch_gaps", "Losses reported by event sources (each a gap event)",
            labels=["source", "reason"],
        )  # fmt: skip
        for (src, reason), n in sorted(c.gaps.items()):
            gaps.add_metric([src, reason], n)
        yield gaps

    def _sources(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("lifewatch_source_up", "1 when the source is ok", labels=["source"])
        state = GaugeMetricFamily(
            "lifewatch_source_state", "The source's state (one of ok, degraded, failed, stopped)",
            labels=["source", "state"],
        )  # fmt: skip
        counters = CounterMetricFamily(
            "lifewatch_source_count", "Each source's own counters (records, messages...)",
            labels=["source", "counter"],
        )  # fmt: skip
        levels = GaugeMetricFamily(
            "lifewatch_source_level", "Each source's own levels (queue depths, latencies...)",
            labels=["source", "name"],
        )  # fmt: skip
        healths = self._healths()
        for name, h in healths:
            up.add_metric([name], 1.0 if h.state == OK else 0.0)
            for st in SOURCE_STATES:
                state.add_metric([name, st], 1.0 if h.state == st else 0.0)
            for k, n in sorted(h.counters.items()):
                (levels if is_level(k) else counters).add_metric([name, k], n)
        yield from (up, state, counters, levels)
        yield from self._kernel(healths)

    def _healths(self) -> list[tuple[str, SourceHealth]]:
        """Each source's health, with the canary's verdict when the service overlays it."""
        overlay = getattr(self.service, "source_health", None)
        return [(s.name, overlay(s) if callable(overlay) else s.health())
                for s in self.service.sources]  # fmt: skip

    def _kernel(self, healths: list[tuple[str, SourceHealth]]) -> Iterator[Metric]:
        """The kernel's own audit figures (AUDIT_GET), as the audit source reports them: `lost`
        and `backlog` in its counters, `backlog_limit` in its info."""
        lost = CounterMetricFamily(
            "lifewatch_kernel_lost", "Records the kernel dropped (audit status `lost`)",
            labels=["source"],
        )  # fmt: skip
        backlog = GaugeMetricFamily(
            "lifewatch_kernel_backlog", "Records waiting in the kernel's audit queue",
            labels=["source"],
        )  # fmt: skip
        limit = GaugeMetricFamily(
            "lifewatch_kernel_backlog_limit", "The kernel's audit backlog_limit", labels=["source"]
        )
        for name, h in healths:
            both: dict[str, Any] = {**h.info, **h.counters}
            for family, key in (
                (lost, "kernel_lost"),
                (backlog, "backlog"),
                (limit, "backlog_limit"),
            ):
                if (v := _number(both, key)) is not None:
                    family.add_metric([name], v)
        yield from (lost, backlog, limit)

    def _watches(self) -> Iterator[Metric]:
        engine = self.service.watches
        lives = GaugeMetricFamily(
            "lifewatch_watch_lives", "Lives matching a watch", labels=["watch"]
        )
        ok = GaugeMetricFamily(
            "lifewatch_watch_ok", "1 when a watch's count is within its min..max", labels=["watch"]
        )
        for name, w in sorted(engine.watches.items()):
            lives.add_metric([name], w.count)
            ok.add_metric([name], 1.0 if w.ok else 0.0)
        yield lives
        yield ok

    def _canary(self) -> Iterator[Metric]:
        h = HistogramMetricFamily(
            "lifewatch_canary_latency_seconds",
            "From a canary life's fork to its report by each path, seconds",
            labels=["path"],
        )
        for path, hist in sorted(canary_latencies(self.service, self.verdicts).items()):
            h.add_metric([path], hist.cumulative(), hist.sum)
        yield h
        yield CounterMetricFamily(
            "lifewatch_canary_samples_missed",
            "Canary latencies dropped from the canary's window before a scrape read them",
            value=self.verdicts.missed,
        )
