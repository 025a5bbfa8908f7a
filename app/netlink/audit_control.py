"""The audit control plane over pyroute2: status (AUDIT_GET/SET) and rules (ADD/DEL/LIST).

pyroute2 0.9.7's `NetlinkSocket(family=NETLINK_AUDIT)` does the netlink conversation
(sequence numbers, ACKs, multi-part replies); the payloads are the kernel structs packed in
`audit_proto`. Its asyncio socket cannot be used here: it opens a datagram endpoint on the
running loop, which uvloop refuses for AF_NETLINK ("cannot open a UDP handle, invalid family
16"). So the synchronous socket runs on one thread of its own (it builds a private plain
asyncio loop there) and the daemon's loop awaits it: a request takes about 1 ms, a few per
second at most (status reads), and the event loop never blocks on it.
Notes on how the kernel answers (kernel/audit.c audit_receive_msg):
AUDIT_GET and AUDIT_LIST_RULES replies are sent from a separate kernel thread
(audit_send_reply), so asking for an ACK as well would end pyroute2's wait on the ACK before
the reply arrives: those two are sent without NLM_F_ACK. AUDIT_SET and the rule changes are
answered by an ACK (or an error) only.
"""

from __future__ import annotations

import asyncio
import errno
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, nlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nlsocket import NetlinkSocket

from app.netlink.audit_proto import (
    AUDIT_ADD_RULE,
    AUDIT_DEL_RULE,
    AUDIT_FILTER_PREPEND,
    AUDIT_GET,
    AUDIT_LIST_RULES,
    AUDIT_SET,
    NETLINK_AUDIT,
    AuditRule,
    AuditStatus,
)

TIMEOUT = 5.0


class audit_payload(nlmsg):  # type: ignore[misc]  # pyroute2 is untyped; its naming kept
    """A netlink message whose payload is a packed kernel struct, kept as raw bytes."""

    fields = ()

    def encode(self) -> Any:
        payload: bytes = self.get("payload") or b""
        super().encode()
        self.data.extend(payload)
        self["header"]["length"] = len(self.data)
        self.data[0:4] = len(self.data).to_bytes(4, "little")
        return self.data

    def decode(self) -> None:
        super().decode()
        start = self.offset + 16
        self["payload"] = bytes(self.data[start : self.offset + self.length])


class AuditControl:
    """One control socket. Methods raise OSError with the kernel's errno on refusal."""

    def __init__(self) -> None:
        self._sock: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def _thread(self) -> ThreadPoolExecutor:
        # One thread: the socket (and pyroute2's private loop inside it) stays on it.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="audit-control")
        return self._pool

    def _open(self) -> None:
        if self._sock is None:
            # A plain selector loop, whatever the policy: under uvloop.install() (and in
            # the tests) the default new loop would be uvloop's, which refuses netlink.
            self._loop = asyncio.SelectorEventLoop()
            sock = NetlinkSocket(family=NETLINK_AUDIT, use_event_loop=self._loop)
            for t in (AUDIT_GET, AUDIT_LIST_RULES):
                sock.marshal.msg_map[t] = audit_payload
            self._sock = sock

    async def __aenter__(self) -> AuditControl:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._open)

    def close(self) -> None:
        def close_socket() -> None:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            if self._loop is not None:
                self._loop.close()
                self._loop = None

        if self._pool is not None:
            try:
                self._pool.submit(close_socket).result(TIMEOUT)
            finally:
                self._pool.shutdown(wait=False)
                self._pool = None

    def _call(self, mtype: int, payload: bytes, flags: int) -> list[bytes]:
        self._open()
        msg = audit_payload()
        msg["payload"] = payload
        try:
            return [r["payload"] for r in self._sock.nlm_request(msg, mtype, flags)
                    if "payload" in r]  # fmt: skip
        except NetlinkError as e:
            name = errno.errorcode.get(e.code, str(e.code))
            raise OSError(e.code, f"audit netlink {mtype}: {name}") from None

    async def _request(self, mtype: int, payload: bytes, flags: int) -> list[bytes]:
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._thread, self._call, mtype, payload, flags)
        try:
            return await asyncio.wait_for(job, TIMEOUT)
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, f"audit netlink {mtype}: no answer") from None

    async def get_status(self) -> AuditStatus:
        replies = await self._request(AUDIT_GET, b"", NLM_F_REQUEST)
        if not replies:
            raise OSError(errno.EIO, "AUDIT_GET: no status in the reply")
        return AuditStatus.unpack(replies[0])

    async def set_status(self, status: AuditStatus) -> None:
        """AUDIT_SET: only the fields named in `status.mask` change."""
        await self._request(AUDIT_SET, status.pack(), NLM_F_REQUEST | NLM_F_ACK)

    async def list_rules(self) -> list[AuditRule]:
        replies = await self._request(AUDIT_LIST_RULES, b"", NLM_F_REQUEST)
        return [AuditRule.unpack(p) for p in replies]

    async def add_rule(self, rule: AuditRule) -> None:
        await self._request(AUDIT_ADD_RULE, rule.pack(), NLM_F_REQUEST | NLM_F_ACK)

    async def delete_rule(self, rule: AuditRule) -> None:
        # The kernel drops AUDIT_FILTER_PREPEND once the rule is placed (kernel/auditfilter.c
        # audit_add_rule) and compares flags on delete: a prepended rule is deleted without it.
        plain = replace(rule, flags=rule.flags & ~AUDIT_FILTER_PREPEND)
        await self._request(AUDIT_DEL_RULE, plain.pack(), NLM_F_REQUEST | NLM_F_ACK)
