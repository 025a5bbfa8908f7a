"""Life identity: the stat parser on hostile comm values, dates, and the text form."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import pytest

from app.core.identity import (
    LifeIdError,
    TickClock,
    load_node_identity,
    parse_life_id,
    parse_start,
)
from app.procfs import Stat, StatError, is_running, parse_cmdline, parse_stat, read_btime
from tests.helpers import DATA

CLOCK = TickClock(btime=1795654039, hz=100)


@pytest.mark.parametrize("case", sorted((DATA / "stat").glob("*.stat")), ids=lambda p: p.stem)
def test_stat_parser_on_recorded_kernel_lines(case: Path) -> None:
    """Lines recorded from /proc with comm values full of spaces, parens and newlines."""
    expected = json.loads(case.with_suffix(".json").read_text())
    st = parse_stat(case.read_bytes())
    assert st.pid == expected["pid"]
    assert st.comm == expected["comm"]
    assert st.ppid == expected["ppid"]
    assert st.state == expected["state"]
    assert st.start_ticks == expected["start_ticks"]
    assert (st.num_threads, st.exit_code) == (1, 0)  # all were single-threaded sleepers


def stat_line(state: str, threads: int, exit_code: int | None) -> bytes:
    """A stat line with fields 3.. as given (20 = num_threads, 52 = exit_code, if any)."""
    fields = [state, "77"] + [str(i) for i in range(5, 20)] + [str(threads), "0", "4242"]
    fields += ["0"] * 29 + ([] if exit_code is None else [str(exit_code)])
    return f"123 (x y) {' '.join(fields)}\n".encode()


def test_stat_exit_code_and_threads_of_a_zombie() -> None:
    st = parse_stat(stat_line("Z", 1, 0x300))
    assert (st.state, st.num_threads, st.start_ticks, st.exit_code) == ("Z", 1, 4242, 0x300)
    assert not is_running(st)
    # A zombie leader whose threads still run is still running; a live one always is.
    assert is_running(parse_stat(stat_line("Z", 3, 0)))
    assert is_running(parse_stat(stat_line("S", 1, 0)))
    assert not is_running(parse_stat(stat_line("X", 1, 9)))


def test_stat_without_field_52_has_no_exit_code() -> None:
    st = parse_stat(stat_line("S", 2, None))
    assert st == Stat(123, "x y", "S", 77, 2, 4242, None)


@pytest.mark.parametrize(
    "comm",
    ["a) S 1 2 3", ") (", "((((", "x\n) R 9", ""],
    ids=["fake-fields", "parens", "open", "nl", "empty"],
)
def test_stat_parser_on_constructed_hostile_comm(comm: str) -> None:
    rest = " ".join(["S", "77"] + [str(i) for i in range(5, 22)] + ["4242"] + ["0"] * 30)
    line = f"123 ({comm}) {rest}\n".encode()
    st = parse_stat(line)
    assert (st.pid, st.comm, st.state, st.ppid, st.start_ticks) == (123, comm, "S", 77, 4242)


@pytest.mark.parametrize("bad", [b"", b"123 comm S 1", b"x (a) S 1 2", b"1 (a) S 1 2 3"])
def test_stat_parser_refuses_garbage(bad: bytes) -> None:
    with pytest.raises(StatError):
        parse_stat(bad)


def test_parse_stat_of_self_matches_kernel() -> None:
    st = parse_stat(Path("/proc/self/stat").read_bytes())
    assert st.pid == os.getpid()
    assert st.ppid == os.getppid()


def test_cmdline() -> None:
    assert parse_cmdline(b"sleep\x0030\x00") == ("sleep", "30")
    assert parse_cmdline(b"") == ()
    assert parse_cmdline(b"a b\x00\x00c\x00") == ("a b", "", "c")


def test_date_is_exact_and_stable() -> None:
    assert CLOCK.date_of(13) == "2026-11-26T00:47:19.13Z"
    assert CLOCK.date_of(100) == "2026-11-26T00:47:20.00Z"
    assert {CLOCK.date_of(56599) for _ in range(100)} == {"2026-11-26T00:56:44.99Z"}


@pytest.mark.parametrize("ticks", [0, 1, 13, 99, 100, 56599, 10**9 + 7])
def test_text_form_round_trip(ticks: int) -> None:
    text = f"vm/4242/{CLOCK.date_of(ticks)}"
    lid = parse_life_id(text)
    assert (lid.host, lid.pid, lid.ticks(CLOCK)) == ("vm", 4242, ticks)
    assert parse_life_id(f"vm/4242/{ticks}").ticks(CLOCK) == ticks


def test_start_in_other_forms() -> None:
    # Another offset, fewer or more digits: the same instant is the same tick.
    assert parse_start("2026-11-26T01:47:19.13+01:00") == parse_start("2026-11-26T00:47:19.13Z")
    assert CLOCK.ticks_of(Fraction(parse_start("2026-11-26T00:47:19.130000Z"))) == 13
    assert CLOCK.ticks_of(Fraction(parse_start("2026-11-26T00:47:20Z"))) == 100


@pytest.mark.parametrize(
    "text",
    ["", "vm", "vm/1", "vm/1/2/3", "vm/0/5", "vm/-1/5", "vm/x/5", "vm/99999999/5",
     "vm/1/yesterday", "vm/1/2026-13-01T00:00:00Z", "bad host/1/5", "vm/1/1e5", "/1/5"],
)  # fmt: skip
def test_malformed_life_ids(text: str) -> None:
    with pytest.raises(LifeIdError):
        parse_life_id(text)


def test_date_between_ticks_is_refused() -> None:
    with pytest.raises(LifeIdError, match="tick"):
        CLOCK.ticks_of(Fraction(parse_start("2026-11-26T00:47:19.135Z")))
    with pytest.raises(LifeIdError, match="before"):
        CLOCK.ticks_of(Fraction(parse_start("2020-01-01T00:00:00Z")))


def test_btime_pinned_per_boot(tmp_path: Path) -> None:
    first = load_node_identity(tmp_path)
    assert first.clock.btime == read_btime()
    assert first.btime_pinned_from == "kernel"
    # Pretend the wall clock was stepped since: the pinned btime wins on this boot...
    (tmp_path / "btime").write_text(f"{first.boot_id} {first.clock.btime - 7}\n")
    again = load_node_identity(tmp_path)
    assert again.clock.btime == first.clock.btime - 7
    # ...and a pin from another boot is replaced.
    (tmp_path / "btime").write_text(f"another-boot {first.clock.btime - 7}\n")
    assert load_node_identity(tmp_path).clock.btime == read_btime()
