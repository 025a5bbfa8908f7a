"""Keeps other web pages out (issue 10, Must have 4; docs/security.md, "Browsers").

A page from any origin can make the user's browser connect to the daemon. Three rules stop
it reading or changing anything: the `Host` a request names must be one the daemon answers
to (DNS rebinding sends the attacker's name), a WebSocket upgrade must come from the
daemon's own origin (the same-origin policy does not cover WebSockets), and a request body
must be `application/json` (a cross-site `<form>` or "simple" fetch can only send
`text/plain`, form or multipart bodies; a JSON one needs a CORS preflight that the daemon
never grants).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from app.api.errors import ApiError, Handler
from app.core.config import Config

LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# Probes (kubelet, load balancers) name the node by addresses the daemon may not know, and
# the answer tells a page nothing worth a rebinding: source names and states.
OPEN_TO_ANY_HOST = frozenset({"/healthz"})


def split_authority(value: str) -> tuple[str, int | None] | None:
    """`name`, `name:port`, `[v6]` or `[v6]:port` as (lower-case name without brackets or
    final dot, port or None); None when it is none of these."""
    value = value.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    elif value.count(":") > 1:
        return None  # an IPv6 address without brackets is not a valid Host
    else:
        name, sep, port_text = value.partition(":")
        port_text = port_text if sep else None
    if port_text is None:
        port = None
    elif port_text.isascii() and port_text.isdigit() and len(port_text) <= 5:
        port = int(port_text)
    else:
        return None
    name = name.removesuffix(".")
    if not name or (port is not None and not 0 < port < 65536):
        return None
    return name, port


def split_origin(origin: str) -> tuple[str, int] | None:
    """The (name, port) of an `Origin` header, the port made explicit; None for `null` or
    anything that is not scheme://authority."""
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or scheme not in DEFAULT_PORTS or "/" in rest or "@" in rest:
        return None
    got = split_authority(rest)
    if got is None:
        return None
    name, port = got
    return name, DEFAULT_PORTS[scheme] if port is None else port


@dataclass(frozen=True)
class Names:
    """The names the daemon answers to.

    `own` (loopback names, the listen address unless a wildcard, the connection's local
    address) only on the daemon's own port or without a port; `named` (allowed_hosts entries
    without a port) on any port; `exact` (entries with a port) on that port only.
    """

    own: frozenset[str]
    named: frozenset[str]
    exact: frozenset[tuple[str, int]]

    @classmethod
    def from_config(cls, config: Config) -> Names:
        own = set(LOOPBACK)
        listen = split_authority(config.host)
        if listen is not None and listen[0] not in WILDCARDS:
            own.add(listen[0])
        named, exact = set(), set()
        for entry in config.allowed_hosts:
            got = split_authority(entry)
            if got is None:
                continue  # Config's pattern refuses what no Host could match
            name, port = got
            if port is None:
                named.add(name)
            else:
                exact.add((name, port))
        return cls(frozenset(own), frozenset(named), frozenset(exact))

    def admit(self, name: str, port: int | None, own_port: int, local: str) -> bool:
        if name in self.own or name == local:
            return port is None or port == own_port
        return name in self.named or (name, port) in self.exact


def _shown(value: str) -> str:
    return ascii(value[:100])  # quoted, ASCII only: any bytes a client sent stay valid JSON


def keep_out(config: Config) -> Middleware:
    """The middleware enforcing the three rules (the module's docstring says why)."""
    names = Names.from_config(config)

    @web.middleware
    async def keep_browsers_out(request: web.Request, handler: Handler) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        # A browser reaches only TCP: a Unix socket needs neither Host nor Origin checks.
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            local, own_port = str(sockname[0]).lower(), int(sockname[1])
            if request.path not in OPEN_TO_ANY_HOST:
                _check_host(request, names, own_port, local)
            if request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
                _check_origin(request, names, own_port, local)
        if request.body_exists:
            _check_media_type(request)
        return await handler(request)

    return keep_browsers_out


def _check_host(request: web.Request, names: Names, own_port: int, local: str) -> None:
    host = request.headers.get(hdrs.HOST)
    if host is None:
        return  # HTTP/1.0 without Host: not a browser, which always sends one
    got = split_authority(host)
    if got is None or not names.admit(got[0], got[1], own_port, local):
        raise ApiError(
            421, "forbidden_host",
            f"Host {_shown(host)} is not a name this daemon answers to (loopback names, "
            "its listen address, `allowed_hosts`); add it to allowed_hosts if it is yours",
        )  # fmt: skip


def _check_origin(request: web.Request, names: Names, own_port: int, local: str) -> None:
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return  # not a browser: browsers always send Origin with a WebSocket upgrade
    got = split_origin(origin)
    if got is None or not names.admit(got[0], got[1], own_port, local):
        raise ApiError(
            403, "forbidden_origin",
            f"WebSocket from origin {_shown(origin)} refused: only pages served by this "
            "daemon (or clients sending no Origin) may open the stream",
        )  # fmt: skip


def _check_media_type(request: web.Request) -> None:
    given = request.headers.get(hdrs.CONTENT_TYPE)
    if given is not None and request.content_type == "application/json":
        charset = request.charset
        if charset is None or charset.lower() in ("utf-8", "utf8"):
            return
    raise ApiError(
        415, "unsupported_media_type",
        f"request bodies must be `Content-Type: application/json` (UTF-8), not "
        f"{_shown(given) if given is not None else 'none'}",
    )  # fmt: skip
