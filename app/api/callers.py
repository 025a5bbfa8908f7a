"""Who is asking, and what they may see (docs/security.md, "Who may read what"; issue 10).

On the Unix socket the kernel names the caller: its uid comes from `SO_PEERCRED`, so local
programs need no secret. On TCP the caller is whoever holds a token: `read` (every life in
full, no changes) or `admin` (changes too). A token may also be sent on the Unix socket, to
see more than the uid alone allows. Everyone who may ask at all sees the facts of every
life (id, state, parent, comm, times, exit); argv and exe only root, the life's own uid and
token holders (`Caller.details`). With /proc mounted `hidepid=1` or more, callers who see
only their own details see only their own lives (`Caller.hidden`).
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from app.api.errors import ApiError, Handler
from app.core.config import Config

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

READ, ADMIN = "read", "admin"
# A browser cannot set headers on a WebSocket: the dashboard offers its token as a
# subprotocol `bearer.<token>` next to `lifewatch`, which the daemon selects (as Kubernetes
# does with `base64url.bearer.authorization.k8s.io.<token>`).
WS_PROTOCOL = "lifewatch"
WS_BEARER = "bearer."
# Routes answered on TCP without a token: probes, the dashboard's own files (they hold no
# data; the page then asks with its token), and /metrics when `metrics_open`.
OPEN = frozenset({"/healthz", "/"})
OPEN_PREFIX = "/static/"
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid (socket(7), SO_PEERCRED)


@dataclass(frozen=True, slots=True)
class Caller:
    """The daemon's idea of who sent a request."""

    via: str  # "unix" or "tcp"
    uid: int | None  # the peer's uid on the Unix socket; None on TCP
    pid: int | None
    scope: str | None  # READ or ADMIN from a token or from being root; None: facts + own
    hidepid: int = 0  # /proc's hidepid as it applies to this caller (0 for full viewers)
    token: str | None = None  # the scope of the token it sent, if it sent one

    @property
    def admin(self) -> bool:
        return self.scope == ADMIN

    @property
    def sees_all(self) -> bool:
        return self.scope is not None

    @property
    def hidden(self) -> bool:
        """Lives of other uids are not shown at all (hidepid >= 1), only their own."""
        return self.hidepid > 0 and not self.sees_all

    def details(self, uid: int | None) -> bool:
        """May this caller see argv and exe of a life run by `uid`?"""
        return self.sees_all or (uid is not None and uid == self.uid)

    def shows(self, uid: int | None) -> bool:
        """Is a life run by `uid` shown to this caller at all?"""
        return not self.hidden or self.details(uid)

    @property
    def key(self) -> str:
        """Whose budget a follow counts against (Config.max_follow_per_caller)."""
        if self.via == "unix" and self.uid is not None:
            return f"uid:{self.uid}"
        return f"token:{self.scope or 'none'}"


# For tests and routes that run without the middleware (make_app always installs it).
NOBODY = Caller("tcp", None, None, None)


_CALLER = web.RequestKey("caller", Caller)


def caller_of(request: web.Request) -> Caller:
    got: Caller = request.get(_CALLER, NOBODY)
    return got


@dataclass(frozen=True)
class Tokens:
    """The bearer tokens the daemon accepts, as bytes (compared in constant time)."""

    admin: bytes | None
    read: bytes | None

    def scope(self, sent: bytes) -> str | None:
        # Both compared always: the time taken does not tell which one was close.
        is_admin = self.admin is not None and hmac.compare_digest(sent, self.admin)
        is_read = self.read is not None and hmac.compare_digest(sent, self.read)
        return ADMIN if is_admin else READ if is_read else None

    @property
    def any(self) -> bool:
        return self.admin is not None or self.read is not None

    @property
    def login(self) -> str | None:
        """The token a dashboard login URL carries: the read token, else the admin one."""
        t = self.read or self.admin
        return None if t is None else t.decode()


