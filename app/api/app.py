"""The aiohttp application: routes, error middleware, service start/stop, clean shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import WSCloseCode, web

from app.api import browsers, dashboard, events, follow, lives, metrics, node, stream, watches
from app.api import cluster as cluster_api
from app.api.callers import TOKENS, HidePid, identify, load_tokens
from app.api.callers import routes as caller_routes
from app.api.connections import install as install_connections
from app.api.connections import routes as connection_routes
from app.api.errors import json_errors
from app.api.follow import BUDGET, FollowBudget
from app.api.keys import ANSWERS, ENCODER, SERVICE, SOCKETS
from app.api.lifejson import LifeEncoder
from app.api.limits import GATES, REFUSALS, LimitsCollector, Refusals
from app.api.lookup import Answers
from app.core.service import Service


def make_app(service: Service, manage: bool = True) -> web.Application:
    """The API for `service`; with `manage`, the app starts and stops the service."""
    # Read, or generated into root-only files, once (app/api/callers.py).
    tokens = load_tokens(service.config)
    who = identify(service.config, tokens, HidePid(service.proc))
    app = web.Application(
        # Errors outermost, so the browser rules' refusals leave as JSON too; then who asks.
        middlewares=[json_errors, browsers.keep_out(service.config), who],
        client_max_size=service.config.max_request_bytes,
    )
    app[TOKENS] = tokens
    app[REFUSALS] = Refusals()
    app[GATES] = {}  # filled by app/api/listen.py when it opens the listeners
    app[BUDGET] = FollowBudget(service.config.max_follow_per_caller, app[REFUSALS])
    app[SERVICE] = service
    app[SOCKETS] = set()
    encoder = LifeEncoder.for_node(service.node, service.config.max_message_bytes)
    # The registry encodes a life's head through it at birth and exec while stream clients
    # listen (Registry._prepare): the core holds the encoder without importing the API.
    service.registry.encoder = encoder
    app[ENCODER] = encoder
    app[ANSWERS] = Answers(service, encoder)
    # lives first: the lookup is the hot route, and aiohttp tries routes in order.
    for module in (lives, node, events, stream, follow, watches, metrics, dashboard):
        app.add_routes(module.routes)
    app.add_routes(caller_routes)
    app.add_routes(cluster_api.routes)
    app.add_routes(connection_routes)
    install_connections(app)
    metrics.install(app)
    app[metrics.METRICS].registry.register(LimitsCollector(app[REFUSALS], app[GATES]))
    if manage:
        app.cleanup_ctx.append(_run_service)
    cluster_api.install(app)  # after the service: the cluster starts once it runs
    app.on_shutdown.append(_close_sockets)
    return app


async def _run_service(app: web.Application) -> AsyncIterator[None]:
    await app[SERVICE].start()
    yield
    await app[SERVICE].stop()


async def _close_sockets(app: web.Application) -> None:
    sockets: set[web.WebSocketResponse] = app[SOCKETS]
    for ws in sockets.copy():
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
