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
import json
import os
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

SOCKET = "/run/lifewatch/lifewatch.sock"
TCP = "http://127.0.0.1:7878"
TOKEN_FILES = ("/var/lib/lifewatch/token", "/run/lifewatch/token")
# Stream events that are about the stream, not a life: the caller sees them all.
CONTROL = frozenset({"reset", "lagging", "gap"})


class LifewatchError(Exception):
    """An error answer (`status`, `error`, `detail`), or the daemon unreachable (status 0)."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{error}: {detail}" if status else detail)
        self.status, self.error, self.detail = status, error, detail


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


def _token(explicit: str | None) -> str | None:
    if explicit is not None:
        return explicit
    env = os.environ.get("LIFEWATCH_TOKEN")
    if env:
        return env
    for path in TOKEN_FILES:
        with contextlib.suppress(OSError):
            return Path(path).read_text().strip() or None
    return None


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
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        headers: dict[str, str] = {}
        if url.startswith("unix:"):
            self._connector: aiohttp.BaseConnector | None = None
            self._socket: str | None = url.removeprefix("unix:")
            self._base = "http://localhost"
        else:
            self._socket = None
            self._base = url.rstrip("/")
            tok = _token(token)
            if tok is not None:
                headers["Authorization"] = f"Bearer {tok}"
        self._headers = headers
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Lifewatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = (
                aiohttp.UnixConnector(path=self._socket) if self._socket is not None else None
            )
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, timeout=self._timeout
            )
        return self._session

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
        try:
            got = json.loads(raw) if raw else None
        except ValueError:
            text = raw[:200].decode("utf-8", "replace")
            raise LifewatchError(status, "bad_answer", text) from None
        if status >= 400:
            err = got if isinstance(got, dict) else {}
            raise LifewatchError(status, str(err.get("error")), str(err.get("detail")))
        return got

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
        retry: float = 1.0,
    ) -> AsyncGenerator[Event, None]:  # fmt: skip
        """Events for ever, resuming after the last cursor across disconnects and daemon
        restarts. `reset`, `lagging` and `gap` are yielded like any event: a `reset` means
        the daemon could not replay from the cursor (re-read state). A refused subscription
        (4xx) raises LifewatchError."""
        while True:
            query = dict(filters or {}, **({"after": str(after)} if after is not None else {}))
            url = f"{self._base}/v1/stream?{urlencode(query)}"
            try:
                async with self._http().ws_connect(url, heartbeat=30, max_msg_size=0,
                                                   timeout=aiohttp.ClientWSTimeout(ws_close=5)
                                                   ) as ws:  # fmt: skip
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        data = json.loads(msg.data)
                        ev = Event.of(data)
                        if ev.type != "lagging":  # lagging names the cursor it resumes after
                            after = ev.cursor
                        yield ev
            except aiohttp.WSServerHandshakeError as e:
                if e.status < 500:
                    raise LifewatchError(e.status, "refused", e.message) from None
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            await asyncio.sleep(retry)

    async def partner_deaths(
        self, life: str, after: int | None = None
    ) -> AsyncGenerator[Event, None]:
        """Each death of a partner of `life` (a life at the other end of one of its
        connections when the stream opens), with `partner.via` the connections; and the
        stream's own `reset`/`lagging`/`gap`."""
        async for ev in self.stream({"partners_of": life, "types": "died,gap"}, after):
            yield ev
