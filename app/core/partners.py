"""A life's partners: from its sockets to the lives at their other ends on this node.

A process knows its sockets, not its partners' pids and starts. The kernel knows both ends:
sock_diag lists every connected TCP socket with its two addresses, and every Unix socket
with its peer's inode (app/netlink/sockdiag.py); /proc/<pid>/fd says which process holds
which socket inode (app/procfs.py). The peer of a TCP socket is the socket with the two
addresses swapped; its holder is a life, named by the start in its `stat`.

The fd scan costs about 10 µs per descriptor on this project's VM, so it is bounded (`max_fds`
descriptors and `budget` seconds); a scan cut short says so (`complete: False`) and the API
answers 503 rather than a partial truth. It reads only the kernel and /proc: callers run it
in a worker thread, never on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app import procfs
from app.netlink import sockdiag
from app.netlink.sockdiag import Address, TcpSocket, UnixSocket

NO_PEER_HERE = (
    "no socket on this node has the other end of this connection: the peer is on another "
    "host (or behind NAT), or has closed"
)


@dataclass(frozen=True, slots=True)
class Holder:
    """A process holding a socket: the life `pid`/`start_ticks` at the time of the scan."""

    pid: int
    start_ticks: int


@dataclass(frozen=True, slots=True)
class Connection:
    proto: str  # tcp, tcp6, unix
    state: str
    local: str  # IP:PORT, or a Unix socket's bound name (None: unnamed)
    remote: str | None
    inode: int
    peer_inode: int | None
    peers: tuple[Holder, ...]  # the lives at the other end, on this node
    reason: str | None  # why `peers` is empty


@dataclass(slots=True)
class Resolution:
    """The connections of one life, and what resolving them cost."""

    pid: int
    start_ticks: int
    connections: list[Connection] = field(default_factory=list)
    holders: tuple[Holder, ...] = ()  # for one connection: the lives holding its local end
    fds: int = 0
    processes: int = 0
    seconds: float = 0.0
    complete: bool = True


class LifeGone(LookupError):
    """The pid no longer holds the life asked about."""


@dataclass(frozen=True, slots=True)
class Bounds:
    max_fds: int = 100_000
    budget: float = 1.0  # seconds


def _start_of(pid: int, proc: Path) -> int | None:
    try:
        return procfs.read_stat(pid, proc).start_ticks
    except (OSError, procfs.StatError):
        return None


def _holders(pids: list[int], proc: Path, starts: dict[int, int | None]) -> tuple[Holder, ...]:
    out = []
    for pid in pids:
        if pid not in starts:
            starts[pid] = _start_of(pid, proc)
        start = starts[pid]
        if start is not None:
            out.append(Holder(pid, start))
    return tuple(out)


class Resolver:
    """Resolves connections to lives; every method is synchronous and blocking (a thread's)."""

    def __init__(
        self,
        proc: Path = procfs.PROC,
        bounds: Bounds = Bounds(),
        dump: Callable[[], tuple[list[TcpSocket], list[UnixSocket]]] = (sockdiag.connected_sockets),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.proc = proc
        self.bounds = bounds
        self._dump = dump
        self._clock = clock

    def connections(self, pid: int, start_ticks: int) -> Resolution:
        """Every TCP and connected Unix socket the life holds, each with the lives at its
        other end on this node. Raises LifeGone, OSError (sock_diag)."""
        t0 = self._clock()
        mine = procfs.socket_fds(pid, self.proc)
        if _start_of(pid, self.proc) != start_ticks:
            raise LifeGone(f"pid {pid} does not hold that life (now)")
        tcp, unix = self._dump()
        by_ends = {(s.local, s.remote): s for s in tcp}
        unix_by_inode = {u.inode: u for u in unix}
        own_tcp = [s for s in tcp if s.inode in mine]
        own_unix = [u for u in unix if u.inode in mine and u.peer is not None]
        wanted: set[int] = set()
        for s in own_tcp:
            other = by_ends.get((s.remote, s.local))
            if other is not None and other.inode:
                wanted.add(other.inode)
        wanted.update(u.peer for u in own_unix if u.peer is not None)
        scan = self._scan(wanted, t0)
        res = Resolution(pid, start_ticks, fds=scan.fds, processes=scan.processes,
                         complete=scan.complete)  # fmt: skip
        starts: dict[int, int | None] = {}
        for s in own_tcp:
            other = by_ends.get((s.remote, s.local))
            res.connections.append(self._tcp_connection(s, other, scan, starts))
        for u in own_unix:
            peer = unix_by_inode.get(u.peer) if u.peer is not None else None
            holders = _holders(scan.owners.get(u.peer or 0, []), self.proc, starts)
            res.connections.append(
                Connection(
                    proto="unix",
                    state=u.state,
                    local=u.name or f"unix:{u.inode}",
                    remote=(peer.name if peer is not None and peer.name else f"unix:{u.peer}"),
                    inode=u.inode,
                    peer_inode=u.peer,
                    peers=holders,
                    reason=None if holders else self._why_none(scan),
                )
            )
        if _start_of(pid, self.proc) != start_ticks:  # died during the scan
            raise LifeGone(f"pid {pid} ended while its sockets were read")
        res.seconds = self._clock() - t0
        return res

    def connection(self, local: Address, remote: Address) -> Resolution:
        """One TCP connection by its two addresses, as seen from `local`: the lives holding
        its local end (`holders`) and those at its other end. Raises LookupError when no
        socket on this node has these addresses, OSError (sock_diag)."""
        t0 = self._clock()
        tcp, _ = self._dump()
        by_ends = {(s.local, s.remote): s for s in tcp}
        s = by_ends.get((local, remote))
        if s is None:
            raise LookupError(
                f"no connected TCP socket on this node has local {sockdiag.address_text(local)}"
                f" and remote {sockdiag.address_text(remote)}"
            )
        other = by_ends.get((remote, local))
        wanted = {s.inode} | ({other.inode} if other is not None and other.inode else set())
        scan = self._scan(wanted - {0}, t0)
        starts: dict[int, int | None] = {}
        holders = _holders(scan.owners.get(s.inode, []), self.proc, starts)
        res = Resolution(0, 0, holders=holders, fds=scan.fds, processes=scan.processes,
                         complete=scan.complete)  # fmt: skip
        res.connections.append(self._tcp_connection(s, other, scan, starts))
        res.seconds = self._clock() - t0
        return res

    def _scan(self, wanted: set[int], t0: float) -> procfs.OwnerScan:
        return procfs.socket_owners(
            wanted, self.proc, self.bounds.max_fds, t0 + self.bounds.budget, self._clock
        )

    def _tcp_connection(
        self,
        s: TcpSocket,
        other: TcpSocket | None,
        scan: procfs.OwnerScan,
        starts: dict[int, int | None],
    ) -> Connection:
        holders = (
            _holders(scan.owners.get(other.inode, []), self.proc, starts)
            if other is not None and other.inode
            else ()
        )
        if holders:
            reason = None
        elif other is None:
            reason = NO_PEER_HERE
        elif not other.inode:
            reason = "the other end's socket is closing: no process holds it any more"
        else:
            reason = self._why_none(scan)
        return Connection(
            proto=s.proto,
            state=s.state,
            local=sockdiag.address_text(s.local),
            remote=sockdiag.address_text(s.remote),
            inode=s.inode,
            peer_inode=other.inode if other is not None else None,
            peers=holders,
            reason=reason,
        )

    @staticmethod
    def _why_none(scan: procfs.OwnerScan) -> str:
        if not scan.complete:
            return "the fd scan stopped at its bound before finding the holder"
        return "no process holds the other end (it was closed or passed on meanwhile)"
