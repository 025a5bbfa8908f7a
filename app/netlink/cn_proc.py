"""Pure decoder for proc connector datagrams (include/uapi/linux/cn_proc.h): bytes in, tuples out.

The wire layouts are pyroute2's own field tables (`pyroute2.netlink.connector.cn_proc`, kernel
names verbatim), compiled once into `struct.Struct`s. pyroute2's `ProcEventMarshal` parses the
same bytes into dicts at ~27 us a message; the compiled structs take ~0.5 us, which matters at
tens of thousands of forks and exits a second (measured on this machine; the tests check both
decoders agree on recorded kernel output).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from pyroute2.netlink.connector.cn_proc import (
    CN_IDX_PROC,
    CN_VAL_PROC,
    PROC_CN_MCAST_IGNORE,
    PROC_CN_MCAST_LISTEN,
    PROC_EVENT_EXEC,
    PROC_EVENT_EXIT,
    PROC_EVENT_FORK,
    PROC_EVENT_NONE,
    proc_event_base,
    proc_event_exec,
    proc_event_exit,
    proc_event_fork,
)

from app.netlink.native import _batch
from app.netlink.socket import NLMSG_DONE, NLMSG_HDRLEN, NLMSGHDR, nlmsg_align

NETLINK_CONNECTOR = 11  # include/uapi/linux/netlink.h

__all__ = [
    "CN_IDX_PROC",
    "NETLINK_CONNECTOR",
    "PROC_CN_MCAST_IGNORE",
    "PROC_CN_MCAST_LISTEN",
    "Ack",
    "ExecEvent",
    "ExitEvent",
    "ForkEvent",
    "OtherEvent",
    "ProcEvent",
    "control_message",
    "decode",
]


def _compile(fields: tuple[tuple[str, str], ...]) -> struct.Struct:
    return struct.Struct("=" + "".join(fmt for _, fmt in fields))


# nlmsghdr + cn_msg + proc_event header (what, cpu, timestamp_ns) in one struct, then the
# union member per event type: two unpacks per message (this runs for every death).
_BASE = _compile(proc_event_base.fields)
_NBASE = len(proc_event_base.fields)  # fields before the event data
_HEAD = struct.Struct(NLMSGHDR.format + _BASE.format[1:])
_HEAD_NAMES = ["nlmsg_len", "type", "flags", "nlmsg_seq", "port"]
_HEAD_NAMES += [n for n, _ in proc_event_base.fields]
_LEN, _IDX, _VAL, _SEQ, _ACK, _WHAT, _CPU, _TS = (
    _HEAD_NAMES.index(n)
    for n in ("nlmsg_len", "idx", "val", "seq", "ack", "what", "cpu", "timestamp_ns")
)


def _union(fields: tuple[tuple[str, str], ...]) -> struct.Struct:
    return _compile(fields[_NBASE:])


_FORK = _union(proc_event_fork.fields)
_EXEC = _union(proc_event_exec.fields)
_EXIT = _union(proc_event_exit.fields)
_ACK_ERR = struct.Struct("=I")
_new = tuple.__new__


class ForkEvent(NamedTuple):
    cpu: int
    seq: int
    timestamp_ns: int  # CLOCK_MONOTONIC (ktime_get_ns) when the child was set up
    parent_pid: int
    parent_tgid: int
    child_pid: int
    child_tgid: int  # == child_pid for a new process, else a new thread


class ExecEvent(NamedTuple):
    cpu: int
    seq: int
    timestamp_ns: int
    process_pid: int
    process_tgid: int


class ExitEvent(NamedTuple):
    cpu: int
    seq: int
    timestamp_ns: int
    process_pid: int
    process_tgid: int
    exit_code: int  # the wait(2) status (task->exit_code): 9 for SIGKILL, 0x300 for exit(3)
    exit_signal: int  # signal sent to the parent (SIGCHLD), not the one that killed
    parent_pid: int
    parent_tgid: int


class Ack(NamedTuple):
    """PROC_EVENT_NONE: the kernel's answer to a LISTEN/IGNORE (cn_proc_ack); err 0 is success.
    It is multicast to every listener and numbered in the CPU's event sequence like any event;
    `ack` is the requester's cn_msg.ack + 1, which is how a requester recognises its own."""

    cpu: int
    seq: int
    timestamp_ns: int
    ack: int
    err: int


