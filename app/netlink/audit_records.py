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
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from typing import NamedTuple

from app.argv import ARGV_MAX, cap_argv, split_cmdline
from app.netlink.native import _batch, native_enabled
from app.netlink.socket import NLMSG_HDRLEN, NLMSGHDR, nlmsg_align


class Record(NamedTuple):
    """One audit record. `body` is the text after `audit(...): `, undecoded."""

    type: int
    stamp: float  # epoch seconds, millisecond resolution
    serial: int  # u32, wraps
    body: bytes


# Confirmed.kind
CONFIRMED_FORK = 1
CONFIRMED_EXIT = 2
CONFIRMED_SOURCE = "audit"  # whose report a Confirmed is (the observation's `source`)


class Confirmed(NamedTuple):
    """A SYSCALL record of a fork or exit_group that the proc connector had told already,
    matched by the compiled reader (app/netlink/batch.py `confirmations`) instead of being
    handed back as its Record. Only the fields audit adds or the match used."""

    kind: int  # CONFIRMED_FORK or CONFIRMED_EXIT
    pid: int  # the child (fork) or the process that ended (exit)
    ppid: int  # the fork's caller (its parent); 0 for an exit
    uid: int
    code: int  # exit_group's status (a0 & 0xff); 0 for a fork
    stamp: float  # the record's stamp, as Record.stamp
    serial: int  # the record's serial: its EOE is dropped, the assembler counts it from here

    @property
    def source(self) -> str:
        """Who told it, as an observation says (the tracker takes it for one)."""
        return CONFIRMED_SOURCE


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
        length, mtype, flags, seq, pid = NLMSGHDR.unpack_from(data, off)
        if off == 0 and length == end - NLMSG_HDRLEN:
            length = end  # the unicast quirk
        if length < NLMSG_HDRLEN or off + length > end:
            length = end - off  # a length the datagram cannot hold: take the rest
        out.append(NetlinkMessage(mtype, flags, seq, pid, data[off + NLMSG_HDRLEN : off + length]))
        off += nlmsg_align(length)
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


_HEAD = struct.Struct(NLMSGHDR.format[:3])  # nlmsg_len and nlmsg_type alone: the hot path
_new = tuple.__new__
_STAMP = re.compile(rb"audit\(([0-9]+\.[0-9]+):([0-9]+)\): ?(.*)", re.DOTALL)


def parse_datagram(data: bytes, skip: AbstractSet[int] = frozenset()) -> list[Record]:
    """Every audit record of a datagram (control replies and malformed parts are skipped),
    but none of the types in `skip`: records the caller never reads (PATH, PROCTITLE) cost
    it no parse at all.

    Hot path (measured by bench/audit_parser.py): the usual datagram holds exactly one
    record, unicast or multicast framing; it is parsed in place without building the
    intermediate messages. Anything else takes the general path.
    """
    n = len(data)
    if n > 22:
        length, mtype = _HEAD.unpack_from(data)
        if mtype in skip and (length == n - NLMSG_HDRLEN or length == n):
            return []
        if length == n - NLMSG_HDRLEN or length == n:
            m = _STAMP.match(data, NLMSG_HDRLEN)
            if m is not None:
                stamp, serial, body = m.groups()
                if body.endswith((b"\0", b"\n")):
                    body = body.rstrip(b"\0\n")
                # tuple.__new__ skips NamedTuple's Python-level __new__: 2x cheaper here
                return [_new(Record, (mtype, float(stamp), int(serial), body))]
    out = []
    for msg in split_datagram(data):
        if msg.type in skip:
            continue
        rec = parse_record(msg.type, msg.payload)
        if rec is not None:
            out.append(rec)
    return out


# A value runs to the next space, or is quoted ("..." from the kernel, '...' from user
# space messages such as USER_* records, which may hold spaces).
_FIELD = re.compile(rb"([^\s=]+)=(\"[^\"]*\"|'[^']*'|\S*)")


class Syscall(NamedTuple):
    """The fields of a SYSCALL record that lifewatch uses, still encoded."""

    arch: bytes  # hex, e.g. b"c000003e"
    syscall: bytes  # decimal
    success: bytes | None  # b"yes"/b"no"; None when the syscall never returned (exit_group)
    exit: bytes | None  # return value: the child's pid for clone/fork/vfork/clone3
    a0: bytes  # hex first argument: clone flags, exit status
    ppid: bytes
    pid: bytes  # the *process* (tgid), not the thread
    uid: bytes
    comm: bytes
    exe: bytes


