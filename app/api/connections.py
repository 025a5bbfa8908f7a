"""Connections and partners: which lives are at the other end of a life's sockets.

The resolution (app/core/partners.py) reads sock_diag and /proc/*/fd: it runs in a worker
thread, one at a time, with at most `WAITING` more queued; past that, or when its fd scan
hits its bound, the answer is 503 with the reason, and the event loop never waits on it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from aiohttp import web

from app.api.errors import ApiError
from app.api.keys import SERVICE
from app.api.models import Query
from app.core.identity import LifeId, parse_life_id
from app.core.partners import Connection, Holder, LifeGone, Resolution
from app.core.service import Service
from app.netlink.sockdiag import parse_address

routes = web.RouteTableDef()
WAITING = 8  # resolutions queued behind the running one before 503


class ConnectionsQuery(Query):
    life: str


class PeerQuery(Query):
    local: str
    remote: str


LifeKey = tuple[int, int]  # (pid, start ticks) of a life of this node
REMEMBERED = 1024  # lives whose partners are remembered (the least recently asked go first)


class _Gate:
    """One resolution at a time per app, and a bounded queue behind it. Also remembers, for
    the last REMEMBERED lives asked about, every partner ever found and through what: a
    partner that died while a `partners_of` client was disconnected is no longer connected
    when it resumes, and its death must still be replayed to it."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.waiting = 0
        self.partners: OrderedDict[LifeKey, dict[LifeKey, list[Any]]] = OrderedDict()

    def remember(self, of: LifeKey, found: dict[LifeKey, list[Any]]) -> dict[LifeKey, list[Any]]:
        """Merge `found` into what is remembered of `of`'s partners; returns all of them."""
        known = self.partners.pop(of, {})
        known.update(found)
        self.partners[of] = known
        while len(self.partners) > REMEMBERED:
            self.partners.popitem(last=False)
        return dict(known)


GATE = web.AppKey("partners_gate", _Gate)


def install(app: web.Application) -> None:
    app[GATE] = _Gate()


def local_life(service: Service, lid: LifeId) -> tuple[int, int]:
    """(pid, ticks) of a life of this node; 404 for another host's."""
    if lid.host != service.node.hostname:
        raise ApiError(
            404, "not_found", f"{lid.host} is another host: its connections are known there"
        )
    return lid.pid, lid.ticks(service.node.clock)


async def resolve(app: web.Application, job: Any, *args: Any) -> Resolution:
    """Run `job(*args)` (a Resolver method) in a worker thread, behind the gate."""
    gate = app[GATE]
    if gate.waiting >= WAITING:
        raise ApiError(503, "busy", f"{gate.waiting} connection lookups already wait; retry")
    gate.waiting += 1
    try:
        async with gate.lock:
            res: Resolution = await asyncio.get_running_loop().run_in_executor(None, job, *args)
    except LifeGone as e:
        raise ApiError(404, "not_found", str(e)) from None
    except OSError as e:
        raise ApiError(503, "sock_diag_failed", f"the kernel's socket list failed: {e}") from None
    finally:
        gate.waiting -= 1
    if not res.complete:
        b = app[SERVICE].partners.bounds
        raise ApiError(
            503, "scan_bound",
            f"finding socket holders needs more than {b.max_fds} descriptors or {b.budget} s "
            f"(read {res.fds} fds of {res.processes} processes); raise partners_max_fds or "
            "partners_budget",
        )  # fmt: skip
    return res


def holder_json(service: Service, h: Holder) -> dict[str, Any]:
    life = service.registry.find(h.pid, h.start_ticks)
    return {
        "id": service.node.life_id(h.pid, h.start_ticks),
        "pid": h.pid,
        "comm": life.comm if life is not None else None,
    }


def connection_json(service: Service, c: Connection) -> dict[str, Any]:
    out: dict[str, Any] = {
        "proto": c.proto, "state": c.state, "local": c.local, "remote": c.remote,
        "peers": [holder_json(service, h) for h in c.peers],
    }  # fmt: skip
    out["peer_state"] = "known" if c.peers else "unknown"
    if c.reason is not None:
        out["reason"] = c.reason
    return out


def scan_json(res: Resolution) -> dict[str, Any]:
    return {"fds": res.fds, "processes": res.processes, "seconds": round(res.seconds, 6)}


async def connections_of(app: web.Application, lid: LifeId) -> Resolution:
    service = app[SERVICE]
    pid, ticks = local_life(service, lid)
    return await resolve(app, service.partners.connections, pid, ticks)


@routes.get("/v1/connections")
async def connections(request: web.Request) -> web.Response:
    q = ConnectionsQuery.model_validate(dict(request.query))
    service = request.app[SERVICE]
    res = await connections_of(request.app, parse_life_id(q.life))
    return web.json_response(
        {
            "life": service.node.life_id(res.pid, res.start_ticks),
            "connections": [connection_json(service, c) for c in res.connections],
            "scan": scan_json(res),
        }
    )


@routes.get("/v1/connections/peer")
async def peer(request: web.Request) -> web.Response:
    q = PeerQuery.model_validate(dict(request.query))
    try:
        local, remote = parse_address(q.local), parse_address(q.remote)
    except ValueError as e:
        raise ApiError(400, "bad_address", str(e)) from None
    service = request.app[SERVICE]
    try:
        res = await resolve(request.app, service.partners.connection, local, remote)
    except LookupError as e:
        raise ApiError(404, "not_found", str(e)) from None
    return web.json_response(
        {
            "holders": [holder_json(service, h) for h in res.holders],
            "connection": connection_json(service, res.connections[0]),
            "scan": scan_json(res),
        }
    )
