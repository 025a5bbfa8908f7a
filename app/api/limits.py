"""Connection limits with clear refusals (issue 10, Must have 6; docs/security.md, "Limits").

Every connection passes a gate before aiohttp sees it: the gate counts connections in total
and per peer (address on TCP, uid on the Unix socket), gives a connection `header_timeout`
seconds to send its first request's headers, and refuses what passes a limit with a JSON
answer (503 or 408) and a counter in /metrics, instead of a silent reset. It also keeps file
descriptors for what matters most: descriptors are numbered lowest free first, so a
connection whose descriptor is numbered within FD_RESERVE_TCP of the limit (ulimit -n) proves
that fewer than that are free, and is refused while some are still left for the Unix socket
(a smaller reserve), follows (app/core/follow.py) and the kernel sources. Running out of
descriptors is then a clear 503 on new TCP connections, and `/healthz` still answers over
the Unix socket.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_runner import BaseRunner
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.api.errors import JsonErrorsHandler
from app.core.config import Config

log = logging.getLogger(__name__)

FD_RESERVE_TCP = 64  # descriptors left free when a TCP connection is refused
FD_RESERVE_UNIX = 16  # ... when a Unix socket connection is refused
HEADER_END = b"\r\n\r\n"
_UCRED = struct.Struct("3i")


class Refusals:
    """What the daemon refused, by reason: `lifewatch_refused_total{reason}` in /metrics."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, reason: str) -> None:
        self.counts[reason] += 1


REFUSALS = web.AppKey("refusals", Refusals)


def refusal(status: int, error: str, detail: str) -> bytes:
    """A complete HTTP answer to send on a connection before closing it."""
    import json

    body = json.dumps({"error": error, "detail": detail}).encode()
    reason = {503: "Service Unavailable", 408: "Request Timeout"}.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    )
    if status == 503:
        head += "Retry-After: 1\r\n"
    return head.encode() + b"\r\n" + body


def fd_soft_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 30 if soft == resource.RLIM_INFINITY else soft


