"""lifewatch's Python client: ask whether lives are alive, follow them, stream events with
resumption, and be told when a partner dies.

    from app.client import Lifewatch

    async with Lifewatch() as lw:                       # the local daemon
        me = await lw.me()                              # this process's own life
        async for death in lw.partner_deaths(me):       # each partner's death, as it happens
            print("partner gone:", death.life["id"], death.partner["via"][0]["remote"])

The client talks to the daemon's Unix socket when it exists (the daemon knows the caller
from the socket's peer credentials; no token), else to TCP with a token (`token=`, else
`LIFEWATCH_TOKEN`, else the daemon's token file when readable). It is a library for
programs that are not lifewatch: it imports nothing of the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp

SOCKET = "/run/lifewatch/lifewatch.sock"
TCP = "http://127.0.0.1:7878"
# The daemon's generated tokens (<state_dir>/token, read-token; state_dir /var/lib/lifewatch by
# default, /run/lifewatch on older setups): root's to read.
TOKEN_FILES = ("/var/lib/lifewatch/token", "/var/lib/lifewatch/read-token",
               "/run/lifewatch/token", "/run/lifewatch/read-token")  # fmt: skip
AIOHTTP_UNIX = "http://unix:"
API_ROOTS = ("/v1/", "/healthz", "/metrics")
# Stream events that are about the stream, not a life: the caller sees them all.
CONTROL = frozenset({"reset", "lagging", "gap"})


class LifewatchError(Exception):
    """An error answer (`status`, `error`, `detail`; `body` the decoded answer), or the
    daemon unreachable (status 0)."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{error}: {detail}" if status else detail)
        self.status, self.error, self.detail = status, error, detail
        self.body: Any = None


@dataclass(frozen=True, slots=True)
class Answer:
    """Is this life alive? `state` alive, dead or unknown (or invalid: `reason` says why the
    id was refused); `life` when known."""

    id: str
    state: str
    reason: str
    life: dict[str, Any] | None

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Answer:
        reason = data.get("reason", data.get("error", ""))
        return cls(data["id"], data["state"], str(reason), data.get("life"))


@dataclass(frozen=True, slots=True)
class Event:
    """One stream event. `life` for lives' events; `partner` on partners_of streams;
    `data` is the whole message."""

    cursor: int
    type: str
    at: str
    life: dict[str, Any] | None = None
    partner: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Event:
        return cls(data["cursor"], data["type"], data.get("at", ""), data.get("life"),
                   data.get("partner"), data)  # fmt: skip


def split_url(url: str) -> tuple[str | None, str]:
    """(Unix socket path or None, the URL to ask with). `unix:/run/x.sock` (and with an API
    path after it: `unix:/run/x.sock/v1/node`) is that socket, as is aiohttp's form
    `http://unix:/run/x.sock:/v1/node` (a socket path holds no `:`); else a TCP URL."""
    if url.startswith(AIOHTTP_UNIX):
        path, _, rest = url[len(AIOHTTP_UNIX) :].partition(":")
        return path, "http://localhost" + rest
    if url.startswith("unix:"):
        rest = url[len("unix:") :]
        cut = min((i for i in (rest.find(p) for p in API_ROOTS) if i >= 0), default=len(rest))
        return rest[:cut], "http://localhost" + rest[cut:]
    return None, url


def token_for(tcp: bool, explicit: str | None = None) -> str | None:
    """The bearer token to send: `explicit`, else LIFEWATCH_TOKEN; on TCP, else the first
    readable of LIFEWATCH_TOKEN_FILE and the daemon's token files (root's to read). A token
    is never taken from a command line (docs/security.md)."""
    if explicit is not None:
        return explicit
    given = os.environ.get("LIFEWATCH_TOKEN")
    if given:
        return given.strip()
    if not tcp:
        return None  # the Unix socket knows the caller by its uid
    for f in (os.environ.get("LIFEWATCH_TOKEN_FILE", ""), *TOKEN_FILES):
        with contextlib.suppress(OSError):
            text = Path(f).read_text().strip() if f else ""
            if text:
                return text
    return None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _error_of(status: int, raw: bytes, where: str) -> LifewatchError:
    try:
        got = json.loads(raw) if raw else None
    except ValueError:
        got = None
    if isinstance(got, dict) and "error" in got:
        err = LifewatchError(status, str(got.get("error")), str(got.get("detail")))
    else:
        err = LifewatchError(status, f"http_{status}", f"HTTP {status} from {where}")
    err.body = got
    return err


