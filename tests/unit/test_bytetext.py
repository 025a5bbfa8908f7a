"""Bytes that are not UTF-8 in argv, comm and exe: every answer parses with orjson, and the
escaped fields give the bytes back (docs/security.md, "Bytes that are not UTF-8")."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from app.api.bytetext import escape, escape_life, unescape
from app.api.jsontext import dumps
from app.api.lifejson import LifeEncoder
from app.core.identity import TickClock
from app.core.journal import Event
from app.core.life import Life, LifeView, SourceSet, exit_of
from app.core.service import Service
from app.procfs import parse_cmdline, parse_stat
from tests.helpers import DATA
from tests.spec import call

Client = TestClient[Any, Any]
CLOCK = TickClock(btime=1795654039, hz=100)
HOST, BOOT = "vm", "6f1c0d1e-0000-4000-8000-000000000001"
STATS = sorted((DATA / "stat").glob("*.stat"))


def text(raw: bytes) -> str:
    """Bytes as the core holds them (app/argv.py, app/procfs.py)."""
    return raw.decode("utf-8", "surrogateescape")


def client_bytes(life: dict[str, Any], field: str) -> Any:
    """What a client does: the field's bytes, unescaped if the life says it was escaped."""
    escaped = field in life.get("bytes_escaped", ())

    def back(s: str) -> bytes:
        return unescape(s) if escaped else s.encode()

    value = life[field]
    return None if value is None else [back(a) for a in value] if field == "argv" else back(value)


def docs_unescape(s: str) -> bytes:
    """The unescape given to clients in docs/security.md, word for word."""
    return re.sub(
        rb"\\(\\|x([0-9a-f]{2}))",
        lambda m: bytes.fromhex(m[2].decode()) if m[2] else b"\\",
        s.encode(),
    )


HOSTILE: list[tuple[bytes, bytes, list[bytes]]] = [  # comm, exe, argv
    (b"sleep\xff\xfe", b"/bin/sleep", [b"sleep\xff\xfe", b"3"]),
    (b"sl\xff", b"/tmp/x\xff\xfe\\y", [b"a\\b", b"\xc3", b"\\xff", b"\xed\xa0\x80", b""]),
    (b"ok", b"/tmp/\x80\\\\", [b"ok"]),
    (b"d\xc3\xa9mon \xe2\x9c\x93", b"/usr/bin/d\xc3\xa9mon", [b"\\x41", b"\xf0\x9f\x98\x80\xff"]),
]


def hostile_view(comm: bytes, exe: bytes, argv: list[bytes], **kw: Any) -> LifeView:
    life = Life(4242, 659715, 1, text(comm), 4, exe=text(exe), argv=tuple(map(text, argv)),
                uid=1000, born_at=1795660635.15)  # fmt: skip
    return life.snapshot()._replace(**kw)


@pytest.mark.parametrize(
    "raw",
    [b"", b"\\", b"\\\\x41", b"\xff\xfe", b"\\xff", b"\xc3", b"caf\xc3\xa9\xff", b"\xed\xa0\x80"],
)
def test_escape_round_trips(raw: bytes) -> None:
    out = escape(text(raw))
    out.encode()  # valid Unicode: no lone surrogate left
    assert unescape(out) == raw
    assert docs_unescape(out) == raw


def test_escape_round_trips_random_bytes() -> None:
    rng = random.Random(10)
    for _ in range(2000):
        raw = bytes(rng.choice(b"\\x\xff\xc3\xa9\x80a0") for _ in range(rng.randrange(12)))
        assert unescape(escape(text(raw))) == raw == docs_unescape(escape(text(raw)))


def test_valid_utf8_is_untouched_and_unflagged() -> None:
    head = hostile_view(b"d\xc3\xa9mon", b"C:\\x\\y", [b"a\\xff", b"\\"]).head_json(
        HOST, BOOT, CLOCK
    )
    assert escape_life(head) is head
    assert "bytes_escaped" not in orjson.loads(dumps(head))


