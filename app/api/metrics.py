"""`GET /metrics` in the Prometheus text format, and the request-latency middleware.

Each app has its own CollectorRegistry (not the process-global one), so two apps in one
process, as in the tests, never collide. The service is read at scrape time by
`LifewatchCollector`; only request latency is observed as requests happen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from app.api.errors import Handler
from app.api.keys import SERVICE, SOCKETS
from app.api.prometheus import EventCounter, LifewatchCollector

routes = web.RouteTableDef()

# API answers are sub-millisecond lookups up to large list pages.
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True, slots=True)
class Metrics:
    registry: CollectorRegistry
    requests: Histogram
    counter: EventCounter
    # labels() costs 2 of the 4 us of an observation (timeit): children are kept here.
    children: dict[tuple[str, str, int], Any] = field(default_factory=dict)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = self.requests.labels(method, route, str(status))
        child.observe(seconds)


METRICS = web.AppKey("metrics", Metrics)


def install(app: web.Application) -> None:
    """Give `app` its metrics: registry, collectors, latency middleware, event counter.
    Call from make_app after SERVICE and SOCKETS are set."""
    service = app[SERVICE]
    reg = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    counter = EventCounter(service.journal)
    reg.register(LifewatchCollector(service, counter, lambda: len(app[SOCKETS])))
    requests = Histogram(
        "lifewatch_http_request_duration_seconds",
        "API request latency by route and status (WebSocket streams excluded)",
        ["method", "route", "status"],
        buckets=REQUEST_BUCKETS,
        registry=reg,
    )
    app[METRICS] = Metrics(reg, requests, counter)
    app.middlewares.insert(0, _timed)  # outermost: sees the status the client gets


@web.middleware
async def _timed(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await handler(request)  # a stream lasts as long as the client wants
    t0 = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        info = request.match_info
        route = info.route.resource.canonical if info.route.resource is not None else "unmatched"
        if info.http_exception is not None:
            route = "unmatched"
        request.app[METRICS].observe(request.method, route, status, time.perf_counter() - t0)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
