"""The kernel readers' batched reads (app/netlink/batch.py, app/netlink/_batch.c): the
compiled path gives the same records as the pure parser on recorded kernel output and on
hostile bytes, reads real datagram sockets with recvmmsg() as recv() would, and the pure
path does the same where the module is not built."""

from __future__ import annotations

import errno
import os
import random
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.netlink.audit_proto import AUDIT_EOE, AUDIT_PATH, AUDIT_PROCTITLE, AUDIT_SYSCALL
from app.netlink.audit_records import Confirmed, Record, Syscall, _regex_syscall, parse_datagram
from app.netlink.batch import BUDGET, DRAINED, AuditBatchReader, BatchReader, ProcBatchReader
from app.netlink.cn_proc import ExecEvent, ExitEvent, ForkEvent, decode
from app.netlink.native import native_enabled

DATA = Path(__file__).parent.parent / "data"
RECORDED = [
    bytes.fromhex(line)
    for name in ("audit_workload.unicast.hex", "audit_workload.multicast.hex")
    for line in (DATA / name).read_text().split()
]
SKIPS = [frozenset(), frozenset({AUDIT_PATH, AUDIT_PROCTITLE}), frozenset({AUDIT_SYSCALL})]

try:
    from app.netlink import _batch
except ImportError:  # `make test` installs gcc and the headers: this is a failure there
    pytest.fail(
        "app/netlink/_batch.c is not built: install gcc and Python's headers (Debian: "
        "python3-dev), then `.venv/bin/pip install -e .`",
        pytrace=False,
    )


def resolved(items: list[Record | Confirmed | bytes], skip: frozenset[int]) -> list[Record]:
    """What the audit source makes of a batch: bytes go through the pure parser."""
    out: list[Record] = []
    for item in items:
        if isinstance(item, bytes):
            out.extend(parse_datagram(item, skip))
        else:
            assert isinstance(item, Record)  # a Confirmed only with a table (test_confirm.py)
            out.append(item)
    return out


def same(data: bytes, skip: frozenset[int]) -> None:
    got = resolved(_batch.parse_audit(data, skip), skip)
    want = parse_datagram(data, skip)
    assert got == want, data
    # Same values of the same types: a float stamp, int serial, bytes body, a Record.
    for g, w in zip(got, want, strict=True):
        assert type(g) is Record
        assert [type(v) for v in g] == [type(v) for v in w]


def datagram(text: bytes, mtype: int = AUDIT_SYSCALL, unicast: bool = True) -> bytes:
    length = len(text) if unicast else len(text) + 16
    return struct.pack("=IHHII", length, mtype, 0, 0, 0) + text


@pytest.mark.parametrize("skip", SKIPS)
def test_recorded_kernel_output_parses_as_the_pure_parser_does(skip: frozenset[int]) -> None:
    assert len(RECORDED) > 1000
    for data in RECORDED:
        same(data, skip)


def test_the_usual_datagram_is_parsed_in_c_not_handed_back() -> None:
    firsts = [_batch.parse_audit(d, frozenset())[0] for d in RECORDED]
    assert sum(type(f) is Record for f in firsts) > 0.95 * len(RECORDED)


EDGES = [
    b"audit(1.2:3): body",
    b"audit(1.2:3):body",  # no space after the colon: still a record
    b"audit(1.2:3):  two spaces",
    b"audit(1.2:3): ",
    b"audit(1.2:3):",
    b"audit(1.2:3)",  # no colon
    b"audit(1.2:3): body\n\0\0",
    b"audit(1.2:3): \0\n\0",
    b"audit(1.2:3): body\0middle\0",
    b"audit(12:3): no fraction",
    b"audit(.5:3): no whole part",
    b"audit(1.:3): empty fraction",
    b"audit(1.2:): no serial",
    b"audit(1.2:-3): negative serial",
    b"audit(1.2:3x): junk serial",
    b"audit(1.2.3:4): two dots",
    b"audit(" + b"9" * 47 + b".5:3): long stamp",
    b"audit(" + b"9" * 60 + b".5:3): longer than C parses: handed back",
    b"audit(1.5:" + b"9" * 47 + b"): long serial",
    b"audit(1.5:" + b"9" * 80 + b"): serial past C: handed back",
    b"audit(0001.0500:0007): leading zeros",
    b"AUDIT(1.2:3): case",
    b"audit(1.2:3): " + bytes(range(256)),
    b"x" * 10,
    b"",
]