class Lifewatch:
    """One daemon. `url`: `unix:/path/to.sock` or `http://host:port`; default the Unix
    socket when it exists, else TCP on localhost (`LIFEWATCH_URL` overrides both)."""

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 10.0
    ) -> None:
        url = url or os.environ.get("LIFEWATCH_URL")
        if url is None:
            url = f"unix:{SOCKET}" if os.path.exists(SOCKET) else TCP
        self.url = url
        self.timeout = timeout
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._socket, base = split_url(url)
        self._base = base.rstrip("/")
        tok = token_for(self._socket is None, token)
        self._headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        self._session: aiohttp.ClientSession | None = None
        self._streams: aiohttp.ClientSession | None = None

    def request_sync(self, method: str, target: str, body: Any = None) -> Any:
        """One JSON request without an event loop (for programs that have none: the command
        line); `target` is the path and query. Raises LifewatchError as `request` does."""
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        parts = urlsplit(self._base)
        conn: http.client.HTTPConnection
        if self._socket is not None:
            conn = _UnixConnection(self._socket, self.timeout)
        elif parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.netloc, timeout=self.timeout)
        else:
            conn = http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
        try:
            conn.request(method, target, body=data, headers=headers)
            r = conn.getresponse()
            raw, status = r.read(), r.status
        except (OSError, http.client.HTTPException) as e:
            msg = f"cannot reach lifewatch at {self._socket or self._base}: {e}"
            raise LifewatchError(0, "unreachable", msg) from None
        finally:
            conn.close()
        if status >= 400:
            raise _error_of(status, raw, self._socket or self._base)
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            text = raw[:200].decode("utf-8", "replace")
            raise LifewatchError(status, "bad_answer", text) from None

    async def __aenter__(self) -> Lifewatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for session in (self._session, self._streams):
            if session is not None:
                await session.close()
        self._session = self._streams = None

    def _http(self, streams: bool = False) -> aiohttp.ClientSession:
        """The session for requests (`timeout` for the whole request), or for streams (the
        timeout bounds the connection only: a stream lasts as long as it is wanted)."""
        have = self._streams if streams else self._session
        if have is not None:
            return have
        connector = aiohttp.UnixConnector(path=self._socket) if self._socket is not None else None
        timeout = (
            aiohttp.ClientTimeout(total=None, connect=self.timeout) if streams else (self._timeout)
        )
        made = aiohttp.ClientSession(connector=connector, headers=self._headers, timeout=timeout)
        if streams:
            self._streams = made
        else:
            self._session = made
        return made

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON request; raises LifewatchError on an error answer or no daemon."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self._http().request(
                method, self._base + path, data=data, headers=headers
            ) as r:
                raw = await r.read()
                status = r.status
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            msg = f"cannot reach lifewatch at {self.url}: {e}"
            raise LifewatchError(0, "unreachable", msg) from None
        if status >= 400:
            raise _error_of(status, raw, self.url)
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            text = raw[:200].decode("utf-8", "replace")
            raise LifewatchError(status, "bad_answer", text) from None

    # -- questions --

    async def node(self) -> dict[str, Any]:
        got: dict[str, Any] = await self.request("GET", "/v1/node")
        return got

    async def lookup(self, life: str) -> Answer:
        """`life` as host/pid/start (start as a date or in ticks), of any host the daemon
        can answer for."""
        return (await self.check([life]))[0]

    async def check(self, lives: Iterable[str]) -> list[Answer]:
        got = await self.request("POST", "/v1/lives/check", {"lives": list(lives)})
        return [Answer.of(a) for a in got["results"]]

    async def me(self, pid: int | None = None) -> str:
        """The life id of process `pid` (default: this process), as the daemon names it."""
        got = await self.request("GET", f"/v1/lives/{pid or os.getpid()}")
        return str(got["id"])

    async def follow(self, life: str) -> dict[str, Any]:
        got: dict[str, Any] = await self.request("POST", "/v1/follow", {"life": life})
        return got

    async def partners(self, life: str) -> list[dict[str, Any]]:
        """The life's connections, each with the lives at its other end (`peers`)."""
        got = await self.request("GET", "/v1/connections?" + urlencode({"life": life}))
        conns: list[dict[str, Any]] = got["connections"]
        return conns

    # -- streams --

    async def stream(
        self, filters: Mapping[str, str] | None = None, after: int | None = None,
        retry: float = 1.0, on_error: Callable[[str], None] | None = None,
    ) -> AsyncGenerator[Event, None]:  # fmt: skip
        """Events for ever, resuming after the last cursor across disconnects and daemon
        restarts. `reset`, `lagging` and `gap` are yielded like any event: a `reset` means
        the daemon could not replay from the cursor (re-read state). A refused subscription
        (4xx) raises LifewatchError. `on_error` is told of each lost connection and of each
        close that is not a normal one (the stream goes on)."""
        tell = on_error or (lambda _: None)
        while True:
            query = dict(filters or {}, **({"after": str(after)} if after is not None else {}))
            url = f"{self._base}/v1/stream?{urlencode(query)}"
            try:
                async with self._http(streams=True).ws_connect(
                    url, heartbeat=30, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=5)
                ) as ws:
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        ev = Event.of(json.loads(msg.data))
                        if ev.type != "lagging":  # lagging names the cursor it resumes after
                            after = ev.cursor
                        yield ev
                    if ws.close_code not in (None, 1000, 1001, 1013):
                        tell(f"stream closed: {ws.close_code}; reconnecting")
            except aiohttp.WSServerHandshakeError as e:
                if e.status < 500:
                    raise LifewatchError(e.status, "refused", f"{e.status} {e.message}") from None
                tell(f"stream refused ({e.status}); retrying")
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                tell(f"stream lost ({e}); reconnecting")
            await asyncio.sleep(retry)

    async def partner_deaths(
        self, life: str, after: int | None = None
    ) -> AsyncGenerator[Event, None]:
        """Each death of a partner of `life` (a life at the other end of one of its
        connections when the stream opens), with `partner.via` the connections; and the
        stream's own `reset`/`lagging`/`gap`."""
        async for ev in self.stream({"partners_of": life, "types": "died,gap"}, after):
            yield ev
