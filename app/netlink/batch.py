"""Batched reads of a non-blocking netlink socket: up to a budget of datagrams per call.

With the compiled module (app/netlink/_batch.c) one recvmmsg() reads up to 16 datagrams and
the usual audit datagram (one record) or connector datagram (one FORK, EXEC or EXIT) comes
back parsed; without it, or with LIFEWATCH_NATIVE=0, one recv() per datagram and every
datagram comes back as bytes. Either way the caller parses what is bytes with the pure
parsers (audit_records.parse_datagram, cn_proc.decode), so both paths give the same records
(tests/unit/test_batch.py).

Why: socket.recv() and parse_datagram() were a fifth of the daemon's CPU per fork+exit life
(6 audit datagrams and 2 connector ones); docs/performance.md, round 5, has the figures.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, cast

from app.netlink.audit_proto import ARCH_SYSCALLS
from app.netlink.audit_records import Confirmed, Record
from app.netlink.cn_proc import ProcEvent
from app.netlink.native import _batch as _native
from app.netlink.native import native_enabled

if TYPE_CHECKING:
    from app.netlink._batch import Confirmations

DRAINED = 0  # status: every queued datagram was read
BUDGET = -1  # status: the budget ran out, datagrams may be left
SLOTS = 16  # datagrams per recvmmsg(), as in _batch.c


class BatchReader:
    """Reads datagrams of at most `slot` bytes (longer ones are cut, as recv(slot) does)."""

    def __init__(self, sock: socket.socket, slot: int, native: bool | None = None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.slot = slot
        self.native = native_enabled() if native is None else native and _native is not None
        # recvmmsg()'s slots, reused by every read: 256 KiB for audit, 4 KiB for the
        # connector.
        self._buf = bytearray(slot * SLOTS) if self.native else bytearray()

    @property
    def kind(self) -> str:
        """For the source's health info: which path reads this socket."""
        return "recvmmsg (compiled)" if self.native else "recv (pure Python)"

    def read(self, budget: int) -> tuple[list[bytes], int, int]:
        """(datagrams, how many, status): DRAINED, BUDGET, or the errno of a failed read
        (ENOBUFS: the kernel dropped datagrams for this socket after those returned)."""
        if self.native:
            return _native.raw_batch(self.fd, self._buf, self.slot, budget)
        out: list[bytes] = []
        recv, slot, flags = self.sock.recv, self.slot, socket.MSG_DONTWAIT
        while len(out) < budget:
            try:
                out.append(recv(slot, flags))
            except BlockingIOError:
                return out, len(out), DRAINED
            except InterruptedError:
                continue
            except OSError as e:
                return out, len(out), e.errno or errno.EIO
        return out, len(out), BUDGET


# How the compiled module tells the calls apart (_batch.c CONF_*): clone's flags say whether
# it made a thread; fork, vfork and clone3 made a process if the connector says so.
_CONFIRM_KINDS = {"clone": 1, "fork": 2, "vfork": 2, "clone3": 2, "exit_group": 3}


def confirmations() -> Confirmations | None:
    """A table of the connector's forks and exits for audit's reader to confirm its own
    reports of them against (_batch.c, "confirmations"), shared by the two readers; None
    without the compiled module or with LIFEWATCH_NATIVE=0."""
    if not native_enabled():
        return None
    calls = [
        (b"%x" % arch, b"%d" % table[name], kind)
        for arch, table in ARCH_SYSCALLS.items()
        for name, kind in _CONFIRM_KINDS.items()
        if name in table
    ]
    return _native.Confirmations(Confirmed, calls)


class AuditBatchReader(BatchReader):
    def records(
        self,
        budget: int,
        skip: AbstractSet[int],
        parse: bool = True,
        confirm: Confirmations | None = None,
    ) -> tuple[list[Record | Confirmed | bytes], int, int]:
        """As `read`, but with `parse` and the compiled module the usual datagram comes back
        as its Record (none for a type in `skip`), or as a Confirmed when `confirm` holds
        the connector's report of the same fork or exit; bytes are for parse_datagram."""
        if self.native and parse:
            return _native.audit_batch(self.fd, self._buf, self.slot, budget, skip, confirm)
        raw, n, status = self.read(budget)
        return cast("list[Record | Confirmed | bytes]", raw), n, status


class ProcBatchReader(BatchReader):
    def events(
        self, budget: int, parse: bool = True, confirm: Confirmations | None = None
    ) -> tuple[list[ProcEvent | bytes], int, int]:
        """As `read`, but with `parse` and the compiled module a datagram telling one FORK,
        EXEC or EXIT comes back as its event (a process's FORK and a leader's EXIT noted in
        `confirm`); bytes are for cn_proc.decode."""
        if self.native and parse:
            return _native.proc_batch(self.fd, self._buf, self.slot, budget, confirm)
        raw, n, status = self.read(budget)
        return cast("list[ProcEvent | bytes]", raw), n, status
