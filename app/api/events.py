"""Journal replay over plain HTTP: the same events, cursors and resets as the stream.

An answer is bounded in bytes (Config.page_bytes) as well as in events (`limit`): events
are encoded one by one and the page stops before the one that would pass the budget, with
`next` at the last event it holds, so the client continues from there and loses nothing.
(50,000 events with 4 KiB argv each would otherwise be a 200 MB answer built in memory.)
"""

from __future__ import annotations

from aiohttp import web

from app.api.callers import caller_of
from app.api.jsontext import BytePage, dumps
from app.api.keys import ENCODER, SERVICE
from app.api.models import EventsQuery
from app.core.journal import lost_on_disk

routes = web.RouteTableDef()


@routes.get("/v1/events")
async def events(request: web.Request) -> web.Response:
    q = EventsQuery.model_validate(dict(request.query))
    service = request.app[SERVICE]
    journal = service.journal
    enc = request.app[ENCODER]
    got = journal.since(q.after)
    start = q.after
    if got is None and journal.on_disk(q.after):
        # Older than memory holds: this page is read back from the durable journal, and
        # completed from memory when it reaches what memory holds.
        back = await journal.read_back(q.after, q.limit)
        if back is not None:
            got, upto = back
            if not got:
                start = upto  # no event in that span (cursors skip across a crash)
            if len(got) < q.limit:
                got = got + (journal.since(upto) or [])
    reset = got is None
    if got is None:
        # The cursor cannot be served: say so, and give what the window holds from its start.
        got = journal.since(journal.oldest_cursor - 1) or []
    page = BytePage(service.config.page_bytes)
    caller = caller_of(request)
    nxt = start if not reset else journal.oldest_cursor - 1
    for ev in got:
        if len(page) >= q.limit:
            break
        lv = ev.life
        wanted = (q.types is None or ev.type in q.types or lost_on_disk(ev)) and (
            lv is None or caller.shows(lv.uid)
        )
        # Not ev.json(enc): that keeps the bytes in the journal, for every event replayed.
        if wanted:
            full = lv is None or caller.details(lv.uid)
            data = enc.event_bytes(ev) if full else enc.event_bytes_redacted(ev)
            if not page.add(data):
                break
        nxt = ev.cursor
    tail: dict[str, object] = {"next": nxt, "reset": reset}
    if reset:
        tail["reason"] = journal.reset_reason(q.after)
    body = b'{"events":[' + page.joined() + b"]," + dumps(tail)[1:]
    return web.Response(body=body, content_type="application/json")