@pytest.mark.parametrize("comm,exe,argv", HOSTILE)
@pytest.mark.parametrize("died", [False, True])
def test_rest_and_stream_bytes_parse_and_round_trip(
    comm: bytes, exe: bytes, argv: list[bytes], died: bool
) -> None:
    v = hostile_view(comm, exe, argv)
    if died:
        v = v._replace(died_at=1795660640.5, exit=exit_of(None, 9), cause="signal")
    enc = LifeEncoder(HOST, BOOT, CLOCK)
    rest = orjson.loads(dumps(enc.life_json(v)))  # GET /v1/lives
    stream = orjson.loads(Event(1, "died" if died else "born", 1795660640.5, v, None, 4).json(enc))
    assert stream["life"] == rest  # the death path's parts equal the whole encoding
    again = orjson.loads(Event(2, "exec", 1795660640.5, v, None, 4).json(enc))  # cached head
    assert again["life"] == rest
    assert client_bytes(rest, "comm") == comm
    assert client_bytes(rest, "exe") == exe
    assert client_bytes(rest, "argv") == argv
    valid = {k for k, raw in (("comm", comm), ("exe", exe)) if _utf8(raw)}
    valid |= {"argv"} if all(map(_utf8, argv)) else set()
    assert set(rest.get("bytes_escaped", ())) == {"comm", "exe", "argv"} - valid


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("case", STATS, ids=lambda p: p.stem)
def test_recorded_hostile_comms_parse_and_round_trip(case: Path) -> None:
    """The comms recorded from /proc (8.stat: `s\\xff\\xfe(x) \\xc3`, a real exec's)."""
    raw = case.read_bytes()
    st = parse_stat(raw)
    comm = raw[raw.index(b"(") + 1 : raw.rindex(b")")]
    argv = parse_cmdline(comm + b"\x00-x\x00")
    v = Life(st.pid, st.start_ticks, st.ppid, st.comm, 4, argv=argv).snapshot()
    enc = LifeEncoder(HOST, BOOT, CLOCK)
    for life in (
        orjson.loads(dumps(enc.life_json(v))),
        orjson.loads(Event(1, "born", 1795660640.5, v, None, 4).json(enc))["life"],
    ):
        assert client_bytes(life, "comm") == comm
        assert client_bytes(life, "argv") == [comm, b"-x"]


def test_the_recorded_set_has_a_comm_that_is_not_utf8() -> None:
    assert not all(_utf8(p.read_bytes()) for p in STATS)


async def test_every_route_serves_hostile_bytes_as_valid_json(
    client: Client, service: Service
) -> None:
    cursor = service.journal.last_cursor
    pid = 4194000  # above any pid this node is likely to run: a lookup finds it gone
    hostile = text(b"sleep\xff\xfe")
    life = Life(pid, 777, 1, hostile, SourceSet.SCRIPT, exe=text(b"/tmp/\xff/sleep"),
                argv=(hostile, "3"), uid=0)  # fmt: skip
    async with client.ws_connect(f"/v1/stream?after={cursor}") as ws:
        service.registry.born(life, SourceSet.SCRIPT)
        msg = await ws.receive(timeout=5)
        raw = msg.data.encode() if isinstance(msg.data, str) else msg.data
        streamed = orjson.loads(raw)
    assert streamed["type"] == "born"
    answers = [streamed["life"]]
    for url in (f"/v1/lives/{pid}", "/v1/lives?state=alive", "/v1/lives"):
        resp = await client.get(url)
        assert resp.status == 200
        body = orjson.loads(await resp.read())
        answers += [x for x in body.get("lives", [body]) if x["pid"] == pid]
    _, spec_checked = await call(client, "GET", f"/v1/lives/{pid}")
    resp = await client.get(f"/v1/events?after={cursor}")
    answers += [e["life"] for e in orjson.loads(await resp.read())["events"] if "life" in e]
    check = json.dumps({"lives": [service.node.life_id(pid, 777)]}).encode()
    resp = await client.post(
        "/v1/lives/check", data=check, headers={"Content-Type": "application/json"}
    )
    answers += [r["life"] for r in orjson.loads(await resp.read())["results"]]
    resp = await client.get(f"/v1/lives/{pid}/777")
    answers.append(orjson.loads(await resp.read())["life"])
    assert len(answers) >= 5
    for got in [*answers, spec_checked]:
        assert client_bytes(got, "argv") == [b"sleep\xff\xfe", b"3"]
        assert client_bytes(got, "comm") == b"sleep\xff\xfe"
        assert client_bytes(got, "exe") == b"/tmp/\xff/sleep"
        assert got["bytes_escaped"] == ["comm", "exe", "argv"]


def test_last_resort_never_writes_lone_surrogates() -> None:
    out = dumps({"reason": text(b"x\xff"), "n": [text(b"\\\xfe")], "big": 1 << 70})
    assert orjson.loads(out) == {"reason": "x\\xff", "n": ["\\\\\\xfe"], "big": 1 << 70}
