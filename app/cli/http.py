"""The command line's requests, through the one client of the code base (app/client).

Every client command goes through here, so an unreachable daemon or an error answer reads the
same everywhere: one line on stderr and exit status 2.

Where: the daemon's Unix socket by default (`unix:PATH`, or aiohttp's `http://unix:PATH:`),
where the caller is known by its uid and needs no token; TCP when told (`--url
http://127.0.0.1:7878` or LIFEWATCH_URL). A token is never taken from the command line: it
comes from LIFEWATCH_TOKEN, or, on TCP, from the daemon's token files (readable by root).
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncGenerator, Callable
from typing import Any
from urllib.parse import urlsplit

from app.client import Lifewatch, LifewatchError, split_url

DEFAULT_SOCKET = "/run/lifewatch/lifewatch.sock"


def default_url() -> str:
    """LIFEWATCH_URL, else the Unix socket (LIFEWATCH_SOCKET or the default path), written
    `unix:PATH` as app/client does."""
    url = os.environ.get("LIFEWATCH_URL")
    return url or f"unix:{os.environ.get('LIFEWATCH_SOCKET', DEFAULT_SOCKET)}"


def split_target(url: str) -> tuple[str, str]:
    """A full request URL as (the daemon's URL, the path and query to ask)."""
    sock, full = split_url(url)
    parts = urlsplit(full)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return (f"unix:{sock}" if sock is not None else f"{parts.scheme}://{parts.netloc}"), target


def fetch(url: str, body: Any = None, method: str | None = None) -> Any:
    """GET (or POST `body` as JSON) and return the JSON answer; an error is one line on
    stderr and exit status 2, as for every lifewatch client command."""
    daemon, target = split_target(url)
    try:
        return Lifewatch(daemon).request_sync(
            method or ("GET" if body is None else "POST"), target, body
        )
    except LifewatchError as e:
        print(f"lifewatch: {e}", file=sys.stderr)
        raise SystemExit(2) from None


async def stream(
    url: str,
    params: dict[str, str],
    after: int | None,
    on_error: Callable[[str], None],
) -> AsyncGenerator[dict[str, Any], None]:
    """Events from /v1/stream for ever, reconnecting with the last cursor."""
    async with Lifewatch(url) as lw:
        try:
            async for ev in lw.stream(params, after, on_error=on_error):
                yield ev.data
        except LifewatchError as e:
            print(f"lifewatch: {e}", file=sys.stderr)
            raise SystemExit(2) from None
