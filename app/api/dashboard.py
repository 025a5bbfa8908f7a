"""The operator's dashboard: static HTML, JS and CSS from `static/`, no build step.

The page reads `/v1/node`, `/v1/lives`, `/v1/watches` and `/metrics`, then follows
`/v1/stream`; everything it shows is what any API client can get.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from app.api.errors import ApiError

STATIC = Path(__file__).parent / "static"
# Only the files shipped with the package are served: no path from the request reaches
# the filesystem.
FILES = frozenset(p.name for p in STATIC.iterdir() if p.is_file() and p.name != "index.html")
NO_CACHE = {"Cache-Control": "no-cache"}  # an upgraded daemon serves its own page at once
# Named here, not guessed from the machine's mime.types (which says application/javascript
# on some): the answer matches openapi.yaml everywhere.
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
routes = web.RouteTableDef()


@routes.get("/")
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers=NO_CACHE)


@routes.get("/static/{file}")
async def static(request: web.Request) -> web.FileResponse:
    name = request.match_info["file"]
    if name not in FILES:
        raise ApiError(404, "not_found", f"no dashboard file {name!r}")
    ctype = TYPES.get(Path(name).suffix, "application/octet-stream")
    return web.FileResponse(STATIC / name, headers=NO_CACHE | {"Content-Type": ctype})
