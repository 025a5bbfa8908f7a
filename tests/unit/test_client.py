"""The client's stream against a server that drops the connection after every event: it
reconnects with the last cursor each time, and a refused subscription raises."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from app.client import Lifewatch, LifewatchError


async def test_the_stream_resumes_after_the_last_cursor() -> None:
    asked: list[str | None] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        after = request.query.get("after")
        asked.append(after)
        if request.query.get("pid") == "0":
            raise web.HTTPBadRequest(text='{"error": "bad_request", "detail": "pid"}')
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        nxt = int(after or 0) + 1
        events: list[dict[str, Any]] = [{"cursor": nxt, "type": "died", "at": "t"}]
        if nxt == 2:  # a lagging message names the cursor to resume after; not a new one
            events.insert(0, {"cursor": 1, "type": "lagging", "at": "t", "resume_after": 1})
        for ev in events:
            await ws.send_str(json.dumps(ev))
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/v1/stream", stream)
    async with TestServer(app) as server:
        url = f"http://127.0.0.1:{server.port}"
        async with Lifewatch(url, token="t") as lw:
            got = []
            gen = lw.stream({"types": "died"}, retry=0.01)
            async for ev in gen:
                got.append((ev.type, ev.cursor))
                if len(got) == 4:
                    break
            await gen.aclose()
            assert got == [("died", 1), ("lagging", 1), ("died", 2), ("died", 3)]
            assert asked == [None, "1", "2"]
            refused = lw.stream({"pid": "0"})
            try:
                await anext(refused)
                raise AssertionError("a refused stream must raise")
            except LifewatchError as e:
                assert e.status == 400
