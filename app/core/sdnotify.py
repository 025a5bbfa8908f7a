"""The systemd notify protocol (sd_notify(3)): newline-separated `KEY=value` lines in one
datagram to the AF_UNIX socket named by $NOTIFY_SOCKET; a name starting with `@` is in the
abstract namespace. $WATCHDOG_USEC (for the pid in $WATCHDOG_PID, when set) asks for a
`WATCHDOG=1` more often than that. Written here rather than depending on libsystemd: a few
lines, and nothing of it is on the event path.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications when the service manager asked for them; otherwise does nothing."""

    def __init__(self, env: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if env is None else env
        pid = os.getpid() if pid is None else pid
        self.address = socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_usec = watchdog_usec(env, pid)
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half the manager's timeout, as sd_watchdog_enabled(3) advises."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def notify(self, **fields: str) -> bool:
        """Send `KEY=value` lines (keyword names are upper-cased); True when sent."""
        if self.address is None:
            return False
        lines = "".join(f"{k.upper()}={v}\n" for k, v in fields.items() if "\n" not in v)
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._sock.sendto(lines.encode(), self.address)
        except OSError as e:
            if not self._failed:  # once: a manager that went away must not flood the log
                log.warning("cannot notify the service manager at %r: %s", self.address, e)
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        return self.notify(ready="1", status=status)

    def status(self, status: str) -> bool:
        return self.notify(status=status)

    def watchdog(self) -> bool:
        return self.notify(watchdog="1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify(stopping="1", status=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def socket_address(name: str) -> str | bytes | None:
    """$NOTIFY_SOCKET as a socket address: a path, or `@name` as an abstract name."""
    if not name or name[0] not in "/@":  # sd_notify(3): anything else is not ours to use
        return None
    if name[0] == "@":
        return b"\0" + name[1:].encode()
    return name


def watchdog_usec(env: Mapping[str, str], pid: int) -> int | None:
    """The watchdog timeout asked of this process, in microseconds, or None."""
    owner = env.get("WATCHDOG_PID")
    if owner is not None and owner.strip() != str(pid):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None
