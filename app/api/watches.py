"""Routes for watches: list and read (open), define and remove (bearer token)."""

from __future__ import annotations

import re

from aiohttp import web

from app.api.auth import require_token
from app.api.errors import ApiError
from app.api.keys import SERVICE
from app.core.watches import Watch, WatchEngine, WatchSpec

routes = web.RouteTableDef()
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not _NAME.match(name):
        raise ApiError(400, "bad_name", "a watch name is 1-64 of A-Z a-z 0-9 _ . -")
    return name


def _get(engine: WatchEngine, name: str) -> Watch:
    watch = engine.watches.get(name)
    if watch is None:
        raise ApiError(404, "not_found", f"no watch named {name!r}")
    return watch


@routes.get("/v1/watches")
async def list_watches(request: web.Request) -> web.Response:
    engine = request.app[SERVICE].watches
    views = [engine.view(w) for _, w in sorted(engine.watches.items())]
    return web.json_response({"watches": views})


@routes.get("/v1/watches/{name}")
async def get_watch(request: web.Request) -> web.Response:
    engine = request.app[SERVICE].watches
    return web.json_response(engine.view(_get(engine, _name(request))))


@routes.put("/v1/watches/{name}")
async def put_watch(request: web.Request) -> web.Response:
    require_token(request)
    name = _name(request)
    spec = WatchSpec.model_validate_json(await request.read())
    service = request.app[SERVICE]
    watch, created = service.watches.define(name, spec)
    service.watch_store.defined(name, spec)
    return web.json_response(service.watches.view(watch), status=201 if created else 200)


@routes.delete("/v1/watches/{name}")
async def delete_watch(request: web.Request) -> web.Response:
    require_token(request)
    name = _name(request)
    service = request.app[SERVICE]
    view = service.watches.view(_get(service.watches, name))
    service.watches.remove(name)
    service.watch_store.removed(name)
    return web.json_response(view)
