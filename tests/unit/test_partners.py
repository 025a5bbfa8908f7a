"""The partner resolution on a fake /proc and a scripted socket list: pairing by swapped
addresses and Unix peer inodes, the reasons when no peer is known, the scan's bounds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.core.fanout import Interest
from app.core.partners import NO_PEER_HERE, Bounds, LifeGone, Resolver
from app.netlink.sockdiag import TcpSocket, UnixSocket, address_text, normal_ip, parse_address

STAT = "{pid} (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {ticks} 0 0"


def fake_proc(root: Path, procs: dict[int, tuple[int, list[int]]]) -> Path:
    """pid -> (start ticks, socket inodes held)."""
    for pid, (ticks, inodes) in procs.items():
        d = root / str(pid)
        (d / "fd").mkdir(parents=True)
        (d / "stat").write_text(STAT.format(pid=pid, ticks=ticks) + " 0" * 30 + "\n")
        for fd, ino in enumerate(inodes, start=3):
            os.symlink(f"socket:[{ino}]", d / "fd" / str(fd))
        os.symlink("/dev/null", d / "fd" / "0")
    return root


A, B = ("127.0.0.1", 40000), ("127.0.0.1", 5000)
TCP = [
    TcpSocket("tcp", "established", A, B, 0, 101),
    TcpSocket("tcp", "established", B, A, 0, 201),
    TcpSocket("tcp", "established", ("10.0.0.1", 40001), ("192.0.2.7", 443), 0, 102),
]
UNIX = [UnixSocket(103, 203, None, "stream", "established"),
        UnixSocket(203, 103, "/run/x.sock", "stream", "established")]  # fmt: skip


def resolver(proc: Path, bounds: Bounds | None = None) -> Resolver:
    return Resolver(proc, bounds or Bounds(), dump=lambda: (TCP, UNIX))


def test_pairs_by_swapped_addresses_and_unix_peers(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {10: (500, [101, 102, 103]), 20: (600, [201, 203]),
                                21: (700, [203])})  # fmt: skip
    res = resolver(proc).connections(10, 500)
    by_local = {c.local: c for c in res.connections}
    assert [(h.pid, h.start_ticks) for h in by_local["127.0.0.1:40000"].peers] == [(20, 600)]
    far = by_local["10.0.0.1:40001"]
    assert far.peers == () and far.reason == NO_PEER_HERE and far.peer_inode is None
    unix = by_local["unix:103"]
    assert unix.remote == "/run/x.sock"
    assert sorted(h.pid for h in unix.peers) == [20, 21]  # a shared socket: both holders
    assert res.complete and res.fds == 9 and res.processes == 3


def test_a_life_that_is_not_the_pid_now_is_gone(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {10: (500, [101])})
    with pytest.raises(LifeGone):
        resolver(proc).connections(10, 499)


def test_the_scan_stops_at_its_bound_and_says_so(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {10: (500, [101]), 20: (600, [201]), 30: (700, [1, 2, 3])})
    res = resolver(proc, Bounds(max_fds=2)).connections(10, 500)
    assert not res.complete
    t = [0.0]

    def clock() -> float:
        t[0] += 1.0
        return t[0]

    slow = Resolver(proc, Bounds(budget=0.5), dump=lambda: (TCP, UNIX), clock=clock)
    assert not slow.connections(10, 500).complete


def test_one_connection_by_its_addresses(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {10: (500, [101]), 20: (600, [201])})
    res = resolver(proc).connection(A, B)
    assert [h.pid for h in res.holders] == [10]
    assert [h.pid for h in res.connections[0].peers] == [20]
    with pytest.raises(LookupError):
        resolver(proc).connection(A, ("127.0.0.1", 1))


def test_addresses() -> None:
    assert normal_ip("::ffff:10.1.2.3") == "10.1.2.3"
    assert parse_address("[::ffff:10.1.2.3]:80") == ("10.1.2.3", 80)
    assert parse_address("[::1]:80") == ("::1", 80)
    assert address_text(("::1", 80)) == "[::1]:80"
    for bad in ("1.2.3.4", "1.2.3.4:0", "1.2.3.4:70000", "x:1", ":1", "1.2.3.4:+1"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_an_interest_in_a_set_of_lives() -> None:
    from app.core.journal import Event
    from app.core.life import LifeView

    def ev(pid: int, ticks: int) -> Event:
        lv = LifeView(pid, ticks, 0, 1, None, "x", None, (), 0, None, None, None, None, 0,
                      None, False)  # fmt: skip
        return Event(1, "died", 0.0, lv, None, 0)

    accept = Interest(types=frozenset({"died"}), lives=frozenset({(5, 50), (6, 60)})).matcher()
    assert accept(ev(5, 50)) and accept(ev(6, 60))
    assert not accept(ev(5, 51)) and not accept(ev(7, 50))
    assert not Interest(lives=frozenset()).matcher()(ev(5, 50))
