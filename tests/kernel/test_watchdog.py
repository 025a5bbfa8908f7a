"""The watchdog follows the kernel reader, not the event loop: with the proc connector's
socket no longer read (an injected fault) while HTTP still answers, the WATCHDOG=1 pings stop
within one check interval (half of WATCHDOG_USEC), and come back once it reads again. And
`lifewatch serve` says READY=1 after its start and STOPPING=1 on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.api.app import make_app
from app.core.sdnotify import Notifier
from app.core.service import Service
from app.core.watchdog import Watchdog
from app.sources.proc import ProcConnectorSource
from tests.helpers import api_client, make_config

WATCHDOG_USEC = 600_000  # a check every 0.3 s


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """What systemd holds: the notify socket, read by the test."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    s.bind(path)
    s.setblocking(False)
    yield s, path
    s.close()


@pytest.fixture
async def svc() -> AsyncIterator[Service]:
    service = Service(make_config(sources=("proc",), canary_interval=0.5))
    await service.start()
    yield service
    await service.stop()


def received(s: socket.socket) -> list[tuple[float, bytes]]:
    got = []
    while True:
        try:
            got.append((time.monotonic(), s.recv(4096)))
        except BlockingIOError:
            return got


class Arrivals:
    """Datagrams stamped as they arrive (read from the loop), not when the test looks."""

    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.got: list[tuple[float, bytes]] = []
        asyncio.get_running_loop().add_reader(s.fileno(), self._read)

    def _read(self) -> None:
        self.got += received(self.s)

    def take(self) -> list[tuple[float, bytes]]:
        self._read()
        out, self.got = self.got, []
        return out

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.s.fileno())


async def test_frozen_reader_stops_the_pings_while_http_answers(
    svc: Service, manager: tuple[socket.socket, str]
) -> None:
    s, path = manager
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    dog = Watchdog(svc, notifier)
    interval = WATCHDOG_USEC / 2e6
    arrivals = Arrivals(s)
    dog.ready()
    dog.start()
    try:
        await asyncio.sleep(4 * interval)
        first = arrivals.take()
        assert first[0][1].startswith(b"READY=1\n")
        assert sum(d == b"WATCHDOG=1\n" for _, d in first) >= 2
        # The fault: the reader's socket is no longer read; processes keep being born.
        proc = svc.sources[0]
        assert isinstance(proc, ProcConnectorSource) and proc._sock is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(proc._sock.fileno())
        frozen_at = time.monotonic()
        for _ in range(5):
            subprocess.run(["true"], check=True)
        async with api_client(make_app(svc, manage=False)) as client:
            await asyncio.sleep(5 * interval)
            r = await client.get("/v1/node")  # the HTTP side still answers
            assert r.status == 200
        during = arrivals.take()
        pings = [t for t, d in during if d == b"WATCHDOG=1\n"]
        # At most the check already under way when the fault came still pings.
        assert all(t <= frozen_at + interval + 0.05 for t in pings), (pings, frozen_at)
        assert any(b"proc reader stalled" in d for _, d in during)
        # Reading again: the pings come back.
        loop.add_reader(proc._sock.fileno(), proc._on_readable)
        await asyncio.sleep(4 * interval)
        assert any(d == b"WATCHDOG=1\n" for _, d in arrivals.take())
    finally:
        await dog.stop()
        arrivals.close()
    assert any(d.startswith(b"STOPPING=1") for _, d in received(s))


async def test_serve_says_ready_then_stopping(
    manager: tuple[socket.socket, str], tmp_path: Path
) -> None:
    s, path = manager
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC=str(WATCHDOG_USEC),
               LIFEWATCH_PORT="0", LIFEWATCH_STATE_DIR=str(tmp_path))  # fmt: skip
    env.pop("WATCHDOG_PID", None)
    p = subprocess.Popen([sys.executable, "-m", "app", "serve", "--sources", "proc"], env=env)
    try:
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while not any(d.startswith(b"WATCHDOG=1") for d in got):
            assert time.monotonic() < deadline and p.poll() is None, got
            await asyncio.sleep(0.05)
            got += [d for _, d in received(s)]
        ready = next(d for d in got if d.startswith(b"READY=1"))
        assert b"STATUS=proc ok" in ready
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
        assert any(d.startswith(b"STOPPING=1") for _, d in received(s))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