@pytest.mark.parametrize("text", EDGES)
@pytest.mark.parametrize("unicast", [True, False])
def test_edge_shapes_parse_as_the_pure_parser_does(text: bytes, unicast: bool) -> None:
    for skip in SKIPS:
        same(datagram(text, AUDIT_SYSCALL, unicast), skip)
        same(datagram(text, AUDIT_EOE, unicast), skip)


def mutations(rng: random.Random) -> Iterator[bytes]:
    for _ in range(3000):
        data = bytearray(rng.choice(RECORDED))
        what = rng.randrange(5)
        if what == 0 and data:
            del data[rng.randrange(len(data)) :]  # truncated
        elif what == 1:
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif what == 2:
            struct.pack_into("=I", data, 0, rng.choice([0, 15, 16, len(data), 2**32 - 1]))
        elif what == 3:
            data += rng.randbytes(rng.randrange(64))  # a second, bogus message
        else:
            data = bytearray(rng.randbytes(rng.randrange(64)))
        yield bytes(data)


def test_hostile_bytes_parse_as_the_pure_parser_does() -> None:
    rng = random.Random(1729)
    for data in mutations(rng):
        for skip in SKIPS:
            same(data, skip)


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(TypeError):
        _batch.parse_audit(b"", frozenset({"x"}))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        _batch.parse_audit(b"", frozenset(range(65)))
    # Only plain NamedTuple classes of the right length may be registered.
    import time

    for wrong in (dict, tuple, time.struct_time, Syscall):
        with pytest.raises(TypeError):
            _batch.register(wrong, Syscall)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _batch.register(Record, Record)  # type: ignore[arg-type]


def test_records_made_in_c_hash_and_compare_as_the_pure_ones() -> None:
    for data in RECORDED[:200]:
        for c, p in zip(resolved(_batch.parse_audit(data, frozenset()), frozenset()),
                        parse_datagram(data), strict=True):  # fmt: skip
            assert c == p and hash(c) == hash(p) == hash(tuple(p))
    for body in SYSCALL_BODIES[:50]:
        c2 = _batch.parse_syscall(body)
        assert c2 is not None and hash(c2) == hash(_regex_syscall(body))


# -- reading real sockets ------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    yield a, b
    a.close()
    b.close()


@pytest.mark.parametrize("native", [True, False])
def test_audit_reader_reads_what_was_sent_in_order(
    pair: tuple[socket.socket, socket.socket], native: bool
) -> None:
    rx, tx = pair
    sent = RECORDED[:200]
    for d in sent:
        tx.send(d)
    reader = AuditBatchReader(rx, 1 << 14, native=native)
    skip = frozenset({AUDIT_PROCTITLE})
    items, n, status = reader.records(150, skip)
    assert (n, status) == (150, BUDGET)
    more, m, status = reader.records(150, skip)
    assert (m, status) == (50, DRAINED)
    want = [r for d in sent for r in parse_datagram(d, skip)]
    assert resolved(items + more, skip) == want
    assert reader.records(10, skip)[1:] == (0, DRAINED)
    # With a tap nothing is parsed: every datagram as read.
    tx.send(sent[0])
    assert reader.records(10, skip, parse=False)[0] == [sent[0]]


@pytest.mark.parametrize("native", [True, False])
def test_raw_reads_cut_a_datagram_at_the_slot_as_recv_does(
    pair: tuple[socket.socket, socket.socket], native: bool
) -> None:
    rx, tx = pair
    tx.send(b"a" * 300)
    tx.send(b"b" * 10)
    reader = BatchReader(rx, 256, native=native)
    assert reader.native is native
    assert reader.read(100) == ([b"a" * 256, b"b" * 10], 2, DRAINED)


@pytest.mark.parametrize("native", [True, False])
def test_a_failed_read_is_a_status_not_an_exception(native: bool) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader = BatchReader(a, 256, native=native)
    b.close()
    os.close(a.detach())  # the descriptor is gone under the reader
    got, n, status = reader.read(10)
    assert (got, n, status) == ([], 0, errno.EBADF)


