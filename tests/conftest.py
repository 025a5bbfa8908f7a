"""Shared fixtures: a service with no kernel sources, its API on a test server, kernel gating."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import pytest
import uvloop
from aiohttp.test_utils import TestClient, TestServer

from app.api.app import make_app
from app.config import Config
from app.procfs import parse_stat
from app.service import Service

DATA = Path(__file__).parent / "data"
IN_CI = bool(os.environ.get("CI"))

# Kernel tests run for real as root. Outside CI a non-root run skips them; in CI they are
# never skipped (a skipped kernel test there is a failure, so they run and fail loudly).
kernel = pytest.mark.skipif(
    os.geteuid() != 0 and not IN_CI, reason="needs root for the live kernel (not in CI)"
)


def make_config(**kw: object) -> Config:
    base: dict[str, object] = {"sources": (), "state_dir": None, "port": 0}
    base.update(kw)
    return Config.model_validate(base)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "30"])
    yield p
    p.kill()
    p.wait()


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    svc = Service(make_config())
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
async def client(service: Service) -> AsyncIterator[TestClient[object, object]]:
    app = make_app(service, manage=False)
    async with TestClient(TestServer(app)) as c:
        yield c


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests run on uvloop, like `lifewatch serve`: a socket it refuses fails here too."""
    return {"uvloop": uvloop.new_event_loop}


def exec_done(pid: int) -> None:
    """Popen returns when exec closes its CLOEXEC pipe, which is before the kernel has
    set up the new argv: /proc/<pid>/cmdline can still read empty for a moment."""
    for _ in range(200):
        if Path(f"/proc/{pid}/cmdline").read_bytes():
            return
        time.sleep(0.005)


def start_ticks(pid: int) -> int:
    return parse_stat(Path(f"/proc/{pid}/stat").read_bytes()).start_ticks