TOKENS = web.AppKey("tokens", Tokens)
TOKEN_FILES = {ADMIN: "token", READ: "read-token"}


def load_tokens(config: Config) -> Tokens:
    """The configured tokens; those not configured are read from, or generated into,
    root-only files under `state_dir` (as Jupyter does), so that no token need ever be
    typed on a command line. Without a state dir, an unset token stays unset."""
    found: dict[str, bytes | None] = {ADMIN: None, READ: None}
    for scope, given in ((ADMIN, config.token), (READ, config.read_token)):
        if given:
            found[scope] = given.encode()
        elif config.state_dir is not None:
            found[scope] = _token_file(config.state_dir / TOKEN_FILES[scope])
    return Tokens(found[ADMIN], found[READ])


def _token_file(path: Path) -> bytes | None:
    try:
        text = path.read_text().strip()
        if text:
            if path.stat().st_mode & 0o077:
                log.warning("%s is readable by others than its owner: chmod 600 it", path)
            return text.encode()
    except FileNotFoundError:
        pass
    except OSError as e:
        log.error("cannot read the token file %s: %s", path, e)
        return None
    token = secrets.token_urlsafe(32)  # subprotocol-safe: A-Z a-z 0-9 - _
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    except OSError as e:
        log.error("cannot write the token file %s: %s", path, e)
        return None
    log.info("generated a token into %s (mode 600)", path)
    return token.encode()


# -- hidepid ---------------------------------------------------------------------------
HIDEPID_LEVELS = {"off": 0, "noaccess": 1, "invisible": 2, "ptraceable": 4}


def parse_hidepid(mountinfo: str, mount_point: str) -> tuple[int, int | None]:
    """(hidepid, gid) of the proc mount at `mount_point`, from /proc/self/mountinfo's text
    (proc(5): the super options after ` - `); (0, None) when not mounted so. Pure."""
    level, gid = 0, None
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) < 5 or fields[4] != mount_point or " - " not in line:
            continue
        fs = line.split(" - ", 1)[1].split(" ")
        if not fs or fs[0] != "proc":
            continue
        level, gid = 0, None  # the last mount on that point is the one seen
        for opt in fs[2].split(",") if len(fs) > 2 else ():
            name, _, value = opt.partition("=")
            if name == "hidepid":
                level = HIDEPID_LEVELS.get(value, int(value) if value.isdigit() else 0)
            elif name == "gid" and value.isdigit():
                gid = int(value)
    return level, gid


class HidePid:
    """/proc's hidepid and gid, read again at most once a second (a remount changes them)."""

    def __init__(self, proc: Path) -> None:
        self.proc = proc
        self._at = -1.0
        self._got: tuple[int, int | None] = (0, None)

    def get(self) -> tuple[int, int | None]:
        now = time.monotonic()
        if now - self._at >= 1.0:
            self._at = now
            try:
                text = Path("/proc/self/mountinfo").read_text()
                self._got = parse_hidepid(text, str(self.proc.resolve()))
            except OSError:
                self._got = (0, None)
        return self._got

    def applies(self, uid: int, pid: int, gid: int, proc: Path) -> int:
        """The hidepid level for a caller: 0 for root and for members of the mount's gid."""
        level, exempt = self.get()
        if level == 0 or uid == 0:
            return 0
        if exempt is not None and (gid == exempt or exempt in _groups(pid, proc)):
            return 0
        return level


def _groups(pid: int, proc: Path) -> set[int]:
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith("Groups:"):
                return {int(g) for g in line.split()[1:] if g.isdigit()}
    except OSError:
        pass
    return set()


