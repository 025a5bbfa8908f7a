"""The record stream socket: a raw NETLINK_AUDIT socket read from the event loop.

Why not pyroute2 here: its generic parser trusts `nlmsg_len`, which unicast records get
wrong (design.md fact 2), and building a dict-like message object per record costs far more
than the record is worth: on recorded records, pyroute2's `Marshal.parse` alone decodes
about 76,000 records/s where lifewatch parses and assembles about 390,000 (bench/RESULTS.md,
"Parser + assembler throughput"). So the stream is read with
`socket.recv` from a `loop.add_reader` callback and parsed by `audit_records`; pyroute2 keeps
the control plane (audit_control), where it fits.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time

from app.netlink.audit_proto import (
    AUDIT_NLGRP_READLOG,
    AUDIT_SET,
    AUDIT_STATUS_PID,
    NETLINK_AUDIT,
    AuditStatus,
)
from app.netlink.socket import (
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NLMSG_HDRLEN,
    NLMSGHDR,
    open_netlink,
    rcvbuf_of,
)

RECV_SIZE = 1 << 14  # larger than MAX_AUDIT_MESSAGE_LENGTH (8970) plus the header
NETLINK_NO_ENOBUFS = 5  # include/uapi/linux/netlink.h; we want ENOBUFS, so never set it


class RecordSocket:
    """Unicast: this socket is registered as the audit daemon's (AUDIT_SET pid from this very
    socket: the kernel sends records to the sender's netlink port). Multicast: bound to the
    read-only log group; needs CAP_AUDIT_READ and coexists with a running auditd."""

    def __init__(self, multicast: bool, rcvbuf: int) -> None:
        self.multicast = multicast
        groups = 1 << (AUDIT_NLGRP_READLOG - 1) if multicast else 0
        sock = self.sock = open_netlink(NETLINK_AUDIT, groups, rcvbuf)
        self.rcvbuf = rcvbuf_of(sock)
        self.port = sock.getsockname()[0]

    def fileno(self) -> int:
        return self.sock.fileno()

    def register(self, pid: int, timeout: float = 5.0) -> None:
        """Become the audit daemon (unicast). Raises OSError(EEXIST) when another live
        daemon holds the pid: only one may, and lifewatch never forces it out."""
        status = AuditStatus(mask=AUDIT_STATUS_PID, pid=pid)
        self._request(AUDIT_SET, status.pack(), timeout)

    def _request(self, mtype: int, payload: bytes, timeout: float) -> None:
        seq = int(time.monotonic() * 1000) & 0x7FFFFFFF
        flags = NLM_F_REQUEST | NLM_F_ACK
        self.sock.send(NLMSGHDR.pack(NLMSG_HDRLEN + len(payload), mtype, flags, seq, 0) + payload)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise OSError(errno.ETIMEDOUT, "audit: no ACK to AUDIT_SET")
            data = self.sock.recv(RECV_SIZE)
            if len(data) < NLMSG_HDRLEN + 4:
                continue
            _, t, _, rseq, _ = NLMSGHDR.unpack_from(data)
            if t == NLMSG_ERROR and rseq == seq:
                (code,) = struct.unpack_from("=i", data, NLMSG_HDRLEN)  # struct nlmsgerr.error
                if code:
                    raise OSError(-code, f"AUDIT_SET pid: {os.strerror(-code)}")
                return

    def recv(self) -> bytes:
        """One datagram; raises BlockingIOError when none is waiting, OSError(ENOBUFS)
        after the kernel dropped datagrams for this socket (receive buffer overrun)."""
        return self.sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)

    def close(self) -> None:
        self.sock.close()
