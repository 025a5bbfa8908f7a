"""The operator's dashboard: static HTML, JS and CSS from `static/`, no build step.

The page reads `/v1/node`, `/v1/lives`, `/v1/watches` and `/metrics`, then follows
`/v1/stream`; everything it shows is what any API client can get.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).parent / "static"
routes = web.RouteTableDef()


@routes.get("/")
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


routes.static("/static", STATIC, append_version=False)
