"""What this node knows of the other nodes: presence, state and boot, with an injected clock.

A peer is `up` while its heartbeats come; `unreachable` once none came for
`unreachable_after` s (it may be stopped, partitioned, or we may be); `gone` when its
presence key expired in the KV bucket (no refresh for `presence_ttl` s). None of these says
anything about its lives: they are `unknown` until it speaks again. Only a *new boot id*
is evidence: every life of the old boot is dead (docs/cluster.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

UP, UNREACHABLE, GONE = "up", "unreachable", "gone"
PEER_STATES = (UP, UNREACHABLE, GONE)


@dataclass(frozen=True, slots=True)
class Presence:
    """What a node says of itself in each heartbeat and in its KV key."""

    boot_id: str
    btime: int
    hz: int
    started_at: float
    version: str
    api: str

    @classmethod
    def from_dict(cls, d: Any) -> Presence:
        """From decoded JSON; raises ValueError on anything malformed (peers are input)."""
        if not isinstance(d, dict):
            raise ValueError("presence is not an object")
        try:
            p = cls(str(d["boot_id"]), int(d["btime"]), int(d["hz"]), float(d["started_at"]),
                    str(d["version"]), str(d["api"]))  # fmt: skip
        except (KeyError, TypeError) as e:
            raise ValueError(f"bad presence: {e}") from None
        if not (0 < p.hz <= 100_000) or len(p.boot_id) > 64 or len(p.api) > 300:
            raise ValueError("presence out of range")
        return p

    def to_dict(self) -> dict[str, Any]:
        return {
            "boot_id": self.boot_id, "btime": self.btime, "hz": self.hz,
            "started_at": self.started_at, "version": self.version, "api": self.api,
        }  # fmt: skip


@dataclass(slots=True)
class Peer:
    name: str
    presence: Presence
    state: str
    since: float  # wall time the state began
    last_heartbeat: float | None = None  # monotonic
    last_heartbeat_wall: float | None = None
    heartbeats: int = 0
    boots: list[str] = field(default_factory=list)  # boot ids seen, oldest first (bounded)


@dataclass(frozen=True, slots=True)
class Change:
    """A peer's transition: `up`, `unreachable`, `gone` or `rebooted` (old boot in `old`)."""

    kind: str
    peer: Peer
    old_boot: str | None = None


class Peers:
    def __init__(
        self,
        me: str,
        unreachable_after: float,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        limit: int = 1024,
    ) -> None:
        self.me = me
        self.unreachable_after = unreachable_after
        self._mono, self._wall = mono, wall
        self.limit = limit  # peers remembered: names come from the network
        self.peers: dict[str, Peer] = {}

    def get(self, name: str) -> Peer | None:
        return self.peers.get(name)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(PEER_STATES, 0)
        for p in self.peers.values():
            out[p.state] += 1
        return out

    def heartbeat(self, name: str, presence: Presence) -> list[Change]:
        """A heartbeat from `name`: it is up, and maybe rebooted."""
        changes = self._known(name, presence)
        peer = self.peers.get(name)
        if peer is None:
            return changes
        now = self._mono()
        peer.last_heartbeat, peer.last_heartbeat_wall = now, self._wall()
        peer.heartbeats += 1
        if peer.state != UP:
            peer.state, peer.since = UP, self._wall()
            changes.append(Change(UP, peer))
        return changes

    def announced(self, name: str, presence: Presence) -> list[Change]:
        """Its presence key in the KV bucket: it exists with this boot, not that it is up."""
        return self._known(name, presence)

    def _known(self, name: str, presence: Presence) -> list[Change]:
        if name == self.me:
            return []
        peer = self.peers.get(name)
        if peer is None:
            if len(self.peers) >= self.limit:
                return []
            self.peers[name] = peer = Peer(name, presence, UNREACHABLE, self._wall(),
                                           boots=[presence.boot_id])  # fmt: skip
            return []
        if presence.boot_id != peer.presence.boot_id:
            old = peer.presence.boot_id
            peer.presence = presence
            peer.boots = [*peer.boots[-7:], presence.boot_id]
            return [Change("rebooted", peer, old)]
        peer.presence = presence
        return []

    def expired(self, name: str) -> list[Change]:
        """Its presence key expired (or was deleted): `gone`."""
        peer = self.peers.get(name)
        if peer is None or peer.state == GONE:
            return []
        peer.state, peer.since = GONE, self._wall()
        return [Change(GONE, peer)]

    def tick(self) -> list[Change]:
        """Peers whose heartbeats stopped coming become `unreachable`."""
        now = self._mono()
        out = []
        for peer in self.peers.values():
            last = peer.last_heartbeat
            if peer.state == UP and last is not None and now - last > self.unreachable_after:
                peer.state, peer.since = UNREACHABLE, self._wall()
                out.append(Change(UNREACHABLE, peer))
        return out