def test_native_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert native_enabled()
    monkeypatch.setenv("LIFEWATCH_NATIVE", "0")
    assert not native_enabled()


# -- the SYSCALL record's fields -------------------------------------------------------------

SYSCALL_BODIES = [r.body for d in RECORDED for r in parse_datagram(d) if r.type == AUDIT_SYSCALL]
TAIL = b'ppid=1 pid=2 auid=3 uid=4 gid=0 comm="sh" exe="/bin/sh" key="k"'
SYSCALL_EDGES = [
    b"arch=c000003e syscall=56 success=yes exit=19475 a0=1200011 a1=0 " + TAIL,
    b"arch=c000003e syscall=231 a0=0 a1=3c " + TAIL,  # exit_group: no success/exit
    b"arch=c000003e syscall=56 success=no exit=-11 a0=1 x " + TAIL,
    b"arch=c000003e syscall=56 success=yes exit=- a0=1 x " + TAIL,
    b"arch=c000003e syscall=56 success=YES exit=1 a0=1 x " + TAIL,
    b"arch=c000003e syscall=56 a0=1 " + TAIL,  # a0 followed by ppid at once: needs `.*? `
    b"arch=c000003e syscall=56 a0=1  " + TAIL,
    b"arch=c000003e syscall=56 a0=1 x ppid=1 pid=x " + TAIL,  # the first ppid fails: the next
    b"arch=c000003e syscall=56 a0=1 x ppid=9 pid=8 auid=7 uid=6 comm=a x=1 " + TAIL,
    b"arch=c000003e syscall=56 a0=1 x ppid=9 pid=8 auid=7 uid=6 y comm=a\texe=b " + TAIL,
    b"arch=c000003e syscall=56 a0=1 x\n " + TAIL,  # `.` does not cross a newline
    b"arch=c000003e syscall=56 a0=1 x ppid=1 pid=2 auid=3 uid=4 z\n comm=a exe=b",
    b"arch=c000003e syscall=56 a0=1 x ppid=1 pid=2 auid=3 uid=4 z comm=a exe=",
    b"arch=c000003e syscall=56 a0=1 x ppid=1 pid=2 auid=3 uid=4 z comm= exe=b comm=c exe=d",
    b"arch=c000003e syscall=56 a0=1 x ppid=1 pid=2 auid=3 uid=4 z comm=a exe=b\x0bc",
    b"arch=C000003E syscall=56 a0=1 x " + TAIL,
    b"arch=c000003e  syscall=56 a0=1 x " + TAIL,
    b"arch= syscall=56 a0=1 x " + TAIL,
    b"arch=c000003e syscall=56 a0=1 x " + TAIL.replace(b" uid=4 ", b" uid=4"),
    b"",
]


def same_syscall(body: bytes) -> None:
    got = _batch.parse_syscall(body)
    assert got == _regex_syscall(body), body
    assert got is None or type(got) is Syscall


def test_recorded_syscall_records_match_the_regex() -> None:
    assert len(SYSCALL_BODIES) > 100
    for body in SYSCALL_BODIES:
        same_syscall(body)
        assert _batch.parse_syscall(body) is not None


@pytest.mark.parametrize("body", SYSCALL_EDGES)
def test_syscall_edge_shapes_match_the_regex(body: bytes) -> None:
    same_syscall(body)


def test_hostile_syscall_records_match_the_regex() -> None:
    rng = random.Random(4711)
    words = [b" ", b"\n", b"\t", b"ppid=1", b"pid=2", b"auid=3", b"uid=4", b"comm=", b"exe=",
             b"a0=f", b"x", b"-", b"success=yes", b"exit=-1", b"\"q\"", b"9"]  # fmt: skip
    for _ in range(4000):
        body = bytearray(rng.choice(SYSCALL_BODIES))
        for _ in range(rng.randrange(1, 6)):
            at = rng.randrange(len(body) + 1)
            if rng.random() < 0.5:
                body[at:at] = rng.choice(words)
            else:
                del body[at : at + rng.randrange(1, 12)]
        same_syscall(bytes(body))
    for _ in range(1000):
        same_syscall(b" ".join(rng.choice(words) for _ in range(rng.randrange(40))))


