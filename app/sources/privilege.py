"""Which Linux capabilities the kernel sources need, which this process holds, and errors that
name the missing one (docs/operations.md, "Least privilege").

The minimal set was found by experiment on Linux 6.18 (docs/operations.md): every kernel
interface lifewatch uses was tried as an unprivileged user with each capability removed.
"""

from __future__ import annotations

import errno
from pathlib import Path

# include/uapi/linux/capability.h
CAPABILITY_BITS = {
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_NET_ADMIN": 12,
    "CAP_SYS_PTRACE": 19,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_AUDIT_READ": 37,
}

# What each capability of the daemon's set is for, and what breaks without it.
NEEDED = {
    "CAP_AUDIT_CONTROL": "audit source: AUDIT_GET/SET, adding and removing its rules, becoming "
    "the audit pid (kernel/audit.c audit_netlink_ok); without it the audit source fails",
    "CAP_AUDIT_READ": "audit source next to a running auditd: joining the read-only multicast "
    "group (audit_multicast_bind); without it the audit source fails when auditd holds the "
    "audit pid (unicast still works)",
    "CAP_NET_ADMIN": "receive buffers past net.core.rmem_max (SO_RCVBUFFORCE), and the proc "
    "connector's LISTEN on kernels before 6.6; without it buffers are capped at rmem_max "
    "(more overruns under a storm) and, before 6.6, the proc source fails",
    "CAP_SYS_PTRACE": "reading /proc/<pid>/exe and /proc/<pid>/fd/* links of other users' "
    "processes (ptrace_may_access); without it those lives have no exe unless audit reported "
    "their exec, and their sockets have no holder in /v1/connections",
    "CAP_DAC_READ_SEARCH": "listing /proc/<pid>/fd of other users' processes (mode 0500): "
    "/v1/connections finds who holds a socket; without it other users' sockets have no holder",
}


def effective(status: Path = Path("/proc/self/status")) -> frozenset[str]:
    """The capabilities in this process's effective set that lifewatch knows by name."""
    try:
        text = status.read_text()
    except OSError:
        return frozenset()
    return parse_effective(text)


def parse_effective(status_text: str) -> frozenset[str]:
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            mask = int(line.split()[1], 16)
            return frozenset(n for n, bit in CAPABILITY_BITS.items() if mask >> bit & 1)
    return frozenset()


class MissingCapability(PermissionError):
    """The kernel refused a step (EPERM) that the named capability allows."""

    def __init__(self, capability: str, doing: str) -> None:
        super().__init__(errno.EPERM, f"needs {capability} to {doing} (EPERM)")
        self.capability = capability

    def __str__(self) -> str:
        return str(self.strerror)


def refused(e: OSError) -> bool:
    return e.errno in (errno.EPERM, errno.EACCES)
