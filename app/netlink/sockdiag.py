"""The node's connected sockets, from the kernel's sock_diag (NETLINK_SOCK_DIAG) via pyroute2.

Two dumps answer "who is at the other end": TCP over IPv4 and IPv6 (`inet_diag`: local and
remote address, state, uid and the socket's inode) and Unix sockets (`unix_diag` with
UNIX_DIAG_PEER: the inode of the socket at the other end). Dumps are synchronous and take
a few milliseconds (41 TCP sockets in 3-9 ms, Unix in 3.6 ms on this project's VM): callers
run them off the event loop.

A TCP connection's peer on this node is the socket whose local address is this one's
remote and whose remote is this one's local. IPv4 peers of an IPv6 socket appear as
`::ffff:a.b.c.d`; addresses are normalised to the IPv4 text so both sides match.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.diag import (
    SS_CLOSE,
    SS_LISTEN,
    SS_SYN_RECV,
    SS_TIME_WAIT,
    UDIAG_SHOW_NAME,
    UDIAG_SHOW_PEER,
    DiagSocket,
)

# TCP states (include/net/tcp_states.h), as `ss` names them.
TCP_STATES = {
    1: "established", 2: "syn-sent", 3: "syn-recv", 4: "fin-wait-1", 5: "fin-wait-2",
    6: "time-wait", 7: "close", 8: "close-wait", 9: "last-ack", 10: "listen", 11: "closing",
}  # fmt: skip
# Sockets that belong to a connection with a process at each end: not listeners, not
# closed or TIME_WAIT (no owner left), not half-open SYN_RECV (no socket accepted yet).
CONNECTED = ((1 << 12) - 1) & ~(
    (1 << SS_LISTEN) | (1 << SS_CLOSE) | (1 << SS_TIME_WAIT) | (1 << SS_SYN_RECV)
)
UNIX_TYPES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram",
              socket.SOCK_SEQPACKET: "seqpacket"}  # fmt: skip

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class TcpSocket:
    proto: str  # "tcp" or "tcp6"
    state: str
    local: Address
    remote: Address
    uid: int
    inode: int  # 0: no file holds it any more (orphaned, closing)


@dataclass(frozen=True, slots=True)
class UnixSocket:
    inode: int
    peer: int | None  # the peer socket's inode
    name: str | None  # the bound path (abstract names start with "@")
    type: str
    state: str


def normal_ip(text: str) -> str:
    """An address as both ends of a connection write it: IPv4-mapped IPv6 as IPv4."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def address_text(addr: Address) -> str:
    """`IP:PORT`, with IPv6 in brackets."""
    ip, port = addr
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def parse_address(text: str) -> Address:
    """`IP:PORT` or `[IPv6]:PORT` → (normalised ip, port); ValueError otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or len(port_text) > 5:
        raise ValueError(f"{text!r} is not IP:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return normal_ip(str(ipaddress.ip_address(host))), port


def _tcp(msg: Any, proto: str) -> TcpSocket:
    return TcpSocket(
        proto=proto,
        state=TCP_STATES.get(msg["idiag_state"], str(msg["idiag_state"])),
        local=(normal_ip(msg["idiag_src"]), msg["idiag_sport"]),
        remote=(normal_ip(msg["idiag_dst"]), msg["idiag_dport"]),
        uid=msg["idiag_uid"],
        inode=msg["idiag_inode"],
    )


def _unix(msg: Any) -> UnixSocket:
    name = msg.get_attr("UNIX_DIAG_NAME")
    if isinstance(name, bytes | str) and name:
        name = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        name = "@" + name[1:] if name.startswith("\0") else name
    else:
        name = None
    return UnixSocket(
        inode=msg["udiag_ino"],
        peer=msg.get_attr("UNIX_DIAG_PEER") or None,
        name=name,
        type=UNIX_TYPES.get(msg["udiag_type"], str(msg["udiag_type"])),
        state=TCP_STATES.get(msg["udiag_state"], str(msg["udiag_state"])),
    )


def connected_sockets() -> tuple[list[TcpSocket], list[UnixSocket]]:
    """Every connected TCP socket (IPv4 and IPv6) and every Unix socket of this network
    namespace, in three dumps on one sock_diag socket. Raises OSError."""
    with DiagSocket() as ds:
        ds.bind()
        tcp = [_tcp(m, "tcp") for m in ds.get_sock_stats(family=socket.AF_INET, states=CONNECTED)]
        tcp += [
            _tcp(m, "tcp6") for m in ds.get_sock_stats(family=socket.AF_INET6, states=CONNECTED)
        ]
        unix = [
            _unix(m)
            for m in ds.get_sock_stats(
                family=socket.AF_UNIX, show=UDIAG_SHOW_PEER | UDIAG_SHOW_NAME
            )
        ]
    return tcp, unix
