"""Journal replay over plain HTTP: the same events, cursors and resets as the stream."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from app.api.keys import ENCODER, SERVICE
from app.api.models import EventsQuery

routes = web.RouteTableDef()


@routes.get("/v1/events")
async def events(request: web.Request) -> web.Response:
    q = EventsQuery.model_validate(dict(request.query))
    service = request.app[SERVICE]
    journal = service.journal
    got = journal.since(q.after)
    reset = got is None
    if got is None:
        # The cursor cannot be served: say so, and give what the window holds from its start.
        got = journal.since(journal.oldest_cursor - 1) or []
    page: list[dict[str, Any]] = []
    nxt = q.after if not reset else journal.oldest_cursor - 1
    for ev in got:
        if len(page) >= q.limit:
            break
        nxt = ev.cursor
        if q.types is None or ev.type in q.types:
            page.append(ev.to_dict(request.app[ENCODER]))
    body = {"events": page, "next": nxt, "reset": reset}
    if reset:
        body["reason"] = journal.reset_reason(q.after)
    return web.json_response(body)
