"""The cluster as this node sees it: other nodes' lives (from their events and answers), their
presence, and the cluster journal that `/v1/stream?scope=cluster` reads. Pure apart from the
injected clock: the NATS side (app/cluster/node.py) feeds it decoded messages.

Every message is input from the network: malformed ones are counted and dropped, the tables
are bounded, and a message seen twice (core and JetStream paths, retries) is taken once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from app.cluster.peers import GONE, UNREACHABLE, UP, Change, Peers
from app.core.journal import Journal
from app.core.life import iso

LIFE_EVENTS = ("born", "exec", "died")
NODE_REBOOTED = "node_rebooted"
SEEN = 1 << 16  # message ids remembered for dedupe: far more than one stall's deaths


def life_of(d: Any, host: str) -> dict[str, Any]:
    """A peer's life object, checked enough to be indexed and re-sent; ValueError if not."""
    if not isinstance(d, dict):
        raise ValueError("life is not an object")
    pid, ticks, boot = d.get("pid"), d.get("start_ticks"), d.get("boot_id")
    if type(pid) is not int or type(ticks) is not int or not isinstance(boot, str):
        raise ValueError("life lacks pid, start_ticks or boot_id")
    if d.get("host") != host:
        raise ValueError(f"life of {d.get('host')!r} sent as {host!r}'s")
    if d.get("state") not in ("alive", "dead"):
        raise ValueError("life state is neither alive nor dead")
    return d


class RemoteLives:
    """Other nodes' lives by (host, pid, start_ticks), the most recently heard last; at most
    `limit`, the oldest forgotten (a lookup of it then asks its owner)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lives: OrderedDict[tuple[str, int, int], dict[str, Any]] = OrderedDict()
        self.forgotten = 0

    def __len__(self) -> int:
        return len(self._lives)

    def learn(self, host: str, life: dict[str, Any]) -> None:
        key = (host, life["pid"], life["start_ticks"])
        old = self._lives.get(key)
        if old is not None and old.get("state") == "dead" and life.get("state") != "dead":
            return  # a late birth or exec never revives a death
        self._lives[key] = life
        self._lives.move_to_end(key)
        while len(self._lives) > self.limit:
            self._lives.popitem(last=False)
            self.forgotten += 1

    def find(self, host: str, pid: int, ticks: int) -> dict[str, Any] | None:
        # A derived start is +-1 tick (design.md fact 11): a pid is not reused within a tick.
        for t in (ticks, ticks - 1, ticks + 1):
            life = self._lives.get((host, pid, t))
            if life is not None and (t == ticks or life.get("start_derived")):
                return life
        return None

    def alive_of(self, host: str, boot_id: str) -> list[dict[str, Any]]:
        return [
            life
            for (h, _, _), life in self._lives.items()
            if h == host and life.get("state") == "alive" and life.get("boot_id") == boot_id
        ]


def dead_by_reboot(life: dict[str, Any], at: float) -> dict[str, Any]:
    """`life` as its node's new boot makes it: dead, no exit known, cause node_rebooted."""
    return life | {"state": "dead", "died_at": iso(at), "exit": None, "cause": NODE_REBOOTED}


