"""pidfd ioctls: the exit status the kernel keeps for a reaped process (Linux 6.15+)."""

from __future__ import annotations

import fcntl
import struct

# include/uapi/linux/pidfd.h: struct pidfd_info, first published size (PIDFD_INFO_SIZE_VER0):
# mask, cgroupid, then pid tgid ppid ruid rgid euid egid suid sgid fsuid fsgid, exit_code.
PIDFD_INFO = struct.Struct("=QQ11Ii")
PIDFD_INFO_EXIT = 1 << 3
PIDFS_IOCTL_MAGIC = 0xFF
# _IOWR(PIDFS_IOCTL_MAGIC, 11, struct pidfd_info): the size is part of the request number.
PIDFD_GET_INFO = (3 << 30) | (PIDFD_INFO.size << 16) | (PIDFS_IOCTL_MAGIC << 8) | 11


def pidfd_exit_status(pidfd: int) -> int | None:
    """The wait status of a reaped process, from its pidfd; None when the kernel cannot tell
    (not reaped yet, or a kernel before 6.15: ENOTTY/EINVAL)."""
    buf = bytearray(PIDFD_INFO.pack(PIDFD_INFO_EXIT, 0, *([0] * 11), 0))
    try:
        fcntl.ioctl(pidfd, PIDFD_GET_INFO, buf, True)
    except OSError:
        return None
    fields = PIDFD_INFO.unpack(buf)
    return fields[-1] if fields[0] & PIDFD_INFO_EXIT else None
