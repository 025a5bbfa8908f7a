"""Opening a netlink socket, and the one `struct nlmsghdr` layout every netlink module shares."""

from __future__ import annotations

import socket
import struct

# struct nlmsghdr (include/uapi/linux/netlink.h): nlmsg_len, nlmsg_type, nlmsg_flags,
# nlmsg_seq, nlmsg_pid.
NLMSGHDR = struct.Struct("=IHHII")
NLMSG_HDRLEN = NLMSGHDR.size  # 16
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # asm-generic/socket.h


def nlmsg_align(length: int) -> int:
    """NLMSG_ALIGN: messages in one datagram start on 4-byte boundaries."""
    return (length + 3) & ~3


def open_netlink(protocol: int, groups: int, rcvbuf: int) -> socket.socket:
    """A bound AF_NETLINK socket of `protocol`, joined to the multicast `groups` bitmask.

    The receive buffer is set with SO_RCVBUFFORCE, which may exceed net.core.rmem_max but
    needs CAP_NET_ADMIN; without it, SO_RCVBUF (capped by rmem_max, socket(7)). A kernel
    reader's only defence against a burst is that buffer: when it is full, the kernel drops
    and we see ENOBUFS. Blocking mode, close-on-exec; the socket is closed on any error.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:  # EPERM without CAP_NET_ADMIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


def rcvbuf_of(sock: socket.socket) -> int:
    """The receive buffer the kernel actually gave (twice the request: socket(7))."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
