"""The asking side of lookups and follows of other nodes' lives.

For each life: a death this node already holds, or a boot its node no longer runs, answers
`dead` at once; a node that is not `up` answers `unknown` with reason and since (never
`dead`); otherwise its owner is asked by request-reply, all lives of one host in one request
(in slices), every host in parallel, each with a short timeout: no answer is `unknown`.
"""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import nats.errors
import orjson

from app.cluster.view import NODE_REBOOTED, answer, life_of
from app.core.identity import LifeId, LifeIdError, TickClock
from app.core.life import iso

if TYPE_CHECKING:
    from app.cluster.node import Cluster

Numbered = tuple[int, dict[str, Any]]  # an answer and its place in the batch
SLICE = 500  # lives per request: 500 answers of ~0.7 kB stay under NATS's 1 MB payload
ANSWER_STATES = frozenset({"alive", "dead", "unknown", "invalid"})


class Asker:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.counters = {"asked": 0, "answered": 0, "timeouts": 0, "no_responders": 0,
                         "known": 0, "down": 0, "bad_answers": 0}  # fmt: skip

    async def answers(self, items: list[tuple[LifeId, str]]) -> list[dict[str, Any]]:
        """Answers for lives of other nodes, in the order given."""
        out: list[dict[str, Any] | None] = [None] * len(items)
        by_host: dict[str, list[tuple[int, str]]] = {}
        view = self.cluster.view
        for i, (lid, text) in enumerate(items):
            known = self._known(lid, text)
            if known is not None:
                self.counters["known"] += 1
                out[i] = known
                continue
            down = view.down_answer(lid.host, text)
            if down is not None:
                self.counters["down"] += 1
                out[i] = down
                continue
            by_host.setdefault(lid.host, []).append((i, text))
        jobs = [
            self._ask(host, todo[k : k + SLICE])
            for host, todo in by_host.items()
            for k in range(0, len(todo), SLICE)
        ]
        for got in await asyncio.gather(*jobs):
            for i, ans in got:
                out[i] = ans
        return [a if a is not None else answer("", "unknown", "not answered", None) for a in out]

    def _known(self, lid: LifeId, text: str) -> dict[str, Any] | None:
        view = self.cluster.view
        peer = view.peers.get(lid.host)
        start = lid.start
        if isinstance(start, Fraction):
            if peer is None:
                return None
            clock = TickClock(peer.presence.btime, peer.presence.hz)
            if start < peer.presence.btime - 1 and len(peer.boots) > 1:
                # Started before its node's current boot, which we saw begin: a dead life.
                out = answer(text, "dead", f"{lid.host} booted again since", None)
                out["cause"] = NODE_REBOOTED
                return out
            try:
                ticks = clock.ticks_of(start)
            except LifeIdError:
                return None
        else:
            ticks = start
        return view.known_answer(lid.host, lid.pid, ticks)

    async def _ask(self, host: str, todo: list[tuple[int, str]]) -> list[Numbered]:
        c = self.cluster
        nc = c.nc
        t0 = time.monotonic()
        if nc is None or not nc.is_connected:
            reason = f"not connected to the cluster ({c.connection})"
            return [(i, unknown(text, reason, c.connection_since)) for i, text in todo]
        self.counters["asked"] += len(todo)
        body = orjson.dumps({"lives": [text for _, text in todo]})
        timeout = c.settings.ask_timeout
        try:
            msg = await nc.request(c.subjects.ask(host), body, timeout=timeout)
        except nats.errors.NoRespondersError:
            self.counters["no_responders"] += len(todo)
            return [(i, unknown(text, f"no node {host} answers", None)) for i, text in todo]
        except (TimeoutError, nats.errors.TimeoutError):
            self.counters["timeouts"] += len(todo)
            why = f"node {host} did not answer within {timeout * 1000:.0f} ms"
            since = time.time() - (time.monotonic() - t0)
            return [(i, unknown(text, why, since)) for i, text in todo]
        except Exception as e:
            return [(i, unknown(text, f"asking {host} failed: {e}", None)) for i, text in todo]
        got = self._parse(host, msg.data, len(todo))
        if got is None:
            self.counters["bad_answers"] += len(todo)
            return [(i, unknown(text, f"node {host} gave no valid answer", None))
                    for i, text in todo]  # fmt: skip
        self.counters["answered"] += len(todo)
        return [(i, a) for (i, _), a in zip(todo, got, strict=True)]

    def _parse(self, host: str, data: bytes, n: int) -> list[dict[str, Any]] | None:
        """The owner's answers, checked (a peer is input): one object per life asked."""
        try:
            got = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(got, list) or len(got) != n:
            return None
        for a in got:
            if not isinstance(a, dict) or a.get("state") not in ANSWER_STATES:
                return None
            life = a.get("life")
            if life is not None:
                try:
                    self.cluster.view.lives.learn(host, life_of(life, host))
                except ValueError:
                    return None
        return got

    async def follow(self, text: str, host: str) -> tuple[int, dict[str, Any]]:
        """Ask `host` to follow its life `text` with a pidfd; its death then reaches every
        node on the deaths subject. Returns the owner's status and answer."""
        c = self.cluster
        down = c.view.down_answer(host, text)
        if down is not None:
            return 503, {"error": "node_unreachable", "detail": down["reason"],
                         "since": down.get("since")}  # fmt: skip
        nc = c.nc
        if nc is None or not nc.is_connected:
            return 503, {"error": "no_cluster", "detail": f"not connected ({c.connection})"}
        try:
            msg = await nc.request(c.subjects.follow(host), orjson.dumps({"life": text}),
                                   timeout=c.settings.ask_timeout)  # fmt: skip
            got = orjson.loads(msg.data)
            status, body = int(got["status"]), got["body"]
            if not isinstance(body, dict) or not 200 <= status < 600:
                raise ValueError("bad answer")
        except nats.errors.NoRespondersError:
            return 404, {"error": "not_found", "detail": f"no node {host} answers"}
        except (TimeoutError, nats.errors.TimeoutError):
            return 504, {"error": "node_timeout", "detail": f"node {host} did not answer"}
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            return 502, {"error": "bad_answer", "detail": f"node {host} gave no valid answer"}
        return status, body


def unknown(text: str, reason: str, since: float | None) -> dict[str, Any]:
    out = answer(text, "unknown", reason, None)
    out["since"] = iso(since)
    return out