def test_parse_syscall_gives_the_same_fields_on_either_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.netlink import audit_records

    bodies = SYSCALL_BODIES + SYSCALL_EDGES
    native = [audit_records.parse_syscall(b) for b in bodies]
    monkeypatch.setattr(audit_records, "_native_syscall", None)
    assert [audit_records.parse_syscall(b) for b in bodies] == native
    assert sum(f is not None for f in native) > len(SYSCALL_BODIES)  # the fallback found more


# -- the connector's datagrams ---------------------------------------------------------------

PROC_RECORDED = [bytes.fromhex(line) for line in (DATA / "cn_proc.hex").read_text().split()]


def same_events(data: bytes) -> None:
    """What the compiled reader makes of a connector datagram decodes as cn_proc.decode does:
    the event itself, or the bytes left for decode()."""
    got = _batch.parse_proc(data)
    assert len(got) == 1
    events = decode(got[0]) if isinstance(got[0], bytes) else got
    assert events == decode(data), data.hex()
    assert [type(e) for e in events] == [type(e) for e in decode(data)]


def test_recorded_connector_output_decodes_as_the_pure_decoder_does() -> None:
    for data in PROC_RECORDED:
        same_events(data)
    # Every FORK, EXEC and EXIT recorded is decoded in C, not handed back.
    made = [_batch.parse_proc(d)[0] for d in PROC_RECORDED]
    assert {type(e) for e in made} == {ForkEvent, ExecEvent, ExitEvent}
    for c, d in zip(made, PROC_RECORDED, strict=True):
        assert hash(c) == hash(decode(d)[0]) == hash(tuple(c))


def proc_mutations(rng: random.Random) -> Iterator[bytes]:
    """Recorded datagrams cut, padded, re-framed, re-typed and scrambled: every field the
    compiled path checks (lengths, idx/val, what) and the shapes it must hand back."""
    whats = [0, 1, 2, 4, 0x80000000, 0x40000000, 0xFFFFFFFF, 2, 1]
    for _ in range(5000):
        data = bytearray(rng.choice(PROC_RECORDED))
        what = rng.randrange(7)
        if what == 0:
            del data[rng.randrange(len(data)) :]  # truncated
        elif what == 1:
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif what == 2:
            length = rng.choice([0, 16, 51, 52, 60, len(data) - 4, len(data) - 3, len(data) + 1])
            struct.pack_into("=I", data, 0, max(0, length))
        elif what == 3:
            data += rng.randbytes(rng.randrange(1, 80))  # padding, or a second message
        elif what == 4:
            struct.pack_into("=I", data, 36, rng.choice(whats))
        elif what == 5:
            struct.pack_into("=II", data, 16, rng.randrange(3), rng.randrange(3))  # idx, val
        else:
            data = bytearray(rng.randbytes(rng.randrange(100)))
        yield bytes(data)


def test_hostile_connector_bytes_decode_as_the_pure_decoder_does() -> None:
    for data in proc_mutations(random.Random(4711)):
        same_events(data)
    # Two messages in one datagram: both decoded (by decode(), from the bytes handed back).
    two = PROC_RECORDED[0] + PROC_RECORDED[2]
    assert len(decode(two)) == 2
    same_events(two)


@pytest.mark.parametrize("native", [True, False])
def test_connector_reader_reads_what_was_sent_in_order(
    pair: tuple[socket.socket, socket.socket], native: bool
) -> None:
    rx, tx = pair
    sent = PROC_RECORDED * 5
    for d in sent:
        tx.send(d)
    reader = ProcBatchReader(rx, 4096, native=native)
    items, n, status = reader.events(200, parse=True)
    assert (n, status) == (len(sent), DRAINED)
    got = [e for i in items for e in (decode(i) if isinstance(i, bytes) else [i])]
    assert got == [e for d in sent for e in decode(d)]
    if native:
        assert not any(isinstance(i, bytes) for i in items)
    tx.send(sent[0])
    assert reader.events(10, parse=False)[0] == [sent[0]]  # a tap's reads: the bytes
