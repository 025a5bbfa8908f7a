"""`GET /v1/lives?since=…&until=…`: dead lives by death time over the whole retained history.

With the durable journal the answer comes from the database (app/core/history.py), every
boot it keeps, each life in its own boot's identity (boot_id, dates from that boot's
btime); pages continue with `next` (`h<boot>.<key>`). Lives that died in the last commit
interval may not be there yet (docs/storage.md). Without it (memory only) the registry's
dead lives of this run answer, paged as the rest of /v1/lives.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from app.api.callers import caller_of
from app.api.errors import ApiError
from app.api.jsontext import BytePage, dumps
from app.api.keys import SERVICE
from app.api.lifejson import LifeEncoder
from app.api.models import LivesQuery
from app.core.history import HistoryQuery, query_history
from app.core.identity import TickClock
from app.core.store import ORDS, Boot


def is_history(q: LivesQuery) -> bool:
    return q.since is not None or q.until is not None or (q.after or "").startswith("h")


async def history_page(request: web.Request, q: LivesQuery) -> web.Response:
    service = request.app[SERVICE]
    if q.state == "alive":
        raise ApiError(400, "bad_query", "since/until select lives by death time: not alive")
    if q.ppid is not None or q.canary is not None:
        raise ApiError(400, "bad_query", "since/until take comm and exe, not ppid or canary")
    store = service.store
    if store is None:
        raise ApiError(404, "no_history", "the durable journal is off (state_dir, store)")
    after = None
    if q.after is not None:
        if not q.after.startswith("h"):
            raise ApiError(400, "bad_query", "a history page continues from an h… `next`")
        ord, key = (int(x) for x in q.after[1:].split("."))
        if ord > ORDS or key >= 1 << 63:
            raise ApiError(400, "bad_query", "not a `next` this daemon gave")
        after = (ord, key)
    hq = HistoryQuery(q.since, q.until, q.comm, q.exe, after, q.limit)
    got = await asyncio.to_thread(query_history, store, hq)
    encoders: dict[int, LifeEncoder] = {}
    page = BytePage(service.config.page_bytes)
    last = None
    caller = caller_of(request)  # the same rules as every other answer (docs/security.md)
    for boot, view in got.lives:
        if not caller.shows(view.uid):
            continue
        enc = encoders.get(boot.ord) or encoders.setdefault(boot.ord, _encoder(boot))
        if not page.add(enc.life_bytes(view, not caller.details(view.uid))):
            break
        last = (boot.ord, view.start_ticks << 23 | view.pid)
    more = got.last is not None or len(page) < len(got.lives)
    nxt = dumps(f"h{last[0]}.{last[1]}") if more and last is not None else b"null"
    body = b'{"lives":[' + page.joined() + b'],"next":' + nxt + b"}"
    return web.Response(body=body, content_type="application/json")


def _encoder(boot: Boot) -> LifeEncoder:
    return LifeEncoder(boot.host, boot.boot_id, TickClock(boot.btime, boot.hz))
