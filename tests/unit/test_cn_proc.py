"""The proc connector decoder on recorded kernel datagrams (tests/data/cn_proc.hex, recorded by
tests/kernel/record_cn_proc.py on Linux 6.18), checked against pyroute2's own parser."""

from __future__ import annotations

import json
from pathlib import Path

from pyroute2.netlink.connector.cn_proc import ProcEventMarshal

from app.netlink.cn_proc import (
    PROC_CN_MCAST_LISTEN,
    Ack,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    control_message,
    decode,
)
from app.sources.observations import wait_status

DATA = Path(__file__).parent.parent / "data"


def recorded() -> list[bytes]:
    return [bytes.fromhex(line) for line in (DATA / "cn_proc.hex").read_text().split()]


def test_decoder_agrees_with_pyroute2_on_every_recorded_datagram() -> None:
    golden = json.loads((DATA / "cn_proc.golden.json").read_text())
    events = [ev for d in recorded() for ev in decode(d)]
    assert len(events) == len(golden) == 22
    for ev, ref in zip(events, golden, strict=True):
        assert ev.seq == ref["seq"] and ev.cpu == ref["cpu"]
        assert ev.timestamp_ns == ref["timestamp_ns"]
        for name, value in ev._asdict().items():
            if name in ref:
                assert value == ref[name], name


def test_marshal_parses_the_fixture_the_same_way_live() -> None:
    # pyroute2's marshal on the raw bytes, not the stored golden: guards the fixture itself.
    marshal = ProcEventMarshal()
    for d in recorded():
        (msg,) = marshal.parse(d)
        (ev,) = decode(d)
        assert msg["what"] in (1, 2, 0x80000000)
        assert msg["seq"] == ev.seq


def test_exit_codes_of_the_recorded_deaths() -> None:
    exits = [ev for d in recorded() for ev in decode(d) if isinstance(ev, ExitEvent)]
    by_status = [wait_status(e.exit_code) for e in exits if e.process_pid == e.process_tgid]
    assert (3, None, False) in by_status  # sh -c 'exit 3'
    assert (None, 15, False) in by_status  # kill -TERM, no handler
    assert (None, 11, False) in by_status  # SIGSEGV (core limit 0 when recorded)
    assert (None, 9, False) in by_status  # kill -9
    # A thread's exit: process_pid != process_tgid, exit_signal -1 (threads signal no parent).
    thread_exits = [e for e in exits if e.process_pid != e.process_tgid]
    assert len(thread_exits) == 1 and thread_exits[0].exit_signal == 0xFFFFFFFF


def test_threads_are_told_apart_from_processes() -> None:
    forks = [ev for d in recorded() for ev in decode(d) if isinstance(ev, ForkEvent)]
    threads = [f for f in forks if f.child_pid != f.child_tgid]
    assert len(threads) == 1
    assert len(forks) - len(threads) == 7


def test_exec_names_the_thread_group() -> None:
    execs = [ev for d in recorded() for ev in decode(d) if isinstance(ev, ExecEvent)]
    assert execs and all(e.process_pid == e.process_tgid for e in execs)


def test_truncated_and_foreign_messages_are_skipped() -> None:
    d = recorded()[0]
    assert list(decode(d[:40])) == []
    assert list(decode(b"")) == []
    foreign = bytearray(d)
    foreign[16] = 7  # another connector index
    assert list(decode(bytes(foreign))) == []
    bad_len = bytearray(d)
    bad_len[0] = 200  # nlmsg_len past the datagram
    assert list(decode(bytes(bad_len))) == []


def test_two_messages_in_one_datagram() -> None:
    a, b = recorded()[:2]
    assert len(list(decode(a + b))) == 2


def test_one_message_fast_path_agrees_with_the_general_path() -> None:
    # Each recorded datagram alone takes the one-message path; all of them in one datagram
    # (4-byte aligned, as the kernel would pack them) take the general loop.
    ds = recorded()
    packed = b"".join(d + b"\0" * (-len(d) % 4) for d in ds)
    alone = [ev for d in ds for ev in decode(d)]
    assert decode(packed) == alone and len(alone) == 22
    assert [type(e) for e in alone] == [type(e) for e in decode(packed)]


def test_control_message_layout() -> None:
    msg = control_message(PROC_CN_MCAST_LISTEN, ack=41)
    assert len(msg) == 16 + 20 + 4
    assert int.from_bytes(msg[0:4], "little") == len(msg)
    assert int.from_bytes(msg[16:20], "little") == 1  # CN_IDX_PROC
    assert int.from_bytes(msg[28:32], "little") == 41  # cn_msg.ack
    assert int.from_bytes(msg[36:40], "little") == PROC_CN_MCAST_LISTEN


def test_ack_is_decoded() -> None:
    # The kernel's answer to our LISTEN, recorded: PROC_EVENT_NONE, err 0, ack = ours + 1.
    d = bytes.fromhex(
        "4c00000003000000880400000000000001000000010000008804000001000000280000000000000001000000"
        "ebb567a898000000000000000000000000000000000000000000000000000000"
    )
    (ev,) = decode(d)
    assert isinstance(ev, Ack) and ev.ack == 1 and ev.err == 0 and ev.seq == 1160