class OtherEvent(NamedTuple):
    """UID, GID, SID, PTRACE, COMM, COREDUMP...: counted for sequence tracking, not used."""

    what: int
    cpu: int
    seq: int
    timestamp_ns: int


ProcEvent = ForkEvent | ExecEvent | ExitEvent | Ack | OtherEvent

if _batch is not None:
    # The classes the compiled reader makes of the usual datagram (app/netlink/_batch.c,
    # decode's hot path in C: tests/unit/test_batch.py compares the two).
    _batch.register_proc(ForkEvent, ExecEvent, ExitEvent)


def decode(data: bytes | memoryview) -> list[ProcEvent]:
    """Every proc event in one datagram (the kernel sends one per datagram; the loop is for
    robustness). Truncated or foreign messages are skipped, never guessed at. A list, not a
    generator: cheaper for the usual single event, on every death's path."""
    end = len(data)
    if end >= _HEAD.size:
        # Hot path: the datagram is one proc message (every death passes here).
        head = _HEAD.unpack_from(data)
        length = head[_LEN]
        if (
            length >= _HEAD.size
            and (length == end or (length < end and (length + 3) & ~3 == end))
            and head[_IDX] == CN_IDX_PROC
            and head[_VAL] == CN_VAL_PROC
        ):
            return [_event(head, data, _HEAD.size, length)]
    out: list[ProcEvent] = []
    offset = 0
    while offset + _HEAD.size <= end:
        head = _HEAD.unpack_from(data, offset)
        length = head[_LEN]
        if length < NLMSG_HDRLEN or offset + length > end:
            break
        if length >= _HEAD.size and head[_IDX] == CN_IDX_PROC and head[_VAL] == CN_VAL_PROC:
            out.append(_event(head, data, offset + _HEAD.size, offset + length))
        offset += nlmsg_align(length)
    return out


def _event(head: tuple[int, ...], data: bytes | memoryview, at: int, end: int) -> ProcEvent:
    what, cpu, seq, ts = head[_WHAT], head[_CPU], head[_SEQ], head[_TS]
    room = end - at
    # tuple.__new__ skips the NamedTuple's Python-level __new__ (as audit_records does).
    if what == PROC_EVENT_EXIT and room >= _EXIT.size:
        return _new(ExitEvent, (cpu, seq, ts, *_EXIT.unpack_from(data, at)))
    if what == PROC_EVENT_FORK and room >= _FORK.size:
        return _new(ForkEvent, (cpu, seq, ts, *_FORK.unpack_from(data, at)))
    if what == PROC_EVENT_EXEC and room >= _EXEC.size:
        return _new(ExecEvent, (cpu, seq, ts, *_EXEC.unpack_from(data, at)))
    if what == PROC_EVENT_NONE:
        err = _ACK_ERR.unpack_from(data, at)[0] if room >= _ACK_ERR.size else 0
        return Ack(cpu, seq, ts, head[_ACK], err)
    return OtherEvent(what, cpu, seq, ts)


def control_message(op: int, ack: int = 0) -> bytes:
    """A PROC_CN_MCAST_LISTEN or _IGNORE request: nlmsghdr + cn_msg + the 4-byte op.

    The 4-byte form (not 6.6's `struct proc_input` with an event mask) asks for every event:
    the per-CPU sequence numbers then have no holes of their own, so a hole is a loss.
    """
    payload = struct.pack("=I", op)
    cn = struct.pack("=IIIIHH", CN_IDX_PROC, CN_VAL_PROC, 0, ack, len(payload), 0) + payload
    return NLMSGHDR.pack(NLMSG_HDRLEN + len(cn), NLMSG_DONE, 0, 0, 0) + cn
