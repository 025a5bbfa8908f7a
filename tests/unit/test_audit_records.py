"""Pure tests of the audit parser, assembler and event translation, on real kernel output
recorded by tests/data/record_audit.py (no root, no kernel needed)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from app.argv import ARGV_MAX, cap_argv, is_cut
from app.netlink.audit_proto import (
    AUDIT_CONFIG_CHANGE,
    AUDIT_EOE,
    AUDIT_PATH,
    AUDIT_PROCTITLE,
    AUDIT_SYSCALL,
)
from app.netlink.audit_records import (
    Record,
    execve_argv,
    fields,
    parse_datagram,
    parse_record,
    parse_syscall,
    proctitle_argv,
    raw_fields,
    split_datagram,
    untrusted,
)
from app.netlink.socket import NLMSGHDR
from app.sources.audit_assembler import Assembler
from app.sources.audit_lives import UNUSED, LifeEvents
from app.sources.observations import Exec, Exit, Fork, Observation

DATA = Path(__file__).parent.parent / "data"


def load(name: str) -> list[bytes]:
    return [bytes.fromhex(line) for line in (DATA / name).read_text().split()]


@pytest.fixture(scope="module")
def unicast() -> list[bytes]:
    return load("audit_workload.unicast.hex")


@pytest.fixture(scope="module")
def multicast() -> list[bytes]:
    return load("audit_workload.multicast.hex")


@pytest.fixture(scope="module")
def truth() -> dict[str, Any]:
    out: dict[str, Any] = json.loads((DATA / "audit_workload.truth.json").read_text())
    return out


class Collect:
    def __init__(self) -> None:
        self.events: list[list[Record]] = []
        self.gaps: list[tuple[int, int]] = []

    def event_complete(self, records: list[Record]) -> None:
        self.events.append(records)

    def events_lost(self, first_serial: int, count: int) -> None:
        self.gaps.append((first_serial, count))


# -- netlink framing -------------------------------------------------------------------------
def test_unicast_nlmsg_len_excludes_the_header(unicast: list[bytes]) -> None:
    records = [d for d in unicast if struct.unpack_from("=H", d, 4)[0] >= 1300]
    assert records
    for d in records:
        (length,) = struct.unpack_from("=I", d)
        assert length == len(d) - 16  # design.md fact 2
        (msg,) = split_datagram(d)
        assert msg.payload == d[16:]


def test_multicast_nlmsg_len_is_right(multicast: list[bytes]) -> None:
    for d in multicast:
        (length,) = struct.unpack_from("=I", d)
        assert length == len(d)
        assert len(split_datagram(d)) == 1


def test_both_modes_deliver_the_same_records(unicast: list[bytes], multicast: list[bytes]) -> None:
    uni = {(r.serial, r.type, r.body) for d in unicast for r in parse_datagram(d)}
    multi = {(r.serial, r.type, r.body) for d in multicast for r in parse_datagram(d)}
    common = {s for s, _, _ in uni} & {s for s, _, _ in multi}
    assert len(common) > 50
    # (the multicast file was cut at 300 datagrams: its last event may be partial)
    assert {x for x in multi if x[0] in common} <= uni


def test_several_messages_in_one_datagram() -> None:
    def msg(t: int, text: bytes) -> bytes:
        body = b"audit(1.5:" + text
        size = 16 + len(body)
        return NLMSGHDR.pack(size, t, 0, 0, 0) + body + b"\0" * (-size % 4)

    data = msg(1300, b"7): a=1") + msg(1320, b"7): ")
    assert [(r.type, r.serial) for r in parse_datagram(data)] == [(1300, 7), (1320, 7)]


# -- record text -----------------------------------------------------------------------------
def test_record_header() -> None:
    rec = parse_record(1300, b"audit(1795654632.816:27): arch=c000003e syscall=59\0")
    assert rec == Record(1300, 1795654632.816, 27, b"arch=c000003e syscall=59")
    assert parse_record(1300, b"garbage") is None
    assert parse_record(1300, b"audit(1.0): x") is None


def test_untrusted_values() -> None:
    assert untrusted('"echo"') == "echo"
    assert untrusted("68656C6C6F20776F726C64") == "hello world"  # a space forces hex
    assert untrusted("782279") == 'x"y'
    assert untrusted('""') == ""
    assert untrusted("(null)") is None
    assert untrusted(None) is None
    assert untrusted("zz") == "zz"
    assert untrusted(b"782279") == 'x"y'


def test_fields_keep_quoted_spaces_of_user_messages() -> None:
    f = fields(b"pid=1 msg='op=login acct=\"x y\" res=success' key=(null)")
    assert f["msg"] == "'op=login acct=\"x y\" res=success'"
    assert f["key"] == "(null)"


def test_execve_argv_from_recorded_records(unicast: list[bytes], truth: dict[str, Any]) -> None:
    by_serial: dict[int, list[bytes]] = {}
    for d in unicast:
        for r in parse_datagram(d):
            if r.type == 1309:
                by_serial.setdefault(r.serial, []).append(r.body)
    argvs = {execve_argv(b, 1 << 20) for b in by_serial.values()}  # above the 9000 B argument
    for life in truth["lives"]:
        if life["kind"] in ("fork+exec", "vfork+exec", "pipeline", "long-arg"):
            assert tuple(life["argv"]) in argvs, life["kind"]
    # the 9000-byte argument was split into chunks over several EXECVE records
    long = next(x for x in truth["lives"] if x["kind"] == "long-arg")
    chunked = [b for b in by_serial.values() if len(b) > 1]
    assert any(execve_argv(b, 1 << 20) == tuple(long["argv"]) for b in chunked)
    # at the default cap (4096 B) the 9000-byte argument is cut, and says so
    cut = next(a for a in map(execve_argv, chunked) if a is not None and a[0] == "/bin/true")
    assert is_cut(cut) and cut == cap_argv([b"/bin/true", b"x" * 9000], ARGV_MAX)
    assert sum(len(a) + 1 for a in cut) == ARGV_MAX


def test_execve_argv_missing_argument_is_none() -> None:
    assert execve_argv([b'argc=2 a0="ls"']) is None
    assert execve_argv([b"argc=x"]) is None


def test_proctitle() -> None:
    assert proctitle_argv("6563686F0068656C6C6F20776F726C6400782279") == (
        "echo", "hello world", 'x"y',
    )  # fmt: skip
    assert proctitle_argv('"cat"') == ("cat",)
    assert proctitle_argv(None) is None


# -- assembly --------------------------------------------------------------------------------
def all_records(datagrams: list[bytes]) -> list[Record]:
    return [r for d in datagrams for r in parse_datagram(d)]


def test_recorded_stream_assembles_without_gaps(unicast: list[bytes]) -> None:
    sink = Collect()
    asm = Assembler(sink, clock=lambda: 0.0)
    records = all_records(unicast)
    for r in records:
        asm.push(r)
    asm.flush(force=True)
    assert sink.gaps == []
    eoe = sum(1 for r in records if r.type == AUDIT_EOE)
    syscall_events = [e for e in sink.events if any(r.type == AUDIT_SYSCALL for r in e)]
    assert len(syscall_events) == eoe
    for ev in sink.events:
        assert len({r.serial for r in ev}) == 1  # never merged
    # A CONFIG_CHANGE made inside an audited syscall belongs to that syscall's event (with
    # SYSCALL and EOE); one made outside is standalone and has no EOE (design.md fact 6).
    changes = [e for e in sink.events if e[0].type == AUDIT_CONFIG_CHANGE]
    assert any(len(e) == 1 for e in changes)
    assert any(any(r.type == AUDIT_SYSCALL for r in e) for e in changes)
    # only the events without EOE waited for the timeout (here: flush(force=True))
    assert asm.counters["timed_out"] == len(sink.events) - len(syscall_events)


def test_skipped_types_are_not_parsed_and_events_still_close(unicast: list[bytes]) -> None:
    whole = all_records(unicast)
    kept = [r for d in unicast for r in parse_datagram(d, UNUSED)]
    assert {AUDIT_PATH, AUDIT_PROCTITLE} <= {r.type for r in whole}
    assert kept == [r for r in whole if r.type not in UNUSED]
    # the general path (several messages in one datagram) skips them too
    data = b"".join(
        NLMSGHDR.pack(16 + len(b), t, 0, 0, 0) + b + b"\0" * (-len(b) % 4)
        for t, b in (
            (1300, b"audit(1.5:7): a=1"),
            (1327, b"audit(1.5:7): x"),
            (1320, b"audit(1.5:7): "),
        )
    )
    assert [r.type for r in parse_datagram(data, UNUSED)] == [1300, 1320]
    # the same events close, at the same records (EOE), with the same serials and no gap
    closed = []
    for records in (whole, kept):
        sink = Collect()
        asm = Assembler(sink, clock=lambda: 0.0)
        for r in records:
            asm.push(r)
        assert sink.gaps == []
        closed.append([[r for r in e if r.type not in UNUSED] for e in sink.events])
    assert closed[0] == closed[1] and len(closed[0]) > 100


def rec(serial: int, type: int = AUDIT_SYSCALL, stamp: float = 1.0) -> Record:
    return Record(type, stamp, serial, b"")


def test_incomplete_event_is_flushed_after_the_timeout() -> None:
    now = [0.0]
    sink = Collect()
    asm = Assembler(sink, clock=lambda: now[0], timeout=0.5)
    asm.push(rec(1))
    asm.flush()
    assert sink.events == []
    now[0] = 0.6
    asm.flush()
    assert len(sink.events) == 1 and asm.counters["timed_out"] == 1


def test_same_serial_other_stamp_is_another_event() -> None:
    sink = Collect()
    asm = Assembler(sink, clock=lambda: 0.0)
    asm.push(rec(5, stamp=1.0))
    asm.push(rec(5, stamp=2.0))
    asm.push(rec(5, AUDIT_EOE, stamp=2.0))
    assert [[r.stamp for r in e] for e in sink.events] == [[1.0], [2.0]]


def test_reordered_serials_are_not_a_gap() -> None:
    now = [0.0]
    sink = Collect()
    asm = Assembler(sink, clock=lambda: now[0], reorder=1.0)
    for s in (10, 12, 11, 13):
        asm.push(rec(s, AUDIT_EOE))
    now[0] = 5.0
    asm.flush()
    assert sink.gaps == [] and asm.holes == 0


def test_missing_serial_is_a_gap_after_the_reorder_window() -> None:
    now = [0.0]
    sink = Collect()
    asm = Assembler(sink, clock=lambda: now[0], reorder=1.0)
    for s in (10, 11, 14, 15):
        asm.push(rec(s, AUDIT_EOE))
    now[0] = 0.5
    asm.flush()
    assert sink.gaps == []
    now[0] = 1.5
    asm.flush()
    assert sink.gaps == [(12, 2)]
    asm.push(rec(12, AUDIT_EOE))  # arriving after all: late, not a second gap
    assert asm.counters["late"] == 1 and sink.gaps == [(12, 2)]


def test_gap_across_u32_wraparound() -> None:
    now = [0.0]
    sink = Collect()
    asm = Assembler(sink, clock=lambda: now[0], reorder=1.0)
    for s in (0xFFFFFFFE, 0xFFFFFFFF, 0, 2):
        asm.push(rec(s, AUDIT_EOE))
    now[0] = 2.0
    asm.flush()
    assert sink.gaps == [(1, 1)]


def test_too_many_serials_ahead_declare_a_gap_at_once() -> None:
    sink = Collect()
    asm = Assembler(sink, clock=lambda: 0.0, window=3)
    for s in (1, 3, 4, 5, 6):
        asm.push(rec(s, AUDIT_EOE))
    assert sink.gaps == [(2, 1)]


# -- events -> lives -------------------------------------------------------------------------
def replay(datagrams: list[bytes], proc: Path, known: list[int]) -> list[Observation]:
    out: list[Observation] = []
    lives = LifeEvents(out.append, proc, clock=lambda: 0.0, known=known)

    class Sink(Collect):
        def event_complete(self, records: list[Record]) -> None:
            lives.event(records)

    asm = Assembler(Sink(), clock=lambda: 0.0)
    for d in datagrams:  # as the audit source reads them: the types it never uses unparsed
        for r in parse_datagram(d, UNUSED):
            asm.push(r)
    asm.flush(force=True)
    lives.tick(force=True)
    return out


@pytest.mark.parametrize("proc_knows_threads", [False, True])
def test_recorded_workload_gives_its_lives(
    unicast: list[bytes], truth: dict[str, Any], tmp_path: Path, proc_knows_threads: bool
) -> None:
    helper = truth["helper"]
    if proc_knows_threads:  # /proc as it was while the thread ran
        for tid in truth["threads"]:
            (tmp_path / str(tid)).mkdir()
            (tmp_path / str(tid) / "status").write_text(f"Tgid:\t{helper}\nPid:\t{tid}\n")
    obs = replay(unicast, tmp_path, known=[])
    forks = {o.pid: o for o in obs if isinstance(o, Fork)}
    for life in truth["lives"]:
        fork = forks[life["pid"]]
        assert fork.ppid == helper, life["kind"]
        assert fork.audit_stamp is not None
        exits = [o for o in obs if isinstance(o, Exit) and o.pid == life["pid"]]
        assert [e.code for e in exits] == [life["code"]], life["kind"]
        execs = [o for o in obs if isinstance(o, Exec) and o.pid == life["pid"]]
        if life["argv"] is not None:
            whole = cap_argv([a.encode() for a in life["argv"]], ARGV_MAX)
            assert execs[-1].argv == whole  # the 9000-byte argument is cut at the cap
            assert execs[-1].exe == life["exe"]
        # the Fork comes before the life's exec and exit, whatever order the records had
        first = obs.index(fork)
        assert all(obs.index(o) > first for o in execs + exits)
    for tid in truth["threads"]:
        assert tid not in forks
    # the thread's `exit` carried the helper's pid; it must not be taken for the helper's death
    helper_exits = [o for o in obs if isinstance(o, Exit) and o.pid == helper]
    assert [e.code for e in helper_exits] == [0]


def test_pipeline_children_have_the_shell_as_parent(
    unicast: list[bytes], truth: dict[str, Any], tmp_path: Path
) -> None:
    obs = replay(unicast, tmp_path, known=[])
    sh = next(x for x in truth["lives"] if x["kind"] == "pipeline")["pid"]
    children = {o.pid for o in obs if isinstance(o, Fork) and o.ppid == sh}
    exes = {o.exe for o in obs if isinstance(o, Exec) and o.pid in children}
    assert {"/usr/bin/echo", "/usr/bin/cat"} <= exes


def test_syscall_fast_path_agrees_with_the_field_split(unicast: list[bytes]) -> None:
    bodies = [r.body for r in all_records(unicast) if r.type == AUDIT_SYSCALL]
    assert len(bodies) > 100
    for body in bodies:
        fast = parse_syscall(body)
        f = raw_fields(body)
        assert fast is not None
        assert fast == (
            f[b"arch"], f[b"syscall"], f.get(b"success"), f.get(b"exit"), f[b"a0"],
            f[b"ppid"], f[b"pid"], f[b"uid"], f[b"comm"], f[b"exe"],
        )  # fmt: skip
    # fields in another order still parse (the slow path)
    odd = b'syscall=56 arch=c000003e a0=11 exit=5 success=yes ppid=1 pid=2 uid=0 comm="x" exe="/x"'
    assert parse_syscall(odd) == (
        b"c000003e", b"56", b"yes", b"5", b"11", b"1", b"2", b"0", b'"x"', b'"/x"',
    )  # fmt: skip
    assert parse_syscall(b"nothing=here") is None
