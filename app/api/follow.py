"""Routes to follow a life with a pidfd: its death is then reported even if every event source
loses it. The WebSocket stream's `life=` filter follows through `follow_for_stream`."""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.api.callers import NOBODY, Caller, caller_of
from app.api.connections import GATE, PartnerKey, connections_json, connections_of, shown_to
from app.api.errors import ApiError
from app.api.keys import CLUSTER, ENCODER, SERVICE
from app.api.lifejson import LifeEncoder
from app.api.limits import Refusals
from app.core.follow import FollowError
from app.core.identity import LifeId, parse_life_id, same_host
from app.core.partners import Resolution
from app.core.service import Service

routes = web.RouteTableDef()

STATUS = {"follow_limit": 409, "not_found": 404, "no_descriptors": 503}


class FollowBudget:
    """Lives each caller has followed (Config.max_follow_per_caller): one caller cannot fill
    the daemon's follow table for everyone (issue 10: 1,023 follows, then 409 for all). A
    hold ends when the follower lets the life go (its death, a stream's close)."""

    def __init__(self, limit: int, refused: Refusals) -> None:
        self.limit = limit
        self.refused = refused
        self._held: dict[str, set[tuple[int, int]]] = {}

    def held(self, key: str, service: Service) -> int:
        lives = self._held.get(key)
        if not lives:
            return 0
        for pid, ticks in list(lives):
            life = service.follower.following(pid)
            if life is None or life.start_ticks != ticks:
                lives.discard((pid, ticks))
        return len(lives)

    def check(self, key: str, service: Service, pid: int) -> None:
        lives = self._held.get(key, set())
        if any(p == pid for p, _ in lives):
            return  # following it again costs nothing
        if self.held(key, service) >= self.limit:
            self.refused("follow_per_caller")
            raise ApiError(
                429, "follow_limit_per_caller",
                f"this caller ({key}) already follows {self.limit} lives "
                "(max_follow_per_caller); they are released when they die",
            )  # fmt: skip

    def add(self, key: str, pid: int, ticks: int) -> None:
        self._held.setdefault(key, set()).add((pid, ticks))


BUDGET = web.AppKey("follow_budget", FollowBudget)


class FollowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    life: str | None = Field(None, max_length=400, description="host/pid/start")
    partners_of: str | None = Field(
        None, max_length=400, description="host/pid/start: follow every current partner of it"
    )

    @model_validator(mode="after")
    def _one(self) -> FollowRequest:
        if (self.life is None) == (self.partners_of is None):
            raise ValueError("give exactly one of `life` and `partners_of`")
        return self


def _ticks(service: Service, lid: LifeId) -> int:
    if not same_host(lid.host, service.node.hostname):
        raise ApiError(404, "not_found", f"{lid.host} is another host; follow it there")
    return lid.ticks(service.node.clock)


def follow_json(
    service: Service, enc: LifeEncoder, lid: LifeId, caller: Caller = NOBODY
) -> dict[str, Any]:
    """Follow `lid`; the answer says whether a pidfd now holds it, and the life."""
    try:
        life = service.follower.follow(lid.pid, _ticks(service, lid))
    except FollowError as e:
        raise ApiError(STATUS.get(e.error, 409), e.error, e.detail) from None
    return {
        "id": service.node.life_id(life.pid, life.start_ticks),
        "state": life.state,
        "following": life.alive,
        "followed": len(service.follower),
        "max_follow": service.follower.limit,
        "life": enc.life_json(life.snapshot(), not caller.details(life.uid)),
    }


def follow_for_stream(service: Service, pid: int, ticks: int) -> bool:
    """Follow a life for a WebSocket subscribed to it; True when the caller must `release`
    it on close. A full follow table refuses the stream (409); a life that is not running
    is streamed without a pidfd (a resumed stream may replay its death)."""
    try:
        life = service.follower.follow(pid, ticks)
    except FollowError as e:
        if e.error in ("follow_limit", "no_descriptors"):
            raise ApiError(STATUS[e.error], e.error, e.detail) from None
        return False
    return life.alive