# kernel/auditsc.c audit_log_exit() writes `arch syscall [success exit] a0..a3 items`, then
# audit_log_task_info() `ppid pid auid uid gid ... ses`, `comm`, `exe`. One targeted regex
# is about 3x faster than splitting every field (bench/audit_parser.py).
_SYSCALL = re.compile(
    rb"arch=([0-9a-f]+) syscall=([0-9]+) (?:success=([a-z]+) exit=(-?[0-9]+) )?"
    rb"a0=([0-9a-f]+) .*? ppid=([0-9]+) pid=([0-9]+) auid=[0-9]+ uid=([0-9]+) .*? "
    rb"comm=(\S+) exe=(\S+)"
)


def parse_syscall(body: bytes) -> Syscall | None:
    """The SYSCALL record's fields, or None when the body has another shape."""
    # The regex's match, in C when built (app/netlink/_batch.c): 2.6 -> 0.55 us a record
    # here, two records a fork+exit life; tests/unit/test_batch.py compares both.
    got = _native_syscall(body) if _native_syscall is not None else _regex_syscall(body)
    if got is not None:
        return got
    f = raw_fields(body)  # fields in an unexpected order: slower, same answer
    try:
        return Syscall(
            f[b"arch"], f[b"syscall"], f.get(b"success"), f.get(b"exit"), f[b"a0"],
            f[b"ppid"], f[b"pid"], f[b"uid"], f[b"comm"], f[b"exe"],
        )  # fmt: skip
    except KeyError:
        return None


def _regex_syscall(body: bytes) -> Syscall | None:
    """parse_syscall's regex alone (what the compiled match must equal)."""
    m = _SYSCALL.match(body)
    return None if m is None else Syscall._make(m.groups())


if _batch is not None:
    _batch.register(Record, Syscall)  # the classes the compiled module makes
_native_syscall = _batch.parse_syscall if native_enabled() else None


def raw_fields(body: bytes) -> dict[bytes, bytes]:
    """`key=value` pairs of a record body as bytes, values still encoded (hot path)."""
    return dict(_FIELD.findall(body))


def fields(body: bytes) -> dict[str, str]:
    """`key=value` pairs of a record body as text, values still encoded (see `untrusted`)."""
    return {k.decode("ascii", "replace"): v.decode("utf-8", "surrogateescape")
            for k, v in _FIELD.findall(body)}  # fmt: skip


def untrusted(raw: bytes | str | None) -> str | None:
    """Decode a value written by `audit_log_untrustedstring()` / `audit_log_n_hex()`:
    `"text"` is text, `(null)`/`(none)` is None, anything else is hex of the bytes."""
    if raw is None:
        return None
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    if data in (b"(null)", b"(none)", b"?"):
        return None
    return _untrusted_bytes(data).decode("utf-8", "surrogateescape")


def _untrusted_bytes(raw: bytes) -> bytes:
    if len(raw) >= 2 and raw[0] == 0x22 and raw[-1] == 0x22:  # "quoted"
        return raw[1:-1]
    try:
        return bytes.fromhex(raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return raw  # not hex after all: keep what the kernel wrote


def execve_argv(bodies: list[bytes], argv_max: int = ARGV_MAX) -> tuple[str, ...] | None:
    """argv from the EXECVE records of one event (kernel/auditsc.c audit_log_execve_info),
    cut at `argv_max` bytes (app/argv.py).

    `argc=N a0=.. a1=..`; an argument too long for one record is logged as `aI_len=L`
    followed by chunks `aI[0]=.. aI[1]=..`, possibly spread over several EXECVE records.
    Returns None when the records do not hold every argument kept (a record was lost).
    """
    f: dict[bytes, bytes] = {}
    for body in bodies:
        f.update(raw_fields(body))
    try:
        argc = int(f[b"argc"])
    except (KeyError, ValueError):
        return None
    try:
        return cap_argv(_execve_args(f, argc), argv_max)
    except _MissingArg:
        return None


class _MissingArg(Exception):
    pass


def _execve_args(f: dict[bytes, bytes], argc: int) -> Iterator[bytes]:
    """Each argument's bytes, in order; read only as far as the cap wants them."""
    for i in range(argc):
        raw = f.get(b"a%d" % i)
        if raw is not None:
            yield _untrusted_bytes(raw)
            continue
        chunks: list[bytes] = []
        k = 0
        while (chunk := f.get(b"a%d[%d]" % (i, k))) is not None:
            chunks.append(_untrusted_bytes(chunk))
            k += 1
        if not chunks:
            raise _MissingArg(i)
        yield b"".join(chunks)


def proctitle_argv(raw: bytes | str | None, argv_max: int = ARGV_MAX) -> tuple[str, ...] | None:
    """argv from a PROCTITLE value: the process's argument area, NUL-separated, cut at
    128 bytes by the kernel (so the last argument may be truncated), and at `argv_max`."""
    if raw is None:
        return None
    data = _untrusted_bytes(raw.encode() if isinstance(raw, str) else raw)
    if not data:
        return None
    return split_cmdline(data.rstrip(b"\0") + b"\0", argv_max)