# -- the middleware --------------------------------------------------------------------
def peer_credentials(request: web.Request) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end of a Unix socket; None on TCP."""
    transport = request.transport
    sock: Any = None if transport is None else transport.get_extra_info("socket")
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def _sent_token(request: web.Request) -> bytes | None:
    """The bearer token in `Authorization`, or in a WebSocket subprotocol; None if none.
    A malformed Authorization is refused (401)."""
    auth = request.headers.get(hdrs.AUTHORIZATION)
    if auth is not None:
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given.strip(" \t"):
            raise ApiError(401, "unauthorized", "send `Authorization: Bearer <token>`",
                           {"WWW-Authenticate": "Bearer"})  # fmt: skip
        # Only HTTP's own blanks are trimmed (str.strip would take NBSP too); header bytes
        # that are not UTF-8 arrive as lone surrogates, kept as bytes for the comparison.
        return given.strip(" \t").encode("utf-8", "surrogateescape")
    for proto in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(","):
        proto = proto.strip()
        if proto.startswith(WS_BEARER):
            return proto[len(WS_BEARER) :].encode("utf-8", "surrogateescape")
    return None


def identify(config: Config, tokens: Tokens, hidepid: HidePid) -> Middleware:
    """The middleware naming each request's Caller (refusing TCP requests without a token)."""
    open_paths = OPEN | ({"/metrics"} if config.metrics_open else frozenset())

    @web.middleware
    async def who(request: web.Request, handler: Handler) -> web.StreamResponse:
        sent = _sent_token(request)
        scope = None
        if sent is not None:
            scope = tokens.scope(sent)
            if scope is None and not tokens.any:
                _refuse_tcp(tokens)
            if scope is None:
                raise ApiError(403, "forbidden", "the bearer token is not one of this daemon's")
        cred = peer_credentials(request)
        if cred is not None:
            pid, uid, gid = cred
            full = ADMIN if uid == 0 else scope
            level = 0 if full else hidepid.applies(uid, pid, gid, hidepid.proc)
            caller = Caller("unix", uid, pid, full, level, scope)
        else:
            path = request.path
            if scope is None and path not in open_paths and not path.startswith(OPEN_PREFIX):
                _refuse_tcp(tokens)
            caller = Caller("tcp", None, None, scope, 0, scope)
        request[_CALLER] = caller
        return await handler(request)

    return who


def _refuse_tcp(tokens: Tokens) -> None:
    if not tokens.any:
        raise ApiError(
            403, "no_token_configured",
            "the TCP API needs a token and none is configured: use the Unix socket, or set "
            "`token`/`read_token` (config file, LIFEWATCH_TOKEN / LIFEWATCH_READ_TOKEN) or a "
            "state_dir, where they are generated",
        )  # fmt: skip
    raise ApiError(
        401, "unauthorized",
        "send `Authorization: Bearer <token>` (the token is in <state_dir>/read-token or "
        "<state_dir>/token, readable by root), or use the Unix socket",
        {"WWW-Authenticate": "Bearer"},
    )  # fmt: skip


def require_admin(request: web.Request) -> None:
    """Refuse a change unless the caller is root on the Unix socket or holds the admin token."""
    caller = caller_of(request)
    if caller.admin:
        return
    if caller.scope == READ:
        raise ApiError(403, "forbidden", "the read token cannot change anything; use the admin "
                       "token or root on the Unix socket")  # fmt: skip
    raise ApiError(
        403, "forbidden",
        f"uid {caller.uid} may not change anything: changes need root on the Unix socket or "
        "the admin token (`Authorization: Bearer <token>`)",
    )  # fmt: skip


def whoami_json(caller: Caller) -> dict[str, Any]:
    details = "all" if caller.sees_all else "own"
    return {
        "via": caller.via,
        "uid": caller.uid,
        "pid": caller.pid,
        "token": caller.token,
        "scopes": [s for s in (READ, ADMIN) if caller.sees_all and (s == READ or caller.admin)],
        "sees": {
            "facts": "own" if caller.hidden else "all",
            "details": details,
            "hidepid": caller.hidepid,
        },
        "may_change": caller.admin,
    }


@routes.get("/v1/whoami")
async def whoami(request: web.Request) -> web.Response:
    return web.json_response(whoami_json(caller_of(request)))
