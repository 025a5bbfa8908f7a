"""Partners across nodes: the life at the other end of a TCP connection whose peer is not a
life of this node.

Each node announces its IP addresses in its presence. To find who holds the far end of a
connection `local -> remote`, a node asks, by request-reply, the nodes that are `up` and
announce `remote`'s address: "which of your lives holds the socket `remote -> local`?". The
owner answers from its own kernel (sock_diag and /proc/*/fd, app/core/partners.py, in a
worker thread, one at a time) with the lives it speaks for. No answer, or no node announcing
the address (NAT, not a cluster member), leaves the peer `unknown` with that reason.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import nats.errors
import orjson

from app.cluster.peers import UP
from app.core.partners import LifeGone
from app.netlink.sockdiag import Address, address_text, parse_address

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from app.cluster.node import Cluster

HOLDERS_MAX = 64  # holders of one socket an answer may list (a peer is input)


class PartnerFinder:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._lock = asyncio.Lock()  # one resolution at a time for peers' questions
        self.counters = {"asked": 0, "found": 0, "answered": 0, "timeouts": 0, "errors": 0}

    # -- the owner's side --------------------------------------------------------------------
    async def on_peer(self, msg: Msg) -> None:
        """`{"local", "remote"}`: the lives of this node holding a connected TCP socket with
        these two addresses (as this node sees them)."""
        if not msg.reply:
            return
        try:
            q = orjson.loads(msg.data)
            local, remote = parse_address(str(q["local"])), parse_address(str(q["remote"]))
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as e:
            await msg.respond(orjson.dumps({"error": f"bad question: {e}"}))
            return
        await msg.respond(orjson.dumps(await self.holders_here(local, remote)))

    async def holders_here(self, local: Address, remote: Address) -> dict[str, Any]:
        c = self.cluster
        service = c.service
        async with self._lock:
            try:
                res = await asyncio.to_thread(service.partners.connection, local, remote)
            except LifeGone:
                return {"holders": []}
            except LookupError:
                return {"holders": []}
            except OSError as e:
                return {"error": f"sock_diag failed: {e}"}
        if not res.complete:
            return {"error": "the fd scan stopped at its bound"}
        self.counters["answered"] += 1
        out = []
        for h in res.holders:
            if not c.speaks_for(h.pid):
                continue
            life = service.registry.find(h.pid, h.start_ticks)
            out.append({"id": service.node.life_id(h.pid, h.start_ticks), "pid": h.pid,
                        "start_ticks": h.start_ticks,
                        "comm": life.comm if life is not None else None})  # fmt: skip
        return {"holders": out}

    # -- the asking side ---------------------------------------------------------------------
    async def holders_elsewhere(
        self, local: Address, remote: Address
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The lives of other nodes at the far end of `local -> remote`, each with its `host`;
        with a reason when there are none."""
        c = self.cluster
        ip = remote[0]
        asked = [
            p.name for p in c.peers.peers.values()
            if p.state == UP and ip in p.presence.addresses
        ]  # fmt: skip
        if not asked:
            return [], f"no cluster member that is up announces {ip} (another host, or NAT)"
        nc = c.nc
        if nc is None or not nc.is_connected:
            return [], f"not connected to the cluster ({c.connection})"
        body = orjson.dumps({"local": address_text(remote), "remote": address_text(local)})
        self.counters["asked"] += 1
        got = await asyncio.gather(*(self._ask(host, body) for host in asked))
        out = [h for holders, _ in got for h in holders]
        if out:
            self.counters["found"] += 1
            return out, None
        reasons = "; ".join(why for _, why in got if why)
        return [], reasons or f"no node announcing {ip} holds the other end"

    async def _ask(self, host: str, body: bytes) -> tuple[list[dict[str, Any]], str | None]:
        c = self.cluster
        try:
            msg = await c.nc.request(c.subjects.peer(host), body, timeout=c.settings.ask_timeout)
            got = orjson.loads(msg.data)
        except nats.errors.NoRespondersError:
            return [], f"no node {host} answers"
        except (TimeoutError, nats.errors.TimeoutError):
            self.counters["timeouts"] += 1
            return [], f"node {host} did not answer within {c.settings.ask_timeout * 1000:.0f} ms"
        except Exception as e:
            self.counters["errors"] += 1
            return [], f"asking {host} failed: {e}"
        if not isinstance(got, dict):
            return [], f"node {host} gave no valid answer"
        if "error" in got:
            return [], f"node {host}: {str(got['error'])[:200]}"
        holders = got.get("holders")
        if not isinstance(holders, list) or len(holders) > HOLDERS_MAX:
            return [], f"node {host} gave no valid answer"
        out = []
        for h in holders:
            if not (isinstance(h, dict) and isinstance(h.get("id"), str)
                    and h["id"].startswith(f"{host}/") and isinstance(h.get("pid"), int)
                    and isinstance(h.get("start_ticks"), int)):  # fmt: skip
                return [], f"node {host} gave no valid answer"
            comm = h.get("comm")
            out.append({"id": h["id"], "pid": h["pid"], "start_ticks": h["start_ticks"],
                        "comm": comm if isinstance(comm, str) else None, "host": host})  # fmt: skip
        return out, None
