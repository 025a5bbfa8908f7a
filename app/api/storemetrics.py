"""The durable journal as /metrics and /v1/node show it (app/core/store.py): its size on
disk, its writer's queue and commit latency, what it could not write. Read at scrape time
from counters the writer keeps; nothing here touches the database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from app.core.life import iso

if TYPE_CHECKING:
    from app.core.service import Service


def store_json(service: Service) -> dict[str, Any]:
    st = service.store
    if st is None:
        why = "configured off" if not service.config.store else "no state_dir, or cannot open"
        return {"state": "off", "reason": why if service.config.state_dir else "no state_dir"}
    return {
        "state": "on",
        "path": str(st.path),
        "boot_ord": st.boot_ord,
        "bytes": st.file_bytes(),
        "used_bytes": st.used,
        "queue": st.depth,
        "queue_limit": st.settings.queue,
        "dropped": st.dropped,
        "commits": st.commits,
        "last_commit": iso(st.last_commit) if st.last_commit else None,
        "commit_interval": st.settings.commit_interval,
        "commit_max_seconds": round(st.commit_max, 6),
        "failures": st.failures,
        "retention_days": st.settings.retention / 86400.0,
        "max_bytes": st.settings.max_bytes,
    }


def store_metrics(service: Service) -> Iterator[Metric]:
    st = service.store
    g = GaugeMetricFamily("lifewatch_store_up", "1 when events and lives are kept on disk")
    g.add_metric([], 0 if st is None else 1)
    yield g
    if st is None:
        return
    g = GaugeMetricFamily("lifewatch_store_bytes", "Size of the database file and its WAL")
    g.add_metric([], st.file_bytes())
    yield g
    g = GaugeMetricFamily("lifewatch_store_used_bytes", "Bytes of database pages in use")
    g.add_metric([], st.used)
    yield g
    g = GaugeMetricFamily("lifewatch_store_queue_depth", "Items waiting for the next commit")
    g.add_metric([], st.depth)
    yield g
    g = GaugeMetricFamily("lifewatch_store_queue_limit", "Items the writer's queue holds")
    g.add_metric([], st.settings.queue)
    yield g
    h = HistogramMetricFamily(
        "lifewatch_store_commit_seconds", "Time of one group commit (the writer thread's)"
    )
    h.add_metric([], [(str(b), float(n)) for b, n in st.commit_histogram()], st.commit_sum)
    yield h
    for name, doc, value in (
        ("lifewatch_store_dropped", "Events not written: the writer's queue was full", st.dropped),
        ("lifewatch_store_rows_written", "Event and life rows written", st.rows),
        ("lifewatch_store_rows_deleted", "Rows deleted by retention (age, size)", st.deleted),
        ("lifewatch_store_failures", "Commits or retention passes that failed", st.failures),
    ):
        yield CounterMetricFamily(name, doc, value=value)