class ClusterView:
    def __init__(
        self,
        me: str,
        journal: Journal,
        peers: Peers,
        lives: RemoteLives,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.me = me
        self.journal = journal
        self.peers = peers
        self.lives = lives
        self._wall = wall
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.counters = {"received": 0, "duplicates": 0, "malformed": 0, "rebooted_lives": 0}

    # -- events ------------------------------------------------------------------------
    def seen(self, msgid: str) -> bool:
        """True if `msgid` was taken before; else remembers it."""
        if msgid in self._seen:
            self.counters["duplicates"] += 1
            return True
        self._seen[msgid] = None
        if len(self._seen) > SEEN:
            self._seen.popitem(last=False)
        return False

    def received(self, host: str, msgid: str, body: bytes) -> bool:
        """A life event published by `host` (or by this node, fed in directly). Journaled
        once, whichever path brought it first; False for a repeat or a malformed one."""
        if self.seen(msgid):
            return False
        try:
            d = orjson.loads(body)
            if not isinstance(d, dict) or d.get("type") not in LIFE_EVENTS:
                raise ValueError("not a life event")
            life = life_of(d.get("life"), host)
            at = datetime.fromisoformat(str(d["at"])).timestamp()
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            self.counters["malformed"] += 1
            return False
        self.counters["received"] += 1
        self.lives.learn(host, life)
        fields: dict[str, Any] = {"host": host, "origin_cursor": d.get("cursor")}
        if isinstance(d.get("sources"), list):
            fields["sources"] = d["sources"]
        fields["life"] = life
        self.journal.append(d["type"], None, fields, 0, at)
        return True

    def changed(self, changes: list[Change]) -> None:
        """Journal each peer transition as a `node` event; a reboot also kills, here, every
        life of the old boot this node knew alive, each with its own `died` event."""
        for ch in changes:
            peer = ch.peer
            fields: dict[str, Any] = {
                "host": peer.name, "state": ch.kind, "boot_id": peer.presence.boot_id,
                "since": iso(peer.since),
            }  # fmt: skip
            if ch.kind == "rebooted":
                fields["old_boot_id"] = ch.old_boot
                at = self._wall()
                self.journal.append("node", None, fields, 0, at)
                for life in self.lives.alive_of(peer.name, ch.old_boot or ""):
                    dead = dead_by_reboot(life, at)
                    self.lives.learn(peer.name, dead)
                    self.counters["rebooted_lives"] += 1
                    fields = {"host": peer.name, "origin_cursor": None, "life": dead}
                    self.journal.append("died", None, fields, 0, at)
            else:
                self.journal.append("node", None, fields, 0)

    # -- answers -----------------------------------------------------------------------
    def known_answer(self, host: str, pid: int, ticks: int) -> dict[str, Any] | None:
        """An answer this node can give for `host`'s life without asking: its stored death,
        or a life of a boot `host` no longer runs. None: ask the owner."""
        life = self.lives.find(host, pid, ticks)
        if life is None:
            return None
        if life.get("state") == "dead":
            return answer(life["id"], "dead", "death published by its node", life)
        peer = self.peers.get(host)
        if peer is not None and life.get("boot_id") != peer.presence.boot_id:
            dead = dead_by_reboot(life, peer.since)
            return answer(life["id"], "dead", f"{host} booted again (boot {peer.presence.boot_id})",
                          dead)  # fmt: skip
        return None

    def down_answer(self, host: str, ident: str) -> dict[str, Any] | None:
        """`unknown` with reason and since while `host` is not up; None if it is up (or
        never heard of: then it is asked, and no answer is `unknown` too)."""
        peer = self.peers.get(host)
        if peer is None or peer.state == UP:
            return None
        why = {UNREACHABLE: "unreachable (no heartbeat)", GONE: "gone (presence expired)"}
        out = answer(ident, "unknown", f"node {host} is {why[peer.state]}", None)
        out["since"] = iso(peer.since)
        return out


def answer(ident: str, state: str, reason: str, life: dict[str, Any] | None) -> dict[str, Any]:
    """The API's LifeAnswer for a life of another node."""
    return {
        "id": ident,
        "state": state,
        "reason": reason,
        "died_at": None if life is None else life.get("died_at"),
        "exit": None if life is None else life.get("exit"),
        "life": life,
    }


def parse_cluster_cursor(text: str) -> dict[str, int]:
    """`host:cursor,host:cursor` (each host's own `origin_cursor`) -> {host: cursor}."""
    out: dict[str, int] = {}
    for part in text.split(","):
        host, sep, num = part.strip().rpartition(":")
        if not sep or not host or not num.isdigit() or len(num) > 19 or len(out) >= 1024:
            raise ValueError(f"a cluster cursor is host:cursor,host:cursor..., got {part!r}")
        out[host] = int(num)
    return out


def resume_from(journal: Journal, cursor: dict[str, int]) -> tuple[int, Callable[[Any], bool]]:
    """Where a client that read up to `cursor` (per host, possibly on another node) resumes in
    this node's cluster journal, and the filter that drops what it already had. A host it
    does not name is replayed from the window's start. Origin cursors are not dense (a node
    publishes only life events), so a window that no longer reaches back cannot be told from
    one that does: resuming is exact within the window (journal_size events), no further."""
    after = journal.last_cursor
    for ev in journal.since(journal.oldest_cursor - 1) or []:
        f = ev.fields or {}
        oc = f.get("origin_cursor")
        if not isinstance(oc, int) or oc > cursor.get(f.get("host", ""), -1):
            after = ev.cursor - 1
            break

    def fresh(ev: Any) -> bool:
        f = ev.fields or {}
        oc = f.get("origin_cursor")
        return not isinstance(oc, int) or oc > cursor.get(f.get("host", ""), -1)

    return after, fresh
