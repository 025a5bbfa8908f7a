"""Journal replay over plain HTTP: the same events, cursors and resets as the stream.

An answer is bounded in bytes (Config.page_bytes) as well as in events (`limit`): events
are encoded one by one and the page stops before the one that would pass the budget, with
`next` at the last event it holds, so the client continues from there and loses nothing.
(50,000 events with 4 KiB argv each would otherwise be a 200 MB answer built in memory.)
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from app.api.callers import caller_of
from app.api.jsontext import BytePage, dumps
from app.api.keys import ENCODER, SERVICE
from app.api.models import EventsQuery
from app.core.journal import DISK_PAGE, Event, lost_on_disk

routes = web.RouteTableDef()
# Events read back from disk for one answer, at most: a filter that keeps few gets a short
# page (its `next` goes on from the last event looked at) rather than a scan of the window.
SCAN_MAX = 8 * DISK_PAGE


class _Page:
    """The answer being filled: `limit` events wanted by the query and the caller, at most
    `page_bytes`; `next` is the last event looked at (included or filtered out)."""

    def __init__(self, request: web.Request, q: EventsQuery, nxt: int) -> None:
        self.q = q
        self.enc = request.app[ENCODER]
        self.caller = caller_of(request)
        self.page = BytePage(request.app[SERVICE].config.page_bytes)
        self.next = nxt
        self.full = False

    def fill(self, events: Iterable[Event]) -> None:
        q, caller, enc = self.q, self.caller, self.enc
        for ev in events:
            if len(self.page) >= q.limit:
                self.full = True
                return
            lv = ev.life
            wanted = (q.types is None or ev.type in q.types or lost_on_disk(ev)) and (
                lv is None or caller.shows(lv.uid)
            )
            # Not ev.json(enc): that keeps the bytes in the journal, for every event replayed.
            if wanted:
                whole = lv is None or caller.details(lv.uid)
                data = enc.event_bytes(ev) if whole else enc.event_bytes_redacted(ev)
                if not self.page.add(data):
                    self.full = True
                    return
            self.next = ev.cursor


@routes.get("/v1/events")
async def events(request: web.Request) -> web.Response:
    q = EventsQuery.model_validate(dict(request.query))
    journal = request.app[SERVICE].journal
    page = _Page(request, q, q.after)
    got = journal.since(q.after)
    reset = got is None
    if got is not None:
        page.fill(got)
    elif journal.on_disk(q.after):
        # Older than memory holds: read back from the durable journal a chunk at a time
        # until the page is full (a `types` filter may keep few of them), then from memory.
        after, scanned = q.after, 0
        while not page.full and scanned < SCAN_MAX:
            back = await journal.read_back(after, DISK_PAGE)
            if back is None:
                break  # no longer on disk: what the page holds stands, `next` goes on
            reset = False
            evs, upto = back
            scanned += len(evs)
            page.fill(evs)
            if page.full:
                break
            page.next = after = upto  # every event up to it looked at
            if not journal.on_disk(after):
                page.fill(journal.since(after) or [])
                break
    if reset:
        # The cursor cannot be served: say so, and give what memory holds from its start.
        page.next = journal.oldest_cursor - 1
        page.fill(journal.since(page.next) or [])
    tail: dict[str, object] = {"next": page.next, "reset": reset}
    if reset:
        tail["reason"] = journal.reset_reason(q.after)
    body = b'{"events":[' + page.page.joined() + b"]," + dumps(tail)[1:]
    return web.Response(body=body, content_type="application/json")
