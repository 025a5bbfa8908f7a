"""Routes about the node: identity, clock, sources' health, cursors; and the liveness probe."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from aiohttp import web

from app.api.keys import SERVICE
from app.api.storemetrics import store_json
from app.core.life import iso
from app.core.service import Service

routes = web.RouteTableDef()


def node_json(service: Service) -> dict[str, Any]:
    node, journal, reg = service.node, service.journal, service.registry
    kernel_btime = service.check_clock()
    sources = {s.name: asdict(service.source_health(s)) for s in service.sources}
    for h in sources.values():
        h["since"] = iso(h["since"]) if h["since"] else None
    return {
        "host": node.hostname,
        "boot_id": node.boot_id,
        "btime": node.clock.btime,
        "btime_kernel": kernel_btime,
        "btime_pinned_from": node.btime_pinned_from,
        # The kernel recomputes btime from the wall clock: a difference means the clock was
        # stepped since lifewatch pinned it. Dates here stay on the pinned btime.
        "clock_stepped": kernel_btime is not None and kernel_btime != node.clock.btime,
        "hz": node.clock.hz,
        "start_format": "btime + start_ticks / hz, UTC, ISO 8601 at the tick's resolution",
        "version": service.version,
        "started_at": iso(service.started_at),
        "uptime": round(time.monotonic() - service.started_mono, 3),
        "cursor": journal.last_cursor,
        "first_cursor": journal.first_cursor,
        "oldest_cursor": journal.oldest_cursor,
        "journal_size": journal.size,
        "journal_memory": journal.memory,
        "journal_disk_reads": journal.disk_reads,
        "lives_alive": len(reg.alive),
        "lives_dead": len(reg.dead),
        "history_evicted": reg.evicted,
        "subscribers": journal.subscribers,
        "stream_clients": journal.pushers,
        "subscriber_overflows": journal.overflows,
        "follow": {"max": service.follower.limit, **asdict(service.follower.stats)},
        "events": dict(journal.counts),
        "tracker": dict(service.tracker.counters),
        "loop_lag": {
            "last": round(service.loop_lag.last, 6),
            "max_10s": round(service.loop_lag.recent_max, 6),
        },
        "sources": sources,
        "store": store_json(service),
    }


@routes.get("/v1/node")
async def node(request: web.Request) -> web.Response:
    return web.json_response(node_json(request.app[SERVICE]))


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    states = {s.name: service.source_health(s).state for s in service.sources}
    ok = all(st == "ok" for st in states.values())
    return web.json_response(
        {"status": "ok" if ok else "degraded", "sources": states}, status=200 if ok else 503
    )
