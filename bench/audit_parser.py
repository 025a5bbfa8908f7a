"""Throughput of the pure audit pipeline on recorded kernel records, one core:

    .venv/bin/python bench/audit_parser.py [--records 300000] [--repeat 5]

Replays tests/data/audit_workload.unicast.hex (real records of this kernel), repeated with
fresh serials until `--records` records, through (1) parse_datagram + Assembler, and (2) the
same plus the translation of each event into observations (LifeEvents), skipping the record
types LifeEvents never reads (UNUSED: PATH, PROCTITLE) as the daemon does. Prints records/s,
median of `--repeat` runs. Also times pyroute2's generic Marshal.parse on the same datagrams,
for the choice explained in app/netlink/audit_reader.py. Target: >= 300,000 records/s.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from app.netlink.audit_records import Record, parse_datagram
from app.sources.audit_assembler import Assembler
from app.sources.audit_lives import UNUSED, LifeEvents
from app.sources.observations import Observation

DATA = Path(__file__).resolve().parent.parent / "tests/data/audit_workload.unicast.hex"
_STAMP = re.compile(rb"audit\((\d+\.\d+):(\d+)\)")


def corpus(n_records: int) -> list[bytes]:
    """The recording, repeated with serials renumbered so that every event stays distinct."""
    base = [bytes.fromhex(x) for x in DATA.read_text().split()]
    serials = sorted({int(m.group(2)) for d in base if (m := _STAMP.search(d))})
    lo, span = serials[0], serials[-1] - serials[0] + 1
    out: list[bytes] = []
    k = 0
    while len(out) < n_records:
        for d in base:
            m = _STAMP.search(d)
            if m is None:
                continue
            new = b"audit(%s:%d)" % (m.group(1), int(m.group(2)) - lo + k * span + 1)
            d2 = d[: m.start()] + new + d[m.end() :]
            length = int.from_bytes(d[:4], "little") + len(d2) - len(d)  # keep the framing
            out.append(length.to_bytes(4, "little") + d2[4:])
            if len(out) >= n_records:
                break
        k += 1
    return out


class Count:
    def __init__(self) -> None:
        self.events = 0
        self.gaps = 0

    def event_complete(self, records: list[Record]) -> None:
        self.events += 1

    def events_lost(self, first_serial: int, count: int) -> None:
        self.gaps += 1


def run_assemble(data: list[bytes]) -> float:
    sink = Count()
    asm = Assembler(sink, clock=time.monotonic)
    push = asm.push
    t0 = time.perf_counter()
    for d in data:
        for r in parse_datagram(d, UNUSED):
            push(r)
    asm.flush(force=True)
    dt = time.perf_counter() - t0
    assert sink.gaps == 0
    return len(data) / dt


def compiled_parse(skip: frozenset[int]) -> Callable[[bytes], list[Record]]:
    """What the daemon's reader does with one datagram when app/netlink/_batch.c is built:
    the usual record parsed in C, anything else by parse_datagram."""
    from app.netlink import _batch

    def parse(d: bytes) -> list[Record]:
        out: list[Record] = []
        for item in _batch.parse_audit(d, skip):  # no table: never a Confirmed
            if isinstance(item, bytes):
                out.extend(parse_datagram(item, skip))
            elif isinstance(item, Record):
                out.append(item)
        return out

    return parse


def run_full(
    data: list[bytes], proc: Path, parse: Callable[[bytes], list[Record]] | None = None
) -> float:
    parse = parse or (lambda d: parse_datagram(d, UNUSED))
    out: list[Observation] = []
    lives = LifeEvents(out.append, proc, clock=time.monotonic)

    class Sink(Count):
        def event_complete(self, records: list[Record]) -> None:
            lives.event(records)

    asm = Assembler(Sink(), clock=time.monotonic)
    push = asm.push
    t0 = time.perf_counter()
    for d in data:
        for r in parse(d):
            push(r)
    asm.flush(force=True)
    lives.tick(force=True)
    dt = time.perf_counter() - t0
    assert out
    return len(data) / dt


def run_pyroute2(data: list[bytes]) -> float:
    from pyroute2.netlink.nlsocket import Marshal

    marshal = Marshal()
    # multicast framing (right nlmsg_len): pyroute2 cannot parse the unicast quirk at all
    fixed = [len(d).to_bytes(4, "little") + d[4:] for d in data]
    t0 = time.perf_counter()
    for d in fixed:
        for _ in marshal.parse(d):
            pass
    return len(fixed) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    data = corpus(args.records)
    with tempfile.TemporaryDirectory() as proc:
        a = [run_assemble(data) for _ in range(args.repeat)]
        f = [run_full(data, Path(proc)) for _ in range(args.repeat)]
        c = [run_full(data, Path(proc), compiled_parse(UNUSED)) for _ in range(args.repeat)]
    p = [run_pyroute2(data[:50_000]) for _ in range(max(1, args.repeat // 2))]
    print(f"records: {len(data)}; median and best of {args.repeat} runs (2 shared cores: noisy)")
    for name, xs in (
        ("parse + assemble", a),
        ("parse + assemble + lives", f),
        ("same, parsed by _batch.c", c),
        ("pyroute2 Marshal.parse (only)", p),
    ):
        print(f"{name:<32}{statistics.median(xs):>10,.0f} {max(xs):>10,.0f} records/s")


if __name__ == "__main__":
    main()
