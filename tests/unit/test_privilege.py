"""The audit source without its capabilities, and with audit locked (`auditctl -e 2`), on a
fake control plane: the lock is irreversible until reboot, so it is never set on a real
machine. The fake answers as kernel/audit.c does (EPERM for rule and setting changes while
`enabled` is 2, EPERM for everything without CAP_AUDIT_CONTROL)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

import pytest

from app.core.config import Config
from app.netlink.audit_proto import AuditRule, AuditStatus
from app.sources.audit import AuditSource
from app.sources.base import DEGRADED, FAILED
from app.sources.observations import Health, Observation
from app.sources.privilege import MissingCapability, parse_effective


class FakeControl:
    def __init__(self, enabled: int = 0, capable: bool = True, pid: int = 0) -> None:
        self.status = AuditStatus(enabled=enabled, pid=pid, backlog_limit=64)
        self.capable = capable
        self.rules: list[AuditRule] = []
        self.calls: list[str] = []

    def _check(self, what: str, change: bool = False) -> None:
        self.calls.append(what)
        if not self.capable or (change and self.status.enabled == 2):
            raise OSError(errno.EPERM, f"audit netlink {what}: EPERM")

    async def open(self) -> None:
        return None

    def close(self) -> None:
        return None

    async def get_status(self) -> AuditStatus:
        self._check("get")
        return self.status

    async def set_status(self, status: AuditStatus) -> None:
        self._check("set", change=True)

    async def list_rules(self) -> list[AuditRule]:
        self._check("list")
        return list(self.rules)

    async def add_rule(self, rule: AuditRule) -> None:
        self._check("add", change=True)
        self.rules.append(rule)

    async def delete_rule(self, rule: AuditRule) -> None:
        self._check("del", change=True)
        self.rules.remove(rule)


class FakeSocket:
    """A record socket with nothing to read; multicast needs CAP_AUDIT_READ unless `readable`."""

    def __init__(self, multicast: bool, rcvbuf: int, can_read: bool = True) -> None:
        if multicast and not can_read:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        self.multicast = multicast
        self.rcvbuf = rcvbuf
        self.a, self.b = socket.socketpair()
        self.a.setblocking(False)
        self.sock = self.a  # what the batch reader reads

    def fileno(self) -> int:
        return self.a.fileno()

    def register(self, pid: int) -> None:
        return None

    def recv(self) -> bytes:
        return self.a.recv(65536)

    def close(self) -> None:
        self.a.close()
        self.b.close()


class Collect:
    def __init__(self) -> None:
        self.got: list[Observation] = []

    def submit(self, obs: Observation) -> None:
        self.got.append(obs)


@pytest.fixture
def sockets() -> Iterator[list[FakeSocket]]:
    made: list[FakeSocket] = []
    yield made
    for s in made:
        s.close()


def source(control: FakeControl, made: list[FakeSocket], can_read: bool = True) -> AuditSource:
    def opener(multicast: bool, rcvbuf: int) -> FakeSocket:
        made.append(FakeSocket(multicast, rcvbuf, can_read))
        return made[-1]

    return AuditSource(Config().audit_settings(), control=control, open_socket=opener)  # type: ignore[arg-type]


async def test_locked_audit_falls_back_to_multicast_and_says_so(
    sockets: list[FakeSocket],
) -> None:
    control = FakeControl(enabled=2)
    src = source(control, sockets)
    sink = Collect()
    await src.start(sink)
    try:
        h = src.health()
        assert h.state == DEGRADED
        assert h.info["mode"] == "multicast" and "locked" in h.reason and "-e 2" in h.reason
        assert sockets[-1].multicast
        assert not {"add", "set"} & set(control.calls)  # nothing tried that the lock refuses
        assert control.rules == []
        assert any(isinstance(o, Health) and o.state == DEGRADED for o in sink.got)
        # The quiet-period recovery never turns a locked source `ok`.
        src._last_loss = -1e9
        src._check_status(control.status, since=0.0)
        assert src.health().state == DEGRADED
    finally:
        await src.stop()


async def test_without_audit_control_the_source_fails_naming_it(
    sockets: list[FakeSocket],
) -> None:
    src = source(FakeControl(capable=False), sockets)
    with pytest.raises(MissingCapability) as e:
        await src.start(Collect())
    assert e.value.capability == "CAP_AUDIT_CONTROL"
    assert src.health().state == FAILED and "CAP_AUDIT_CONTROL" in src.health().reason


async def test_without_audit_read_multicast_fails_naming_it(sockets: list[FakeSocket]) -> None:
    settings = Config(audit_mode="multicast").audit_settings()

    def opener(multicast: bool, rcvbuf: int) -> FakeSocket:
        sockets.append(FakeSocket(multicast, rcvbuf, can_read=False))
        return sockets[-1]

    src = AuditSource(settings, control=FakeControl(), open_socket=opener)  # type: ignore[arg-type]
    with pytest.raises(MissingCapability, match="CAP_AUDIT_READ"):
        await src.start(Collect())
    assert "CAP_AUDIT_READ" in src.health().reason


def test_effective_capabilities_are_read_from_status() -> None:
    text = "Name:\tx\nCapEff:\t0000002040081000\n"
    assert parse_effective(text) == {
        "CAP_AUDIT_CONTROL", "CAP_AUDIT_READ", "CAP_NET_ADMIN", "CAP_SYS_PTRACE",
    }  # fmt: skip
    assert parse_effective("CapEff:\t0000000000000000\n") == frozenset()
