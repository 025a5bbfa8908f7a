"""Connections and partners: which lives are at the other end of a life's sockets.

The resolution (app/core/partners.py) reads sock_diag and /proc/*/fd: it runs in a worker
thread, one at a time, with at most `WAITING` more queued; past that, or when its fd scan
hits its bound, the answer is 503 with the reason, and the event loop never waits on it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web

from app.api.callers import caller_of
from app.api.errors import ApiError
from app.api.keys import CLUSTER, SERVICE
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
PartnerKey = tuple[str, int, int]  # (host, pid, start ticks) of a life of any node
REMEMBERED = 1024  # lives whose partners are remembered (the least recently asked go first)


class _Gate:
    """One resolution at a time per app, and a bounded queue behind it. Also remembers, for
    the last REMEMBERED lives asked about, every partner ever found and through what: a
    partner that died while a `partners_of` client was disconnected is no longer connected
    when it resumes, and its death must still be replayed to it."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.waiting = 0
        self.partners: OrderedDict[LifeKey, dict[PartnerKey, list[Any]]] = OrderedDict()

    def remember(
        self, of: LifeKey, found: dict[PartnerKey, list[Any]]
    ) -> dict[PartnerKey, list[Any]]:
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
        "host": service.node.hostname,
        "pid": h.pid,
        "start_ticks": h.start_ticks,
        "comm": life.comm if life is not None else None,
    }


def connection_json(
    service: Service, c: Connection, speaks_for: Callable[[int], bool] | None = None
) -> dict[str, Any]:
    """One connection with the lives at its far end on this node: those this node speaks
    for (all of them, unless the test-only cluster scope narrows it)."""
    peers = [h for h in c.peers if speaks_for is None or speaks_for(h.pid)]
    out: dict[str, Any] = {
        "proto": c.proto, "state": c.state, "local": c.local, "remote": c.remote,
        "peers": [holder_json(service, h) for h in peers],
    }  # fmt: skip
    out["peer_state"] = "known" if peers else "unknown"
    if c.reason is not None:
        out["reason"] = c.reason
    elif not peers and c.peers:
        out["reason"] = "the far end is held by processes this node does not speak for"
    return out


async def connections_json(app: web.Application, res: Resolution) -> list[dict[str, Any]]:
    """Every connection of `res`, each with the lives at its far end: on this node, or, for a
    TCP peer that is not one of this node's lives, on the cluster member that holds it
    (app/cluster/partners.py: asked in parallel, each with the cluster's ask timeout)."""
    service, cluster = app[SERVICE], app.get(CLUSTER)
    speaks_for = cluster.speaks_for if cluster is not None else None
    out = [connection_json(service, c, speaks_for) for c in res.connections]
    if cluster is None:
        return out
    todo = [i for i, c in enumerate(res.connections)
            if c.proto.startswith("tcp") and c.remote and not out[i]["peers"]]  # fmt: skip
    asks = []
    for i in todo:
        c = res.connections[i]
        assert c.remote is not None
        asks.append(cluster.partners.holders_elsewhere(parse_address(c.local),
                                                       parse_address(c.remote)))  # fmt: skip
    for i, (holders, why) in zip(todo, await asyncio.gather(*asks), strict=True):
        if holders:
            out[i]["peers"], out[i]["peer_state"] = holders, "known"
            out[i].pop("reason", None)
        elif why:
            out[i]["reason"] = why
    return out


def scan_json(res: Resolution) -> dict[str, Any]:
    return {"fds": res.fds, "processes": res.processes, "seconds": round(res.seconds, 6)}


FD_PRIVATE = (
    "a life's connections are shown to root, to the life's own user and to token holders, "
    "as its /proc/<pid>/fd is (docs/security.md)"
)


async def connections_of(request: web.Request, lid: LifeId) -> Resolution:
    """The connections of a life of this node, for a caller who may see them."""
    service = request.app[SERVICE]
    pid, ticks = local_life(service, lid)
    caller = caller_of(request)
    if not caller.sees_all:
        life = service.registry.find(pid, ticks)
        if not caller.details(life.uid if life is not None else None):
            raise ApiError(403, "forbidden", FD_PRIVATE)
    return await resolve(request.app, service.partners.connections, pid, ticks)


def shown_to(request: web.Request, conns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Under hidepid, a caller is not shown other users' lives at the far ends either."""
    caller = caller_of(request)
    if not caller.hidden:
        return conns
    service, me = request.app[SERVICE], request.app[SERVICE].node.hostname
    for c in conns:
        kept = []
        for p in c["peers"]:
            life = service.registry.find(p["pid"], p["start_ticks"]) if p["host"] == me else None
            if p["host"] != me or (life is not None and caller.shows(life.uid)):
                kept.append(p)
        if len(kept) < len(c["peers"]):
            c["peers"], c["peer_state"] = kept, "known" if kept else "unknown"
            if not kept:
                c["reason"] = "the far end is another user's process (hidepid)"
    return conns


@routes.get("/v1/connections")
async def connections(request: web.Request) -> web.Response:
    q = ConnectionsQuery.model_validate(dict(request.query))
    service = request.app[SERVICE]
    res = await connections_of(request, parse_life_id(q.life))
    return web.json_response(
        {
            "life": service.node.life_id(res.pid, res.start_ticks),
            "connections": shown_to(request, await connections_json(request.app, res)),
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
    caller = caller_of(request)
    if not caller.sees_all:
        mine = [h for h in res.holders
                if (life := service.registry.find(h.pid, h.start_ticks)) is not None
                and caller.details(life.uid)]  # fmt: skip
        if not mine:
            raise ApiError(403, "forbidden", FD_PRIVATE)
    return web.json_response(
        {
            "holders": [holder_json(service, h) for h in res.holders],
            "connection": connection_json(service, res.connections[0]),
            "scan": scan_json(res),
        }
    )
