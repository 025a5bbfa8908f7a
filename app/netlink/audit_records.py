"""Pure parser of audit records: netlink datagrams (bytes) in, typed records and fields out.

A record's payload is text: `audit(1795654632.816:27): key=value key=value ...`. The stamp
is the kernel's coarse wall clock at syscall entry (seconds.milliseconds) and the serial is
the kernel's global `audit_serial()` counter (kernel/audit.c). Untrusted strings (comm, exe,
cwd, proctitle, execve arguments, ...) are written by `audit_log_untrustedstring()`: quoted
when plain, hex-encoded without quotes when they hold a space, a quote or a control byte.
"""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

_NLMSGHDR = struct.Struct("=IHHII")
NLMSG_HDRLEN = 16


class Record(NamedTuple):
    """One audit record. `body` is the text after `audit(...): `, undecoded."""

    type: int
    stamp: float  # epoch seconds, millisecond resolution
    serial: int  # u32, wraps
    body: bytes


class NetlinkMessage(NamedTuple):
    type: int
    flags: int
    seq: int
    pid: int
    payload: bytes


def split_datagram(data: bytes) -> list[NetlinkMessage]:
    """The netlink messages of one datagram.

    Unicast audit records carry an `nlmsg_len` that excludes the 16-byte header (design.md
    fact 2: kernel/audit.c sets `nlmsg_len = skb->len - NLMSG_HDRLEN` on that path), while
    multicast copies and control replies carry the true length. The kernel sends one record
    per datagram, so a message whose length is exactly the datagram minus the header is that
    quirk and its payload runs to the end of the datagram.
    """
    out: list[NetlinkMessage] = []
    off, end = 0, len(data)
    while off + NLMSG_HDRLEN <= end:
        length, mtype, flags, seq, pid = _NLMSGHDR.unpack_from(data, off)
        if off == 0 and length == end - NLMSG_HDRLEN:
            length = end  # the unicast quirk
        if length < NLMSG_HDRLEN or off + length > end:
            length = end - off  # a length the datagram cannot hold: take the rest
        out.append(NetlinkMessage(mtype, flags, seq, pid, data[off + NLMSG_HDRLEN : off + length]))
        off += (length + 3) & ~3
    return out


def parse_record(mtype: int, payload: bytes) -> Record | None:
    """A record from one message payload, or None when it has no `audit(...)` stamp."""
    if not payload.startswith(b"audit("):
        return None
    close = payload.find(b")", 6)
    if close < 0:
        return None
    stamp, sep, serial = payload[6:close].partition(b":")
    if not sep:
        return None
    try:
        when, num = float(stamp), int(serial)
    except ValueError:
        return None
    # The body follows "): "; drop the NUL some paths leave at the end.
    return Record(mtype, when, num, payload[close + 3 :].rstrip(b"\0\n"))


def parse_datagram(data: bytes) -> list[Record]:
    """Every audit record of a datagram (control replies and malformed parts are skipped)."""
    out = []
    for msg in split_datagram(data):
        rec = parse_record(msg.type, msg.payload)
        if rec is not None:
            out.append(rec)
    return out


# A value runs to the next space, or is quoted ("..." from the kernel, '...' from user
# space messages such as USER_* records, which may hold spaces).
_FIELD = re.compile(rb"([^\s=]+)=(\"[^\"]*\"|'[^']*'|\S*)")


def fields(body: bytes) -> dict[str, str]:
    """`key=value` pairs of a record body, values still encoded (see `untrusted`)."""
    return {k.decode("ascii", "replace"): v.decode("utf-8", "surrogateescape")
            for k, v in _FIELD.findall(body)}  # fmt: skip


def untrusted(raw: str | None) -> str | None:
    """Decode a value written by `audit_log_untrustedstring()` / `audit_log_n_hex()`:
    `"text"` is text, `(null)`/`(none)` is None, anything else is hex of the bytes."""
    if raw is None:
        return None
    if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
        return raw[1:-1]
    if raw in ("(null)", "(none)", "?"):
        return None
    try:
        return bytes.fromhex(raw).decode("utf-8", "surrogateescape")
    except ValueError:
        return raw  # not hex after all: keep what the kernel wrote


def _untrusted_bytes(raw: str) -> bytes:
    if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
        return raw[1:-1].encode("utf-8", "surrogateescape")
    try:
        return bytes.fromhex(raw)
    except ValueError:
        return raw.encode("utf-8", "surrogateescape")


def execve_argv(bodies: list[bytes]) -> tuple[str, ...] | None:
    """argv from the EXECVE records of one event (kernel/auditsc.c audit_log_execve_info).

    `argc=N a0=.. a1=..`; an argument too long for one record is logged as `aI_len=L`
    followed by chunks `aI[0]=.. aI[1]=..`, possibly spread over several EXECVE records.
    Returns None when the records do not hold every argument (a record was lost).
    """
    f: dict[str, str] = {}
    for body in bodies:
        f.update(fields(body))
    try:
        argc = int(f["argc"])
    except (KeyError, ValueError):
        return None
    argv: list[str] = []
    for i in range(argc):
        raw = f.get(f"a{i}")
        if raw is not None:
            argv.append(_untrusted_bytes(raw).decode("utf-8", "surrogateescape"))
            continue
        chunks: list[bytes] = []
        k = 0
        while (chunk := f.get(f"a{i}[{k}]")) is not None:
            chunks.append(_untrusted_bytes(chunk))
            k += 1
        if not chunks:
            return None
        argv.append(b"".join(chunks).decode("utf-8", "surrogateescape"))
    return tuple(argv)


def proctitle_argv(raw: str | None) -> tuple[str, ...] | None:
    """argv from a PROCTITLE value: the process's argument area, NUL-separated, cut at
    128 bytes by the kernel (so the last argument may be truncated)."""
    if raw is None:
        return None
    data = _untrusted_bytes(raw)
    if not data:
        return None
    return tuple(a.decode("utf-8", "surrogateescape") for a in data.rstrip(b"\0").split(b"\0"))
