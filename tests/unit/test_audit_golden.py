"""One recorded record of each audit record type, parsed and compared with its golden
expectation (tests/data/audit_records.golden.json).

The golden file was written from the parser's output once and then checked by hand against
the kernel's formats and the workload's ground truth (audit_workload.truth.json): the
SYSCALL is execve (59 on x86_64, arch c000003e) by the `fork+exec` child (pid 19576, parent
the helper 19474, exe /usr/bin/echo); its EXECVE holds the child's argv (hex-encoded where an
argument has a space or a quote); PROCTITLE holds the same argv minus the trailing empty
argument, as the kernel trims trailing NULs (kernel/auditsc.c audit_proctitle_rtrim); the
CONFIG_CHANGE is lifewatch's own rule being added to the exit list (list=4). When the
recording is redone, review a new golden file the same way rather than regenerating it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.netlink.audit_proto import (
    AUDIT_BPRM_FCAPS,
    AUDIT_CONFIG_CHANGE,
    AUDIT_CWD,
    AUDIT_EOE,
    AUDIT_EXECVE,
    AUDIT_PATH,
    AUDIT_PROCTITLE,
    AUDIT_SYSCALL,
)
from app.netlink.audit_records import (
    Record,
    execve_argv,
    fields,
    parse_datagram,
    parse_syscall,
    proctitle_argv,
    untrusted,
)

DATA = Path(__file__).parent.parent / "data"
NAMES = {
    AUDIT_SYSCALL: "SYSCALL", AUDIT_PATH: "PATH", AUDIT_CONFIG_CHANGE: "CONFIG_CHANGE",
    AUDIT_CWD: "CWD", AUDIT_EXECVE: "EXECVE", AUDIT_EOE: "EOE",
    AUDIT_BPRM_FCAPS: "BPRM_FCAPS", AUDIT_PROCTITLE: "PROCTITLE",
}  # fmt: skip
LINES = (DATA / "audit_workload.unicast.hex").read_text().split()
GOLDEN: dict[str, dict[str, Any]] = json.loads((DATA / "audit_records.golden.json").read_text())


def recorded(line: int) -> Record:
    (rec,) = parse_datagram(bytes.fromhex(LINES[line]))
    return rec


def test_every_recorded_type_has_a_golden_record() -> None:
    types = {r.type for line in LINES for r in parse_datagram(bytes.fromhex(line))}
    assert {NAMES.get(t, str(t)) for t in types} == set(GOLDEN)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_record_matches_its_golden(name: str) -> None:
    want = GOLDEN[name]
    rec = recorded(want["line"])
    assert NAMES[rec.type] == name and rec.type == want["type"]
    assert (rec.stamp, rec.serial) == (want["stamp"], want["serial"])
    got = fields(rec.body)
    assert got == want["fields"]
    if rec.type == AUDIT_SYSCALL:
        syscall = parse_syscall(rec.body)
        assert syscall is not None
        decoded = {k: None if v is None else v.decode() for k, v in syscall._asdict().items()}
        assert decoded == want["syscall"]
    elif rec.type == AUDIT_EXECVE:
        assert execve_argv([rec.body]) == tuple(want["argv"])
    elif rec.type == AUDIT_PROCTITLE:
        assert proctitle_argv(got["proctitle"]) == tuple(want["argv"])
    elif rec.type == AUDIT_CWD:
        assert untrusted(got["cwd"]) == want["cwd"]
    elif rec.type == AUDIT_PATH:
        assert untrusted(got["name"]) == want["name"]


def test_golden_execve_event_is_the_fork_exec_life_of_the_truth() -> None:
    """The review of the golden file, kept: its execve event is the workload's `fork+exec`."""
    truth = json.loads((DATA / "audit_workload.truth.json").read_text())
    life = next(x for x in truth["lives"] if x["kind"] == "fork+exec")
    syscall = GOLDEN["SYSCALL"]["syscall"]
    assert (syscall["arch"], syscall["syscall"]) == ("c000003e", "59")  # x86_64 execve
    assert (int(syscall["pid"]), int(syscall["ppid"])) == (life["pid"], truth["helper"])
    assert untrusted(syscall["exe"]) == life["exe"]
    assert GOLDEN["EXECVE"]["argv"] == life["argv"]
    assert GOLDEN["PROCTITLE"]["argv"] == life["argv"][:-1]  # the trailing "" is trimmed
    event = {GOLDEN[n]["serial"] for n in ("SYSCALL", "EXECVE", "CWD", "PATH", "EOE")}
    assert event == {GOLDEN["PROCTITLE"]["serial"]}  # all one event
