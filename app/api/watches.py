"""Routes for watches: list and read (open), define and remove (bearer token)."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from app.api.callers import Caller, caller_of, require_admin
from app.api.errors import ApiError
from app.api.keys import SERVICE
from app.core.watches import Watch, WatchEngine, WatchSpec

routes = web.RouteTableDef()
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not _NAME.match(name) or not name.strip("."):  # `.` and `..` name no watch
        raise ApiError(400, "bad_name", "a watch name is 1-64 of A-Z a-z 0-9 _ . -, not only dots")
    return name


def _get(engine: WatchEngine, name: str) -> Watch:
    watch = engine.watches.get(name)
    if watch is None:
        raise ApiError(404, "not_found", f"no watch named {name!r}")
    return watch


def shown(engine: WatchEngine, watch: Watch, caller: Caller) -> dict[str, Any]:
    """A watch as `caller` may see it: the exe of lives it may not see in full is null and
    listed in `redacted`; lives hidden from it (hidepid) are left out of `lives`."""
    view = engine.view(watch)
    uids = [v.uid for v in sorted(watch.lives.values(), key=lambda v: v.start_ticks)]
    lives = []
    for entry, uid in zip(view["lives"], uids, strict=True):
        if not caller.shows(uid):
            continue
        if not caller.details(uid):
            entry = dict(entry, exe=None, redacted=["exe"])
        lives.append(entry)
    view["lives"] = lives
    return view


@routes.get("/v1/watches")
async def list_watches(request: web.Request) -> web.Response:
    engine = request.app[SERVICE].watches
    caller = caller_of(request)
    views = [shown(engine, w, caller) for _, w in sorted(engine.watches.items())]
    return web.json_response({"watches": views})


@routes.get("/v1/watches/{name}")
async def get_watch(request: web.Request) -> web.Response:
    engine = request.app[SERVICE].watches
    return web.json_response(shown(engine, _get(engine, _name(request)), caller_of(request)))


@routes.put("/v1/watches/{name}")
async def put_watch(request: web.Request) -> web.Response:
    require_admin(request)
    name = _name(request)
    spec = WatchSpec.model_validate_json(await request.read())
    service = request.app[SERVICE]
    watch, created = service.watches.define(name, spec)
    service.watch_store.defined(name, spec)
    return web.json_response(service.watches.view(watch), status=201 if created else 200)


@routes.delete("/v1/watches/{name}")
async def delete_watch(request: web.Request) -> web.Response:
    require_admin(request)
    name = _name(request)
    service = request.app[SERVICE]
    view = service.watches.view(_get(service.watches, name))
    service.watches.remove(name)
    service.watch_store.removed(name)
    return web.json_response(view)
