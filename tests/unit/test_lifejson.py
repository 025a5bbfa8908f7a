"""The death path's JSON (app/api/lifejson.py, Event.json, iso) is the generic encoding."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import TypedDict, Unpack

import orjson
import pytest

from app.api.lifejson import LifeEncoder
from app.core.identity import TickClock
from app.core.journal import Event
from app.core.life import Exit, Life, LifeView, exit_of, iso

CLOCK = TickClock(btime=1795654039, hz=100)
HOST, BOOT = "vm", "6f1c0d1e-0000-4000-8000-000000000001"


class Changes(TypedDict, total=False):
    """The LifeView fields a test may set on the sample life."""

    pid: int
    start_slack: int
    parent_ticks: int | None
    comm: str | None
    exe: str | None
    argv: tuple[str, ...]
    born_at: float | None
    died_at: float | None
    exit: Exit | None
    cause: str | None
    sources: int
    pidfd_ino: int | None
    canary: bool


def view(**kw: Unpack[Changes]) -> LifeView:
    life = Life(4242, 659715, 1, "sleep", 4, exe="/usr/bin/sleep", argv=("sleep", "30"), uid=0,
                born_at=1795660635.15)  # fmt: skip
    life.parent_ticks = 100
    return life.snapshot()._replace(**kw)


VIEWS = {
    "alive": view(),
    "killed": view(died_at=1795660640.5, exit=exit_of(None, 9), cause="signal", sources=12),
    "exit 3": view(died_at=1795660640.25, exit=exit_of(3, None), cause="exit", sources=6),
    "core": view(died_at=1795660641.0, exit=exit_of(None, 11, True), cause="signal"),
    "resync": view(died_at=1795660642.0, exit=None, cause="resync", sources=32),
    "derived, orphan": view(start_slack=1, parent_ticks=None, born_at=None, canary=True),
    "unicode": view(comm="démon ✓", argv=("démon", '--name="q"\n', "\\"), pidfd_ino=77),
}


def life_bytes(enc: LifeEncoder, v: LifeView) -> bytes:
    """The life in an event's JSON, as the death path puts it together."""
    out = Event(1, "born", 1795660635.15, v, None, 0).json(enc)
    return out[out.index(b',"life":') + len(b',"life":') : -1]


@pytest.mark.parametrize("name", VIEWS)
def test_life_bytes_are_the_whole_encoding(name: str) -> None:
    enc = LifeEncoder(HOST, BOOT, CLOCK)
    v = VIEWS[name]
    whole = orjson.dumps(v.to_json(HOST, BOOT, CLOCK))
    assert life_bytes(enc, v) == whole  # head encoded now
    assert life_bytes(enc, v) == whole  # head from the cache


def test_a_changed_life_is_not_served_a_stale_head() -> None:
    enc = LifeEncoder(HOST, BOOT, CLOCK)
    born = view(exe=None, argv=())
    enc.head(born)  # prepared at birth
    execd = born._replace(exe="/usr/sbin/ntpd", argv=("ntpd", "-g"), comm="ntpd")
    dead = execd._replace(died_at=1795660650.0, exit=exit_of(0, None), cause="exit")
    assert json.loads(life_bytes(enc, dead)) == dead.to_json(HOST, BOOT, CLOCK)


def test_heads_are_bounded() -> None:
    enc = LifeEncoder(HOST, BOOT, CLOCK, heads=8)
    for pid in range(100):
        enc.head(view(pid=pid))
    assert len(enc._heads) == 8


def test_bytes_that_are_not_utf8_still_give_valid_json() -> None:
    # /proc and audit decode argv with surrogateescape; lone surrogates are escaped, never
    # written as \udcXX (docs/security.md, "Bytes that are not UTF-8"; tests/unit/test_bytetext.py).
    raw = b"caf\xe9".decode("utf-8", "surrogateescape")
    v = view(comm=raw, argv=(raw,), died_at=1795660640.5, exit=exit_of(1, None))
    enc = LifeEncoder(HOST, BOOT, CLOCK)
    out = orjson.loads(life_bytes(enc, v))
    assert out == enc.life_json(v) and out["comm"] == "caf\\xe9"
    assert out["bytes_escaped"] == ["comm", "argv"]


@pytest.mark.parametrize(
    "ev",
    [
        Event(7, "died", 1795660640.5, VIEWS["killed"], None, 12),
        Event(8, "born", 1795660635.15, VIEWS["alive"], {"late": True}, 4),
        Event(9, "exec", 1795660636.0, VIEWS["unicode"], None, 0),
        Event(10, "gap", 1795660637.0, None, {"source": "proc", "reason": "enobufs"}, 0),
    ],
    ids=lambda ev: ev.type,
)
def test_event_json_is_to_dict(ev: Event) -> None:
    enc = LifeEncoder(HOST, BOOT, CLOCK)
    if ev.life is not None:
        enc.head(ev.life._replace(died_at=None))  # prepared while it lived, as streams do
    assert ev.json(enc) == orjson.dumps(ev.to_dict(enc))  # same bytes, same key order


def test_a_dead_life_leaves_the_head_cache() -> None:
    enc = LifeEncoder(HOST, BOOT, CLOCK)
    alive = VIEWS["alive"]
    enc.head(alive)
    dead = alive._replace(died_at=1795660640.5, exit=exit_of(None, 9), cause="signal")
    Event(1, "died", 1795660640.5, dead, None, 4).json(enc)
    assert enc._heads == {}


def test_a_huge_argv_is_encoded_but_not_kept() -> None:
    enc = LifeEncoder(HOST, BOOT, CLOCK)
    big = view(argv=("x" * 100_000,))
    assert json.loads(life_bytes(enc, big))["argv"] == ["x" * 100_000]
    assert enc._heads == {}


def test_head_key_leaves_out_exactly_what_a_death_changes() -> None:
    assert LifeView._fields[10:14] == ("died_at", "exit", "cause", "sources")
    v = VIEWS["killed"]
    assert v.head_key() == VIEWS["alive"].head_key()


def test_iso_matches_datetime() -> None:
    rng = random.Random(4)
    stamps = [1795660640.0, 1795660640.5, 1795660640.9999995, 0.0, 1.25, -1.25, -0.0000004]
    stamps += [rng.uniform(1.6e9, 1.9e9) for _ in range(20_000)]
    for t in stamps:
        want = datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")
        assert iso(t) == want.replace("+00:00", "Z"), t
    assert iso(None) is None


def test_heads_are_prepared_only_while_a_stream_listens() -> None:
    from app.core.life import Life
    from app.core.service import Service
    from tests.helpers import make_config

    reg = Service(make_config()).registry
    reg.encoder = enc = LifeEncoder.for_node(reg.node)  # as make_app sets it
    reg.journal.subscribe(lambda ev: True, 10)  # an internal reader (metrics, watches)
    reg.born(Life(5000, 100, 1, "a", 4), 4)
    assert enc._heads == {}
    reg.journal.subscribe(lambda ev: True, 10, push=lambda ev: True)  # a stream client
    reg.born(Life(5001, 101, 1, "b", 4), 4)
    assert list(enc._heads) == [(5001, 101)]
