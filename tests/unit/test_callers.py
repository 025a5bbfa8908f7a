"""Who may read what, without the kernel: tokens, scopes, redaction, the message cap, hidepid
parsing (app/api/callers.py, app/api/lifejson.py; docs/security.md). The Unix socket and a
real user are tests/kernel/test_who_reads.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from app.api.app import make_app
from app.api.callers import ADMIN, READ, Caller, Tokens, load_tokens, parse_hidepid
from app.api.lifejson import LifeEncoder
from app.api.listen import exposure_problem
from app.core.identity import TickClock
from app.core.journal import Event
from app.core.life import Life, exit_of
from app.core.service import Service
from tests.helpers import make_config

MOUNTINFO = """\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
98 22 0:45 / /srv/p rw,relatime - proc proc rw,hidepid=invisible,gid=27
99 22 0:46 / /srv/q rw,relatime shared:5 - proc proc rw,hidepid=2
100 22 0:47 / /srv/t rw,relatime - tmpfs tmpfs rw,hidepid=2
"""


def test_hidepid_is_read_from_the_mount_options() -> None:
    assert parse_hidepid(MOUNTINFO, "/proc") == (0, None)
    assert parse_hidepid(MOUNTINFO, "/srv/p") == (2, 27)
    assert parse_hidepid(MOUNTINFO, "/srv/q") == (2, None)
    assert parse_hidepid(MOUNTINFO, "/srv/t") == (0, None)  # not a proc mount
    assert parse_hidepid(MOUNTINFO, "/nowhere") == (0, None)


def test_who_sees_what() -> None:
    user = Caller("unix", 1000, 5, None)
    assert user.details(1000) and not user.details(0) and not user.details(None)
    assert user.shows(0) and not user.hidden
    hidden = Caller("unix", 1000, 5, None, hidepid=2)
    assert hidden.hidden and hidden.shows(1000) and not hidden.shows(0)
    for full in (Caller("unix", 0, 1, ADMIN), Caller("tcp", None, None, READ)):
        assert full.details(0) and full.details(1000) and full.shows(None)
    assert Caller("tcp", None, None, READ).admin is False
    assert Caller("unix", 1000, 5, None).key == "uid:1000"


def test_tokens_are_generated_root_only_and_kept(tmp_path: Path) -> None:
    first = load_tokens(make_config(state_dir=tmp_path, token=None))
    assert first.admin and first.read and first.admin != first.read
    for name in ("token", "read-token"):
        mode = (tmp_path / name).stat().st_mode
        assert stat.S_IMODE(mode) == 0o600, oct(mode)
    again = load_tokens(make_config(state_dir=tmp_path, token=None))
    assert (again.admin, again.read) == (first.admin, first.read)
    configured = load_tokens(make_config(state_dir=tmp_path, token="mine"))
    assert configured.admin == b"mine" and configured.read == first.read
    assert load_tokens(make_config(token=None)) == Tokens(None, None)
    assert first.scope(first.read) == READ and first.scope(first.admin) == ADMIN
    assert first.scope(b"nope") is None


Client = TestClient[Any, Any]


@pytest.fixture
async def tcp() -> Any:
    svc = Service(make_config(read_token="reader"))
    await svc.start()
    async with TestClient(TestServer(make_app(svc, manage=False))) as c:
        yield c
    await svc.stop()


async def test_tcp_needs_a_token_beyond_healthz(tcp: Client) -> None:
    for path in ("/v1/node", "/v1/lives", "/v1/events", "/metrics", "/v1/whoami"):
        r = await tcp.get(path)
        assert r.status == 401 and (await r.json())["error"] == "unauthorized", path
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert (await tcp.get("/healthz")).status in (200, 503)
    assert (await tcp.get("/")).status == 200  # the dashboard's page holds no data
    r = await tcp.get("/v1/node", headers={"Authorization": "Bearer wrong"})
    assert r.status == 403 and (await r.json())["error"] == "forbidden"


async def test_read_and_admin_scopes(tcp: Client) -> None:
    read = {"Authorization": "Bearer reader"}
    who = await (await tcp.get("/v1/whoami", headers=read)).json()
    assert who == {"via": "tcp", "uid": None, "pid": None, "token": "read", "scopes": ["read"],
                   "sees": {"facts": "all", "details": "all", "hidepid": 0},
                   "may_change": False}  # fmt: skip
    r = await tcp.put("/v1/watches/x", json={"comm": "x"}, headers=read)
    assert r.status == 403 and "read token" in (await r.json())["detail"]
    assert (await tcp.post("/v1/resync", headers=read)).status == 403
    admin = {"Authorization": "Bearer test-admin-token"}
    assert (await tcp.put("/v1/watches/x", json={"comm": "x"}, headers=admin)).status == 201
    who = await (await tcp.get("/v1/whoami", headers=admin)).json()
    assert who["scopes"] == ["read", "admin"] and who["may_change"] is True
    # A WebSocket may carry its token as a subprotocol (browsers cannot set headers).
    async with tcp.ws_connect("/v1/stream", protocols=("lifewatch", "bearer.reader")) as ws:
        assert ws.protocol == "lifewatch"


async def test_metrics_may_be_opened_to_scrapers() -> None:
    svc = Service(make_config(metrics_open=True))
    async with TestClient(TestServer(make_app(svc, manage=False))) as c:
        assert (await c.get("/metrics")).status == 200
        assert (await c.get("/v1/node")).status == 401


ENC = LifeEncoder("vm", "boot", TickClock(btime=1795654039, hz=100), message_max=64 << 10)


def _life(argv: tuple[str, ...], uid: int = 0) -> Life:
    return Life(42, 100, 1, "sleep", 4, exe="/usr/bin/sleep\udcff", argv=argv, uid=uid)


def test_a_redacted_life_has_no_argv_or_exe_and_says_so() -> None:
    life = _life(("sleep", "--password=hunter2"))
    life.died_at, life.exit = 1795660640.5, exit_of(None, 9)
    ev = Event(7, "died", 1795660640.5, life.snapshot(), None, 4)
    full = orjson.loads(ev.json(ENC))
    hidden = orjson.loads(ev.json_redacted(ENC))
    assert full["life"]["argv"] == ["sleep", "--password=hunter2"]
    assert hidden["life"]["argv"] is None and hidden["life"]["exe"] is None
    assert hidden["life"]["redacted"] == ["argv", "exe"]
    assert "bytes_escaped" not in hidden["life"]  # it named exe only, which is gone
    assert hidden["life"]["exit"] == full["life"]["exit"] and hidden["life"]["comm"] == "sleep"
    assert {k: v for k, v in hidden.items() if k != "life"} == {
        k: v for k, v in full.items() if k != "life"
    }
    assert b"hunter2" not in ev.json_redacted(ENC)
    assert ev.json_redacted(ENC) is ev.json_redacted(ENC)  # encoded once, shared


def test_an_event_larger_than_a_message_is_cut_not_refused() -> None:
    # 200 arguments of 4 KiB of \x01: about 4.9 MB of JSON (\u0001 is 6 bytes) if whole.
    argv = tuple("\x01" * 4096 for _ in range(200))
    ev = Event(8, "exec", 1795660640.5, _life(argv).snapshot(), None, 4)
    data = ev.json(ENC)
    assert len(data) <= 64 << 10
    got = orjson.loads(data)
    assert got["life"]["argv_truncated"] is True and 0 < len(got["life"]["argv"]) < 200
    assert len(ENC.life_bytes(_life(argv).snapshot())) <= 64 << 10


def test_beyond_loopback_needs_a_token_and_insecure() -> None:
    assert exposure_problem(make_config(host="127.0.0.1"), False) is None
    assert "no token" in (exposure_problem(make_config(host="0.0.0.0"), False) or "")
    assert "TLS" in (exposure_problem(make_config(host="0.0.0.0"), True) or "")
    assert exposure_problem(make_config(host="0.0.0.0", insecure=True), True) is None


def test_the_socket_setting_may_be_off() -> None:
    assert make_config(socket="").socket is None
    assert str(make_config(socket="/tmp/x.sock").socket) == "/tmp/x.sock"
    assert os.fspath(make_config(socket="/tmp/x.sock").socket or "") == "/tmp/x.sock"