async def partner_notes(
    request: web.Request, res: Resolution
) -> dict[PartnerKey, list[dict[str, Any]]]:
    """Each partner life (host, pid, ticks) with the connections it was found through: the
    ones found now (on this node or, with a cluster, on the node holding the far end), and
    those found for the same life before (connections.GATE remembers)."""
    app = request.app
    service = app[SERVICE]
    me = service.node.hostname
    notes: dict[PartnerKey, list[dict[str, Any]]] = {}
    daemon = os.getpid()  # a client's connection to lifewatch itself makes no partner
    for conn in shown_to(request, await connections_json(app, res)):
        for p in conn["peers"]:
            key = (p["host"], p["pid"], p["start_ticks"])
            if key == (me, res.pid, res.start_ticks) or (p["host"] == me and p["pid"] == daemon):
                continue
            notes.setdefault(key, []).append(conn)
    return app[GATE].remember((res.pid, res.start_ticks), notes)


async def follow_partners(request: web.Request, of: LifeId) -> dict[str, Any]:
    """Follow every life at the other end of `of`'s connections (and those found for it
    before: their deaths, if they died since, are answered as they are). A partner on another
    node is followed there, by its owner, with a pidfd (its death comes back on the cluster's
    deaths subject)."""
    service, enc = request.app[SERVICE], request.app[ENCODER]
    cluster = request.app.get(CLUSTER)
    caller = caller_of(request)
    res = await connections_of(request, of)
    me = service.node.life_id(res.pid, res.start_ticks)
    partners: list[dict[str, Any]] = []
    for (host, pid, ticks), via in (await partner_notes(request, res)).items():
        if host != service.node.hostname:
            if cluster is None:
                continue
            text = f"{host}/{pid}/{ticks}"
            status, body = await cluster.asker.follow(text, host)
            life_json = body.get("life") if isinstance(body.get("life"), dict) else None
            partners.append({
                "id": body.get("id", text) if status == 200 else text,
                "state": body.get("state", "unknown") if status == 200 else "unknown",
                "following": bool(status == 200 and body.get("following")), "via": via,
                "life": life_json, **({} if status == 200 else {"reason": body.get("detail")}),
            })  # fmt: skip
            continue
        try:
            life = service.follower.follow(pid, ticks)
        except FollowError as e:
            if e.error == "not_found":  # a partner found earlier, since forgotten
                continue
            raise ApiError(STATUS.get(e.error, 409), e.error, e.detail) from None
        partners.append({
            "id": service.node.life_id(pid, ticks), "state": life.state,
            "following": life.alive, "via": via,
            "life": enc.life_json(life.snapshot(), not caller.details(life.uid)),
        })  # fmt: skip
    return {"partners_of": me, "partners": partners, "followed": len(service.follower),
            "max_follow": service.follower.limit}  # fmt: skip


@routes.post("/v1/follow")
async def follow(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body = FollowRequest.model_validate_json(await request.read())
    if body.partners_of is not None:
        return web.json_response(await follow_partners(request, parse_life_id(body.partners_of)))
    assert body.life is not None
    enc = request.app[ENCODER]
    lid = parse_life_id(body.life)
    cluster = request.app.get(CLUSTER)
    if cluster is not None and not same_host(lid.host, service.node.hostname):
        # Its owner follows it with a pidfd; the death comes back on the deaths subject.
        status, answer = await cluster.asker.follow(body.life, lid.host)
        return web.json_response(answer, status=status)
    caller = caller_of(request)
    if same_host(lid.host, service.node.hostname):
        known = service.registry.find(lid.pid, lid.ticks(service.node.clock))
        if known is not None and not caller.shows(known.uid):
            raise ApiError(404, "not_found", f"no process {lid.pid} is running now")
    budget = request.app[BUDGET]
    budget.check(caller.key, service, lid.pid)
    answer = follow_json(service, enc, lid, caller)
    if answer["following"]:
        budget.add(caller.key, lid.pid, answer["life"]["start_ticks"])
    return web.json_response(answer)
