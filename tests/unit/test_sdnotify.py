"""The notify protocol against a socket the test opens: paths, abstract `@` names, the
watchdog's interval and owner, and silence when no manager asked."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.sdnotify import Notifier, socket_address, watchdog_usec


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    s.bind(path)
    s.settimeout(2)
    yield s, path
    s.close()


def fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines())


def test_ready_status_watchdog_stopping_reach_a_path_socket(
    listener: tuple[socket.socket, str],
) -> None:
    s, path = listener
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"}, pid=os.getpid())
    assert n.watchdog_interval == 1.5
    assert n.ready("audit ok, proc ok")
    assert fields(s.recv(4096)) == {"READY": "1", "STATUS": "audit ok, proc ok"}
    assert n.watchdog()
    assert s.recv(4096) == b"WATCHDOG=1\n"
    assert n.stopping()
    assert fields(s.recv(4096))["STOPPING"] == "1"
    n.close()


def test_abstract_names() -> None:
    name = f"lifewatch-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(b"\0" + name.encode())
    s.settimeout(2)
    try:
        n = Notifier({"NOTIFY_SOCKET": f"@{name}"})
        assert n.status("hello")
        assert s.recv(4096) == b"STATUS=hello\n"
        n.close()
    finally:
        s.close()


def test_without_a_manager_nothing_is_sent() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval is None
    assert not n.ready("x") and not n.watchdog()
    assert socket_address("relative/path") is None


def test_watchdog_belongs_to_its_pid() -> None:
    assert watchdog_usec({"WATCHDOG_USEC": "500", "WATCHDOG_PID": "42"}, 42) == 500
    assert watchdog_usec({"WATCHDOG_USEC": "500", "WATCHDOG_PID": "41"}, 42) is None
    assert watchdog_usec({"WATCHDOG_USEC": "soon"}, 42) is None
    assert watchdog_usec({"WATCHDOG_USEC": "0"}, 42) is None


def test_a_manager_gone_away_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert not n.watchdog() and not n.watchdog()
    assert len([r for r in caplog.records if "cannot notify" in r.message]) == 1
