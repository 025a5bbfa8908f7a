"""The command line's one HTTP helper: JSON requests and the resuming event stream.

Every client command goes through here, so an unreachable daemon or an error answer reads the
same everywhere: one line on stderr and exit status 2.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncGenerator, Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp


def fetch(url: str, body: Any = None) -> Any:
    """GET (or POST `body` as JSON) and return the JSON answer; an error is one line on
    stderr and exit status 2, as for every lifewatch client command."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        try:
            err = json.load(e)
            msg = f"{err.get('error')}: {err.get('detail')}"
        except ValueError:
            msg = f"HTTP {e.code} from {url}"
    except urllib.error.URLError as e:
        msg = f"cannot reach lifewatch at {url}: {e.reason}"
    print(f"lifewatch: {msg}", file=sys.stderr)
    raise SystemExit(2)


async def stream(
    url: str,
    params: dict[str, str],
    after: int | None,
    on_error: Callable[[str], None],
) -> AsyncGenerator[dict[str, Any], None]:
    """Events from /v1/stream for ever, reconnecting with the last cursor."""
    async with aiohttp.ClientSession() as session:
        while True:
            query = dict(params, **({"after": str(after)} if after is not None else {}))
            try:
                async with session.ws_connect(f"{url}/v1/stream?{urlencode(query)}",
                                              heartbeat=30) as ws:  # fmt: skip
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        ev = json.loads(msg.data)
                        after = ev["cursor"]
                        yield ev
            except aiohttp.WSServerHandshakeError as e:
                print(f"lifewatch: {e.status} {e.message}", file=sys.stderr)
                raise SystemExit(2) from None
            except aiohttp.ClientError as e:
                on_error(f"stream lost ({e}); reconnecting")
            await asyncio.sleep(1)