class Gate:
    """The limits of one listener ("tcp" or "unix"), shared by its connections."""

    def __init__(self, kind: str, config: Config, refusals: Refusals) -> None:
        self.kind = kind
        self.max_total = config.max_connections
        self.max_peer = config.max_connections_per_peer
        self.header_timeout = config.header_timeout
        self.refusals = refusals
        reserve = FD_RESERVE_TCP if kind == "tcp" else FD_RESERVE_UNIX
        self.fd_ceiling = fd_soft_limit() - reserve
        self.open = 0
        self.accepted = 0
        self.by_peer: Counter[str] = Counter()
        if kind == "tcp" and self.max_total > self.fd_ceiling:
            log.warning(
                "max_connections %d does not fit the descriptor limit (ulimit -n %d): TCP "
                "connections past about %d are refused (503)",
                self.max_total, fd_soft_limit(), self.fd_ceiling,
            )  # fmt: skip

    def protocol(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: Gated(self, inner())

    def admit(self, transport: asyncio.BaseTransport) -> tuple[str | None, str]:
        """(None, peer) when the connection may go on, else (refusal reason, peer)."""
        sock: Any = transport.get_extra_info("socket")
        peer = self.peer_of(transport, sock)
        fd = sock.fileno() if sock is not None else -1
        if fd >= self.fd_ceiling:
            return "out_of_descriptors", peer
        if self.open >= self.max_total:
            return "too_many_connections", peer
        if self.by_peer[peer] >= self.max_peer:
            return "too_many_connections_from_peer", peer
        return None, peer

    def peer_of(self, transport: asyncio.BaseTransport, sock: Any) -> str:
        if self.kind == "unix":
            try:
                _, uid, _ = _UCRED.unpack(
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
                )
                return f"uid:{uid}"
            except (OSError, AttributeError, struct.error):
                return "uid:?"
        peer = transport.get_extra_info("peername")
        return str(peer[0]) if isinstance(peer, tuple) and peer else "?"

    def detail(self, why: str, peer: str) -> str:
        if why == "out_of_descriptors":
            return (f"the daemon is near its file descriptor limit (ulimit -n "
                    f"{fd_soft_limit()}); retry later or raise the limit")  # fmt: skip
        if why == "too_many_connections":
            return f"{self.open} connections are open; the limit is {self.max_total}"
        return f"{self.by_peer[peer]} connections are open from {peer}; the limit per peer " \
            f"is {self.max_peer}"  # fmt: skip


class Gated(asyncio.Protocol):
    """aiohttp's protocol behind the gate: everything is passed through once admitted."""

    def __init__(self, gate: Gate, inner: asyncio.Protocol) -> None:
        self.gate = gate
        self.inner = inner
        self.peer: str | None = None
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        gate = self.gate
        why, peer = gate.admit(transport)
        if why is not None:
            gate.refusals(why)
            transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
            transport.write(refusal(503, why, gate.detail(why, peer)))
            transport.close()
            return
        self.peer = peer
        gate.open += 1
        gate.accepted += 1
        gate.by_peer[peer] += 1
        self.transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(gate.header_timeout, self._too_slow)
        # Parser-level refusals (bad request line, bad header) answer JSON like the rest.
        if type(self.inner) is RequestHandler:
            self.inner.__class__ = JsonErrorsHandler
        self.inner.connection_made(transport)

    def _too_slow(self) -> None:
        self.timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.gate.refusals("header_timeout")
        transport.write(refusal(408, "header_timeout",
                                f"no complete request headers within "
                                f"{self.gate.header_timeout:g} s"))  # fmt: skip
        transport.close()

    def data_received(self, data: bytes) -> None:
        if self.timer is not None:
            seen = self.tail + data
            if HEADER_END in seen:
                self.timer.cancel()
                self.timer = None
            else:
                self.tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is None:
            return  # refused: aiohttp never saw it
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        gate = self.gate
        gate.open -= 1
        gate.by_peer[self.peer] -= 1
        if gate.by_peer[self.peer] <= 0:
            del gate.by_peer[self.peer]
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class GatedSite(web.BaseSite):
    """A listener on a bound socket whose connections pass `gate` first."""

    __slots__ = ("_gate", "_name", "_sock")

    def __init__(self, runner: BaseRunner, sock: socket.socket, gate: Gate, name: str) -> None:
        super().__init__(runner)
        self._sock = sock
        self._gate = gate
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        factory = self._gate.protocol(server)
        if self._sock.family == socket.AF_UNIX:
            self._server = await loop.create_unix_server(factory, sock=self._sock)
        else:
            self._server = await loop.create_server(factory, sock=self._sock)


GATES = web.AppKey("gates", dict[str, Gate])


class LimitsCollector(Collector):
    """Connections and refusals in /metrics."""

    def __init__(self, refusals: Refusals, gates: dict[str, Gate]) -> None:
        self.refusals = refusals
        self.gates = gates

    def collect(self) -> Iterator[Metric]:
        ref = CounterMetricFamily(
            "lifewatch_refused", "requests and connections refused at a limit, by reason",
            labels=["reason"],
        )  # fmt: skip
        for reason, n in sorted(self.refusals.counts.items()):
            ref.add_metric([reason], n)
        yield ref
        now = GaugeMetricFamily(
            "lifewatch_connections", "open API connections by transport", labels=["transport"]
        )
        total = CounterMetricFamily(
            "lifewatch_connections_accepted", "API connections accepted by transport",
            labels=["transport"],
        )  # fmt: skip
        peers = GaugeMetricFamily(
            "lifewatch_connections_top_peer",
            "open connections of the peer holding most, by transport", labels=["transport"],
        )  # fmt: skip
        for kind, gate in sorted(self.gates.items()):
            now.add_metric([kind], gate.open)
            total.add_metric([kind], gate.accepted)
            peers.add_metric([kind], max(gate.by_peer.values(), default=0))
        yield now
        yield total
        yield peers
