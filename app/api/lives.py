"""Routes about lives: list, holder of a pid, "is this life alive?" one or many."""

from __future__ import annotations

import asyncio
import json
import math

from aiohttp import web

from app.api.callers import caller_of, require_admin
from app.api.errors import ApiError
from app.api.history import history_page, is_history
from app.api.jsontext import BytePage, dumps
from app.api.keys import ANSWERS, CLUSTER, ENCODER, SERVICE
from app.api.limits import REFUSALS
from app.api.models import CheckRequest, LivesQuery
from app.core.identity import LifeId, LifeIdError, parse_life_id, parse_pid, parse_start
from app.core.life import Life
from app.core.tracker import RESYNC_SPACING

routes = web.RouteTableDef()

# Lives answered between two yields to the loop in one POST /v1/lives/check: three clients
# posting 10,000-entry batches raised death latency from 1.3 ms to 0.2-1.1 s (design.md
# fact 13) while each batch ran in one go. An `alive` answer reads the life's /proc stat
# (about 15 us: 29 % of the daemon's samples under those three clients, bench.profile-style
# py-spy), so 256 of them held the loop for ~4 ms: deaths p50 4.8-8.4 ms. 64: see
# docs/performance.md.
CHECK_SLICE = 64


# The lookup first: aiohttp tries routes in the order they were added.
@routes.get("/v1/lives/{pid}/{start}")
async def is_alive(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    lid = LifeId(
        service.node.hostname,
        parse_pid(request.match_info["pid"]),
        parse_start(request.match_info["start"]),
    )
    text = request.app[ANSWERS].text(lid, request.match_info["start"], caller_of(request))
    return web.Response(text=text, content_type="application/json")


@routes.get("/v1/lives")
async def list_lives(request: web.Request) -> web.Response:
    q = LivesQuery.model_validate(dict(request.query))
    service = request.app[SERVICE]
    if is_history(q) and service.store is not None:
        return await history_page(request, q)
    reg = service.registry
    if (q.after or "").startswith("h"):
        raise ApiError(400, "bad_query", "an h… `next` continues a history query")
    after = tuple(int(x) for x in q.after.split(".")) if q.after else (-1, -1)
    caller = caller_of(request)

    if is_history(q) and q.state == "alive":
        raise ApiError(400, "bad_query", "since/until select lives by death time: not alive")
    since = q.since if q.since is not None else float("-inf")
    until = q.until if q.until is not None else float("inf")
    dated = q.since is not None or q.until is not None
    state = "dead" if dated else q.state

    def wanted(life: Life) -> bool:
        died = life.died_at
        return (
            (not dated or (died is not None and since <= died < until))
            and (life.pid, life.start_ticks) > after
            and caller.shows(life.uid)
            and (q.comm is None or life.comm == q.comm)
            and (q.exe is None or life.exe == q.exe)
            and (q.ppid is None or life.ppid == q.ppid)
            and (q.canary is None or life.canary == q.canary)
        )

    found = sorted(
        (life for life in reg.lives(state) if wanted(life)),
        key=lambda life: (life.pid, life.start_ticks),
    )
    enc = request.app[ENCODER]
    # Bounded in bytes as well as by `limit` (Config.page_bytes): 10,000 lives with 4 KiB
    # of argv each would be a 45 MB answer. The first life always goes: the page advances.
    page = BytePage(service.config.page_bytes)
    for life in found[: q.limit]:
        if not page.add(enc.life_bytes(life.snapshot(), not caller.details(life.uid))):
            break
    last = found[len(page) - 1] if page else None
    more = last is not None and len(found) > len(page)
    nxt = dumps(f"{last.pid}.{last.start_ticks}") if more and last is not None else b"null"
    body = b'{"lives":[' + page.joined() + b'],"next":' + nxt + b"}"
    return web.Response(body=body, content_type="application/json")


# Not `check`: POST /v1/lives/check is another resource, and a 405 there must not list GET.
@routes.get(r"/v1/lives/{pid:(?!check$)[^/]+}")
async def holder(request: web.Request) -> web.Response:
    pid = parse_pid(request.match_info["pid"])
    service = request.app[SERVICE]
    life = service.registry.holder(pid)
    caller = caller_of(request)
    if life is None or not caller.shows(life.uid):
        raise ApiError(404, "not_found", f"no live process holds pid {pid}")
    body = request.app[ENCODER].life_bytes(life.snapshot(), not caller.details(life.uid))
    return web.Response(body=body, content_type="application/json")


@routes.post("/v1/lives/check")
async def check_many(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body = CheckRequest.model_validate_json(await request.read())
    if len(body.lives) > service.config.max_batch:
        request.app[REFUSALS]("batch_too_large")
        raise ApiError(
            413, "batch_too_large", f"{len(body.lives)} lives; at most {service.config.max_batch}"
        )
    answers = request.app[ANSWERS]
    caller = caller_of(request)
    results: list[str] = []
    lives = body.lives
    cluster, me = request.app.get(CLUSTER), service.node.hostname
    remote: list[tuple[int, LifeId, str]] = []  # other nodes' lives: asked after, in parallel
    for start in range(0, len(lives), CHECK_SLICE):
        if start:
            await asyncio.sleep(0)  # the kernel readers and other clients run in between
        for text in lives[start : start + CHECK_SLICE]:
            try:
                lid = parse_life_id(text)
                if cluster is not None and lid.host != me:
                    remote.append((len(results), lid, text))
                    results.append("")
                else:
                    results.append(answers.text(lid, text, caller))
            except LifeIdError as e:
                # One bad entry does not spoil the batch: it gets its own error.
                results.append(json.dumps({"id": text, "state": "invalid", "error": str(e)}))
    if remote and cluster is not None:
        got = await cluster.asker.answers([(lid, text) for _, lid, text in remote])
        for (i, _, _), ans in zip(remote, got, strict=True):
            results[i] = dumps(ans).decode()
    out = '{"results":[' + ",".join(results) + "]}"
    return web.Response(text=out, content_type="application/json")


@routes.post("/v1/resync")
async def resync(request: web.Request) -> web.Response:
    """A repair reads all of /proc on the event loop (0.76 s for 10,000 processes, bench/
    snapshot_10k.py) and marks lives dead: an operator's action, with the token, and no
    more often than the daemon's own repairs after gaps."""
    require_admin(request)
    tracker = request.app[SERVICE].tracker
    wait = tracker.resync_wait()
    if wait > 0:
        raise ApiError(
            429,
            "too_soon",
            f"a resync ran less than {RESYNC_SPACING} s ago; retry in {wait:.2f} s",
            {"Retry-After": str(math.ceil(wait))},
        )
    return web.json_response(tracker.resync("requested over the API"))
