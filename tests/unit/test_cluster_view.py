"""The cluster's pure parts: node names as subject tokens, peer states on an injected clock,
the cluster view (dedupe, malformed input, reboots) and the answers it gives without asking."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.cluster.peers import GONE, UNREACHABLE, UP, Peers, Presence
from app.cluster.subjects import Subjects, decode_token, encode_token
from app.cluster.view import ClusterView, RemoteLives, parse_cluster_cursor, resume_from
from app.core.journal import Journal
from tests.helpers import make_config


@pytest.mark.parametrize(
    ("name", "token"),
    [("a", "a"), ("node-1_x", "node-1_x"), ("db1.example.com", "db1=2Eexample=2Ecom"),
     ("h:8", "h=3A8"), ("a=b", "a=3Db"), ("é", "=C3=A9")],
)  # fmt: skip
def test_node_names_become_one_valid_token_and_back(name: str, token: str) -> None:
    assert encode_token(name) == token
    assert decode_token(token) == name
    subj = Subjects("lifewatch")
    assert subj.died(name) == f"lifewatch.{token}.died"
    assert subj.node_of(subj.heartbeat(name)) == name


@pytest.mark.parametrize("bad", ["", "a.b", "a*", "=4", "=zz", "a b", ">"])
def test_tokens_that_are_not_ours_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_token(bad)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def presence(boot: str = "boot-1") -> Presence:
    return Presence(boot, 1_700_000_000, 100, 1_700_000_100.0, "0.1.0", "http://x:1")


def test_peer_goes_up_unreachable_up_gone_on_its_heartbeats_and_key() -> None:
    clock = Clock()
    peers = Peers("me", unreachable_after=1.0, mono=clock, wall=clock)
    assert peers.heartbeat("me", presence()) == []  # our own heartbeat is not a peer
    (up,) = peers.heartbeat("a", presence())
    assert (up.kind, up.peer.state) == ("up", UP)
    clock.now += 0.9
    assert peers.tick() == []
    clock.now += 0.2
    (lost,) = peers.tick()
    assert lost.kind == UNREACHABLE and lost.peer.since == clock.now
    assert peers.counts() == {UP: 0, UNREACHABLE: 1, GONE: 0}
    (back,) = peers.heartbeat("a", presence())
    assert back.kind == UP
    (gone,) = peers.expired("a")
    assert gone.peer.state == GONE
    assert peers.expired("a") == []


def test_a_new_boot_id_is_a_reboot() -> None:
    peers = Peers("me", 1.0)
    peers.heartbeat("a", presence("boot-1"))
    changes = peers.heartbeat("a", presence("boot-2"))
    assert [c.kind for c in changes] == ["rebooted"]
    assert changes[0].old_boot == "boot-1" and changes[0].peer.boots == ["boot-1", "boot-2"]


def test_presence_from_the_network_is_checked() -> None:
    bads: list[Any] = [None, [], {"boot_id": "x"}, {**presence().to_dict(), "hz": 0}]
    for bad in bads:
        with pytest.raises(ValueError):
            Presence.from_dict(bad)
    assert Presence.from_dict(presence().to_dict()) == presence()


def life(pid: int, state: str = "alive", host: str = "a", boot: str = "boot-1") -> dict[str, Any]:
    return {"id": f"{host}/{pid}/500", "host": host, "boot_id": boot, "pid": pid,
            "start_ticks": 500, "start_derived": False, "state": state,
            "died_at": None if state == "alive" else "2026-12-01T00:00:00.000000Z",
            "exit": None if state == "alive" else {"code": None, "signal": 9,
                                                    "core_dumped": False},
            "cause": None if state == "alive" else "exit", "comm": "sleep"}  # fmt: skip


def event(type: str, lv: dict[str, Any], cursor: int = 7) -> bytes:
    return orjson.dumps({"cursor": cursor, "type": type, "at": "2026-12-01T00:00:00.250000Z",
                         "sources": ["proc"], "life": lv})  # fmt: skip


def view() -> ClusterView:
    journal = Journal(make_config().journal_size)
    return ClusterView("me", journal, Peers("me", 1.0), RemoteLives(100))


def test_each_event_is_journaled_once_whichever_path_brings_it() -> None:
    v = view()
    sub = v.journal.subscribe(lambda ev: True, 100)
    assert v.received("a", "boot-1.42.500.died", event("died", life(42, "dead")))
    assert not v.received("a", "boot-1.42.500.died", event("died", life(42, "dead")))
    (ev,) = sub.take()
    assert ev.type == "died" and ev.fields is not None and ev.fields["host"] == "a"
    assert ev.fields["origin_cursor"] == 7 and ev.at == 1796083200.25
    assert v.counters["duplicates"] == 1
    ans = v.known_answer("a", 42, 500)
    assert ans is not None and ans["state"] == "dead" and ans["exit"]["signal"] == 9


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", event("gap", life(1)), event("died", life(1, host="b")),
     event("died", {**life(1), "pid": "1"}), orjson.dumps({"type": "died", "life": life(1)})],
)  # fmt: skip
def test_malformed_or_misattributed_events_are_dropped(body: bytes) -> None:
    v = view()
    assert not v.received("a", "id", body)
    assert v.counters["malformed"] == 1 and v.journal.last_cursor < v.journal.first_cursor


def test_a_late_birth_never_revives_a_death() -> None:
    v = view()
    v.received("a", "d", event("died", life(42, "dead")))
    v.received("a", "b", event("born", life(42)))
    assert v.lives.find("a", 42, 500)["state"] == "dead"  # type: ignore[index]


def test_unknown_with_reason_and_since_while_a_peer_is_not_up_never_dead() -> None:
    v = view()
    v.received("a", "b", event("born", life(42)))
    assert v.down_answer("a", "a/42/500") is None  # never heard of: ask it
    v.peers.heartbeat("a", presence())
    assert v.down_answer("a", "a/42/500") is None  # up: ask it
    assert v.known_answer("a", 42, 500) is None
    v.peers.expired("a")
    ans = v.down_answer("a", "a/42/500")
    assert ans is not None and ans["state"] == "unknown" and ans["since"]
    assert "gone" in ans["reason"]


def test_a_reboot_kills_every_life_of_the_old_boot_with_its_own_event() -> None:
    v = view()
    sub = v.journal.subscribe(lambda ev: True, 100)
    v.changed(v.peers.heartbeat("a", presence("boot-1")))
    for pid in (41, 42):
        v.received("a", f"b{pid}", event("born", life(pid)))
    v.received("a", "other", event("born", life(43, boot="boot-0")))
    sub.take()
    v.changed(v.peers.heartbeat("a", presence("boot-2")))
    evs = sub.take()
    assert [e.type for e in evs] == ["node", "died", "died"]
    assert evs[0].fields is not None and evs[0].fields["old_boot_id"] == "boot-1"
    for e in evs[1:]:
        assert e.fields is not None and e.fields["life"]["cause"] == "node_rebooted"
    ans = v.known_answer("a", 41, 500)
    assert ans is not None and ans["state"] == "dead"
    # A life of an older boot still held alive is dead too, answered without asking.
    old = v.known_answer("a", 43, 500)
    assert old is not None and old["state"] == "dead" and old["life"]["cause"] == "node_rebooted"


def test_remote_lives_are_bounded() -> None:
    lives = RemoteLives(3)
    for pid in range(10):
        lives.learn("a", life(pid))
    assert len(lives) == 3 and lives.forgotten == 7
    assert lives.find("a", 9, 500) is not None and lives.find("a", 0, 500) is None


def test_cluster_settings() -> None:
    cfg = make_config(node_name="db1.example.com", cluster={"nats": "nats://a:4222,nats://b:4222"})
    assert cfg.cluster is not None and cfg.cluster.nats == ("nats://a:4222", "nats://b:4222")
    assert make_config().cluster is None
    with pytest.raises(ValueError):
        make_config(cluster={"nats": ["nats://a"], "heartbeat": 1, "unreachable_after": 1})
    with pytest.raises(ValueError):
        make_config(node_name="a/b")


def test_a_cluster_cursor_resumes_after_what_each_host_gave() -> None:
    v = view()
    for n, (host, pid) in enumerate([("a", 1), ("b", 2), ("a", 3), ("b", 4)]):
        v.received(host, f"m{n}", event("died", life(pid, "dead", host=host), cursor=10 + n))
    assert parse_cluster_cursor("a:10,b:11, db1.x:12") == {"a": 10, "b": 11, "db1.x": 12}
    for bad in ("a", "a:", ":1", "a:x", "a:-1"):
        with pytest.raises(ValueError):
            parse_cluster_cursor(bad)
    after, fresh = resume_from(v.journal, {"a": 12, "b": 11})
    sub = v.journal.subscribe(fresh, 100, after)
    assert [e.fields["life"]["pid"] for e in sub.take() if e.fields] == [4]
    after, fresh = resume_from(v.journal, {"a": 10})  # b not named: all of b's
    sub = v.journal.subscribe(fresh, 100, after)
    assert [e.fields["life"]["pid"] for e in sub.take() if e.fields] == [2, 3, 4]
