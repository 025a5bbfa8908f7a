"""The command line's one HTTP helper: JSON requests and the resuming event stream.

Every client command goes through here, so an unreachable daemon or an error answer reads the
same everywhere: one line on stderr and exit status 2.

Where: the daemon's Unix socket by default (`http://unix:<path>:`, the form aiohttp names
it by), where the caller is known by its uid and needs no token; TCP when told (`--url
http://127.0.0.1:7878` or LIFEWATCH_URL). A token is never taken from the command line: it
comes from LIFEWATCH_TOKEN, or, on TCP, from the daemon's token files (readable by root).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import sys
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

DEFAULT_SOCKET = "/run/lifewatch/lifewatch.sock"
UNIX = "http://unix:"
TOKEN_FILES = ("/run/lifewatch/token", "/run/lifewatch/read-token")


def default_url() -> str:
    """LIFEWATCH_URL, else the Unix socket (LIFEWATCH_SOCKET or the default path), written
    `unix:PATH` as app/client does."""
    url = os.environ.get("LIFEWATCH_URL")
    return url or f"unix:{os.environ.get('LIFEWATCH_SOCKET', DEFAULT_SOCKET)}"


def split_url(url: str) -> tuple[str | None, str]:
    """(Unix socket path or None, the URL to ask with). `unix:/run/x.sock/v1/node` is
    /v1/node on that socket (the API's paths start /v1/, /healthz or /metrics), as is
    `http://unix:/run/x.sock:/v1/node` (aiohttp's form; a socket path holds no `:`)."""
    if url.startswith(UNIX):
        path, _, rest = url[len(UNIX) :].partition(":")
        return path, "http://localhost" + rest
    if url.startswith("unix:"):
        rest = url[len("unix:") :]
        cut = min((i for i in (rest.find(p) for p in ("/v1/", "/healthz", "/metrics"))
                   if i >= 0), default=len(rest))  # fmt: skip
        return rest[:cut], "http://localhost" + rest[cut:]
    return None, url


def token(tcp: bool) -> str | None:
    """The bearer token to send: LIFEWATCH_TOKEN; on TCP, else the first readable of
    LIFEWATCH_TOKEN_FILE and the daemon's token files."""
    given = os.environ.get("LIFEWATCH_TOKEN")
    if given:
        return given.strip()
    if not tcp:
        return None
    files = [os.environ.get("LIFEWATCH_TOKEN_FILE", ""), *TOKEN_FILES]
    for f in files:
        try:
            text = Path(f).read_text().strip() if f else ""
        except OSError:
            continue
        if text:
            return text
    return None


def headers(tcp: bool, body: bool = False) -> dict[str, str]:
    out = {"Content-Type": "application/json"} if body else {}
    secret = token(tcp)
    if secret:
        out["Authorization"] = f"Bearer {secret}"
    return out


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def fetch(url: str, body: Any = None, method: str | None = None) -> Any:
    """GET (or POST `body` as JSON) and return the JSON answer; an error is one line on
    stderr and exit status 2, as for every lifewatch client command."""
    sock_path, full = split_url(url)
    parts = urlsplit(full)
    where = sock_path or f"{parts.scheme}://{parts.netloc}"
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    data = None if body is None else json.dumps(body).encode()
    conn: http.client.HTTPConnection
    if sock_path is not None:
        conn = _UnixConnection(sock_path, timeout=10)
    elif parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.netloc, timeout=10)
    else:
        conn = http.client.HTTPConnection(parts.netloc, timeout=10)
    verb = method or ("GET" if data is None else "POST")
    try:
        conn.request(verb, target, body=data, headers=headers(sock_path is None, data is not None))
        r = conn.getresponse()
        raw = r.read()
        if r.status < 400:
            return json.loads(raw)
        try:
            err = json.loads(raw)
            msg = f"{err.get('error')}: {err.get('detail')}"
        except ValueError:
            msg = f"HTTP {r.status} from {where}"
    except (OSError, http.client.HTTPException) as e:
        msg = f"cannot reach lifewatch at {where}: {e}"
    finally:
        conn.close()
    print(f"lifewatch: {msg}", file=sys.stderr)
    raise SystemExit(2)


async def stream(
    url: str,
    params: dict[str, str],
    after: int | None,
    on_error: Callable[[str], None],
) -> AsyncGenerator[dict[str, Any], None]:
    """Events from /v1/stream for ever, reconnecting with the last cursor."""
    import aiohttp  # here: `lifewatch check` and --help need not load it

    sock_path, base = split_url(url)
    connector = aiohttp.UnixConnector(sock_path) if sock_path is not None else None
    auth = headers(sock_path is None)
    # The daemon's messages are at most max_message_bytes (1 MiB by default): no event is
    # larger than this client's limit.
    async with aiohttp.ClientSession(connector=connector) as session:
        while True:
            query = dict(params, **({"after": str(after)} if after is not None else {}))
            try:
                async with session.ws_connect(f"{base}/v1/stream?{urlencode(query)}",
                                              heartbeat=30, headers=auth,
                                              max_msg_size=16 << 20) as ws:  # fmt: skip
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            if msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code not in (
                                None, 1000, 1001, 1013,
                            ):  # fmt: skip
                                on_error(f"stream closed: {ws.close_code} {msg.extra or ''}")
                            break
                        ev = json.loads(msg.data)
                        after = ev["cursor"]
                        yield ev
            except aiohttp.WSServerHandshakeError as e:
                print(f"lifewatch: {e.status} {e.message}", file=sys.stderr)
                raise SystemExit(2) from None
            except (aiohttp.ClientError, OSError) as e:
                on_error(f"stream lost ({e}); reconnecting")
            await asyncio.sleep(1)
